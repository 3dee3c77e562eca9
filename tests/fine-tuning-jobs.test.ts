/**
 * Durable jobs: cancellation (before start, at an exact step, through the API), bad files failing validation with
 * the line named, and a trainer process killed with SIGKILL — resuming from its last checkpoint, or failing with a
 * clear error when the checkpoint is damaged — without ever exposing a half-written adapter. Also `npm start` alone
 * running the trainer as a child process.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import OpenAI, { toFile } from 'openai';
import type { FineTuningJob as StoredJob } from '../src/training/jobs/job-store.ts';
import type { AdapterPublishedMessage } from '../src/training/service/gateway-link.ts';
import { JobStore } from '../src/training/jobs/job-store.ts';
import { TrainingDir } from '../src/training/jobs/training-dir.ts';
import { BASE_MODEL, KEYS, startTestGateway, type TestGateway } from './support/gateway.ts';
import { startGatewayProcess } from '../loadtest/gateway-process.ts';
import { asJsonl, jobFinished as finished, madeUpWordStories, startTestTrainer, trainerTestEnv, waitForJob } from './support/fine-tuning.ts';
import { REPO_ROOT, STORIES_HF_DIR } from './support/models.ts';

let gateway: TestGateway;
let client: OpenAI;
let trainingFile: string;
before(async () => {
  gateway = await startTestGateway();
  client = gateway.client(KEYS.acme);
  trainingFile = (await client.files.create({ file: await toFile(Buffer.from(asJsonl(madeUpWordStories(24))), 't.jsonl'), purpose: 'fine-tune' })).id;
});
after(() => gateway.stop());

/** A job far longer than any test waits for: every test ends it by cancelling or failing it. */
const longJob = (extra: Record<string, unknown> = {}) =>
  client.fineTuning.jobs.create({
    model: BASE_MODEL,
    training_file: trainingFile,
    seed: 1,
    method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 50, batch_size: 1 } } },
    lora_r: 4,
    ...extra,
  } as never);

const stepsOf = async (id: string) => {
  const events = await client.fineTuning.jobs.listEvents(id, { limit: 1000 });
  return events.data.filter((e) => e.type === 'metrics').map((e) => (e.data as { step: number }).step);
};

test('cancel: a queued job is cancelled before it starts; a running one within one optimizer step', async () => {
  const jobs = new JobStore(new TrainingDir(gateway.trainingDir));
  const queued = await longJob();
  await client.fineTuning.jobs.cancel(queued.id);
  const CANCEL_AT = 3;
  // The hook cancels the first job that runs, once: the one cancelled through the API later must run on.
  let hookCancels = true;
  const trainer = await startTestTrainer(gateway, {}, (job, progress) => {
    // Exactly at step 3, the way the API's cancel records it.
    if (hookCancels && progress.step === CANCEL_AT) {
      hookCancels = false;
      writeFileSync(jobs.cancelPath(job as StoredJob), 'now');
    }
  });
  try {
    const first = await waitForJob(client, queued.id, finished, trainer);
    assert.equal(first.status, 'cancelled');
    assert.deepEqual(await stepsOf(queued.id), [], 'it never ran');

    const running = await longJob();
    const stopped = await waitForJob(client, running.id, finished, trainer);
    assert.equal(stopped.status, 'cancelled');
    assert.equal(stopped.fine_tuned_model, null);
    const steps = await stepsOf(running.id);
    assert.equal(Math.max(...steps), CANCEL_AT, 'the cancel noticed after a step stops the job at that step');
    await gateway.services.store.refresh();
    assert.equal(gateway.services.store.list('acme').length, 0, 'nothing published, not even a checkpoint');

    // Through the API, while it runs.
    const viaApi = await longJob();
    await waitForJob(client, viaApi.id, async (job) => job.status === 'running' && (await stepsOf(viaApi.id)).length > 0, trainer);
    // While it runs, the sidecar's series show the running job's progress.
    await trainer.poll();
    const exposition = await (await fetch(`${trainer.url}/metrics`)).text();
    assert.match(exposition, /^trainer_jobs\{status="running"\} 1$/m);
    for (const series of ['trainer_step', 'trainer_total_steps', 'trainer_tokens_per_second', 'trainer_loss']) {
      const value = Number(new RegExp(`^${series} (\\S+)$`, 'm').exec(exposition)?.[1]);
      assert.ok(value > 0, `${series} ${value}`);
    }
    await client.fineTuning.jobs.cancel(viaApi.id);
    assert.equal((await waitForJob(client, viaApi.id, finished, trainer)).status, 'cancelled');
    const cancelError = await client.fineTuning.jobs.cancel(viaApi.id).catch((error: InstanceType<typeof OpenAI.APIError>) => error);
    assert.equal((cancelError as InstanceType<typeof OpenAI.APIError>).status, 400);
  } finally {
    await trainer.close();
  }
});

test('a file that passes upload but not tokenisation fails the job, naming the line', async () => {
  const rows = Array.from({ length: 10 }, (_, i) => ({ prompt: i === 6 ? 'Once upon a time there was a little girl named Lily' : 'Hi', completion: ' there' }));
  const file = await client.files.create({ file: await toFile(Buffer.from(rows.map((r) => JSON.stringify(r)).join('\n')), 'pc.jsonl'), purpose: 'fine-tune' });
  const job = await client.fineTuning.jobs.create({ model: BASE_MODEL, training_file: file.id, max_length: 6 } as never);
  const trainer = await startTestTrainer(gateway);
  try {
    const failed = await waitForJob(client, job.id, finished, trainer);
    assert.equal(failed.status, 'failed');
    assert.equal(failed.error?.code, 'invalid_training_file');
    assert.equal(failed.error?.param, 'training_file');
    assert.match(failed.error!.message, /line 7: its prompt alone is \d+ tokens, which leaves nothing to learn within max_length 6/);
  } finally {
    await trainer.close();
  }
});

interface TrainerProcess {
  child: ChildProcess;
  exited: Promise<number | null>;
  /** Throws, with what the process wrote to stderr, once it has exited without being told to. */
  assertRunning(): void;
}

/** `npm run trainer` as its own process; with `ipc`, linked as `npm start` links its child sidecar. */
function trainerProcess(env: Record<string, string>, ipc = false): TrainerProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'src/trainer-main.ts')], {
    cwd: REPO_ROOT,
    env: {
      ...process.env,
      ...trainerTestEnv(gateway),
      TRAINER_ID: 'killed-trainer',
      LOG_LEVEL: 'warn',
      ...env,
    },
    stdio: ['ignore', 'ignore', 'pipe', ...(ipc ? (['ipc'] as const) : [])],
  });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return {
    child,
    exited: new Promise((resolve) => child.once('exit', (code) => resolve(code))),
    assertRunning() {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`the trainer exited (${child.exitCode ?? child.signalCode}) on its own:\n${stderr}`);
      }
    },
  };
}

/** Runs the job in a trainer process checkpointing every 2 steps, and kills it with SIGKILL after the first checkpoint. */
async function killAfterCheckpoint(id: string): Promise<void> {
  const trainer = trainerProcess({ TRAINER_CHECKPOINT_STEPS: '2' });
  await waitForJob(client, id, async () => {
    trainer.assertRunning();
    return (await client.fineTuning.jobs.checkpoints.list(id)).data.length > 0;
  });
  trainer.child.kill('SIGKILL');
  await trainer.exited;
}

test('a trainer killed with SIGKILL resumes the job from its last checkpoint; a damaged checkpoint fails it clearly', async () => {
  const jobs = new JobStore(new TrainingDir(gateway.trainingDir));

  const damaged = await longJob({ suffix: 'damaged' });
  await killAfterCheckpoint(damaged.id);
  assert.equal((await client.fineTuning.jobs.retrieve(damaged.id)).status, 'running', 'the job outlives the process');
  const stored = (await jobs.get('acme', damaged.id))!;
  await writeFile(jobs.jobPath(stored, 'state.safetensors'), 'not a checkpoint');
  let restarted = trainerProcess({ TRAINER_CHECKPOINT_STEPS: '2' });
  const failed = await waitForJob(client, damaged.id, (job) => {
    restarted.assertRunning();
    return finished(job);
  });
  assert.equal(failed.status, 'failed');
  assert.equal(failed.error?.code, 'checkpoint_unreadable');
  assert.match(failed.error!.message, /last checkpoint is damaged .* so it cannot resume/);
  restarted.child.kill('SIGTERM');
  assert.equal(await restarted.exited, 0);

  const resumed = await longJob({ suffix: 'resumed' });
  await killAfterCheckpoint(resumed.id);
  const listed = (await client.fineTuning.jobs.checkpoints.list(resumed.id)).data[0].step_number;
  restarted = trainerProcess({ TRAINER_CHECKPOINT_STEPS: '1000' });
  try {
    const resumeMessage = /^The trainer restarted: resuming from the checkpoint at step (\d+)$/;
    const afterResume = async () => {
      const events = (await client.fineTuning.jobs.listEvents(resumed.id, { limit: 1000 })).data.reverse();
      const at = events.findIndex((e) => resumeMessage.test(e.message));
      if (at < 0) return undefined;
      const steps = events.slice(at + 1).filter((e) => e.type === 'metrics').map((e) => (e.data as { step: number }).step);
      return { from: Number(resumeMessage.exec(events[at].message)![1]), steps };
    };
    await waitForJob(client, resumed.id, async () => {
      restarted.assertRunning();
      return ((await afterResume())?.steps.length ?? 0) > 0;
    });
    const { from, steps } = (await afterResume())!;
    // The resume state is written before the checkpoint is listed, so a kill between the two resumes from the
    // next checkpoint, one not yet listed: never from an older one.
    assert.ok(from === listed || from === listed + 2, `resumed from step ${from}; the newest listed checkpoint is at step ${listed}`);
    assert.equal(steps[0], from + 1, 'training continues after the checkpoint');
    await client.fineTuning.jobs.cancel(resumed.id);
    assert.equal((await waitForJob(client, resumed.id, finished)).status, 'cancelled');
  } finally {
    restarted.child.kill('SIGTERM');
    await restarted.exited;
  }

  // Every published checkpoint is complete and servable; nothing half-written was ever renamed into the store.
  await gateway.services.store.refresh();
  assert.deepEqual(gateway.services.store.listInvalid(), []);
  const published = gateway.services.store.list('acme').map((record) => record.adapter);
  assert.ok(published.includes('resumed-checkpoints'));
  const leftovers = await readdir(join(gateway.adaptersDir, 'acme', 'resumed-checkpoints'));
  assert.ok(leftovers.every((version) => /^[A-Za-z0-9]{8}-step-\d+$/.test(version)), leftovers.join());
});

test('a trainer killed between publishing the adapter and recording success publishes it once; the restart finishes the job', async () => {
  const job = await client.fineTuning.jobs.create({
    model: BASE_MODEL,
    training_file: trainingFile,
    suffix: 'once',
    seed: 1,
    method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 1, batch_size: 8 } } },
    lora_r: 4,
  } as never);
  // The sidecar announces the published version to its gateway and waits for the answer before saying
  // `succeeded`: killed while it waits, the version is in the store and the job is not finished.
  const first = trainerProcess({}, true);
  const announced = await new Promise<AdapterPublishedMessage>((resolve, reject) => {
    first.child.on('message', (message: AdapterPublishedMessage) => message.type === 'adapter-published' && resolve(message));
    void first.exited.then(() => reject(new Error('the trainer exited before announcing the adapter')));
  });
  first.child.kill('SIGKILL');
  await first.exited;
  assert.deepEqual([announced.tenant, announced.adapter], ['acme', 'once']);
  const versionsOnDisk = () => readdir(join(gateway.adaptersDir, 'acme', 'once'));
  assert.deepEqual(await versionsOnDisk(), [announced.version]);
  assert.equal((await client.fineTuning.jobs.retrieve(job.id)).status, 'running');
  const stepsBefore = await stepsOf(job.id);

  const restarted = trainerProcess({});
  try {
    const done = await waitForJob(client, job.id, finished);
    assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    assert.equal(done.fine_tuned_model, `${BASE_MODEL}+acme/once@${announced.version}`);
    assert.deepEqual(await versionsOnDisk(), [announced.version], 'no second version');
    assert.deepEqual(await stepsOf(job.id), stepsBefore, 'not trained again');
    const events = (await client.fineTuning.jobs.listEvents(job.id, { limit: 100 })).data.map((e) => e.message);
    assert.ok(events.includes(`The trainer restarted after publishing the adapter as version ${announced.version}`), events.join('\n'));
    const chat = await client.chat.completions.create({ model: done.fine_tuned_model!, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2 });
    assert.equal(chat.model, done.fine_tuned_model);
    await gateway.services.store.refresh();
    assert.deepEqual(gateway.services.store.listInvalid('acme'), []);
  } finally {
    restarted.child.kill('SIGTERM');
    await restarted.exited;
  }
});

test('npm start alone serves the fine-tuning API: the gateway runs the trainer as a child process', async () => {
  const trainingDir = join(gateway.trainingDir, '..', 'standalone-training');
  const adaptersDir = join(gateway.trainingDir, '..', 'standalone-adapters');
  let log = '';
  const main = await startGatewayProcess({
    env: { MODEL_PATH: STORIES_HF_DIR, TRAINER_PORT: '0', TRAINING_DIR: trainingDir, ADAPTERS_DIR: adaptersDir, ENGINE_THREADS: '1', TRAINER_THREADS: '1', TRAINER_POLL_MS: '20' },
    onLine: (line) => (log += `${line}\n`),
  });
  try {
    const local = new OpenAI({ baseURL: `${main.url}/v1`, apiKey: 'sk-local-dev', maxRetries: 0 });
    const file = await local.files.create({ file: await toFile(Buffer.from(asJsonl(madeUpWordStories(10))), 't.jsonl'), purpose: 'fine-tune' });
    const job = await local.fineTuning.jobs.create({ model: 'stories260K-hf', training_file: file.id, hyperparameters: { n_epochs: 1, batch_size: 5 } });
    const done = await waitForJob(local, job.id, finished);
    assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    const chat = await local.chat.completions.create({ model: done.fine_tuned_model!, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2 });
    assert.equal(chat.model, done.fine_tuned_model);
    // The child sidecar had the gateway load the adapter before the job said `succeeded`: the chat found it in memory.
    const exposition = await (await fetch(`${main.url}/metrics`)).text();
    assert.match(exposition, /^gateway_adapter_cold_starts_total\{[^}]*tier="host"[^}]*\} 1$/m);
    assert.doesNotMatch(exposition, /^gateway_adapter_cold_starts_total\{[^}]*tier="disk"/m);
  } finally {
    assert.equal(await main.stop(), 0);
  }
  assert.match(log, /"msg":"trainer sidecar started as a child process"/);
});

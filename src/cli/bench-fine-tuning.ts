/**
 * Fine-tuning beside serving, measured in one run through the real HTTP API (the gateway in this process, the
 * trainer sidecar as its own process, as `npm start` runs it):
 *   - serving slowdown: base-model decode throughput of concurrent streams while a fine-tuning job runs, against
 *     the same load with the trainer idle, in interleaved trial pairs (ratio per pair, median and spread);
 *   - publish latency: from the first API response reporting a job `succeeded` to the first successful chat
 *     completion on its `fine_tuned_model` (goal < 1 s), beside the same chat on the base model and on a copy of
 *     the same adapter files published without the sidecar (what the first chat costs when nothing preloads it).
 *   npm run bench:fine-tuning [-- --json] [--model PATH] [--trials N] [--streams N] [--max-tokens N]
 *                             [--engine-threads N] [--trainer-threads N]
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import OpenAI, { toFile } from 'openai';
import { ADAPTER_CONFIG_FILE } from '../adapters/peft-config.ts';
import { startGateway } from '../gateway/server.ts';
import { FINISHED_STATUSES } from '../training/jobs/job-store.ts';
import { superviseTrainer } from '../training/service/trainer-child.ts';
import { median } from './bench-stats.ts';

const log = (message: string) => process.stderr.write(`${message}\n`);

const { values } = parseArgs({
  options: {
    json: { type: 'boolean', default: false },
    model: { type: 'string', default: resolve('../shared/models/stories260K-hf') },
    trials: { type: 'string', default: '3' },
    streams: { type: 'string', default: '4' },
    'max-tokens': { type: 'string', default: '64' },
    'engine-threads': { type: 'string', default: '2' },
    'trainer-threads': { type: 'string', default: '1' },
  },
});
const trials = Number(values.trials);
const streams = Number(values.streams);
const maxTokens = Number(values['max-tokens']);

const dir = await mkdtemp(join(tmpdir(), 'bench-fine-tuning-'));
const shared = { MODEL_PATH: values.model, ADAPTERS_DIR: join(dir, 'adapters'), TRAINING_DIR: join(dir, 'training'), LOG_LEVEL: 'warn' };
await writeFile(join(dir, 'tenants.json'), JSON.stringify({ tenants: { bench: { keys: [{ key: 'sk-bench' }], limits: { tokens_per_minute: 1e9, max_concurrent_requests: 64 } } } }));
const gateway = await startGateway({ ...shared, PORT: '0', ENGINE_THREADS: values['engine-threads'], GATEWAY_CONFIG: join(dir, 'tenants.json') });
// The sidecar as `npm start` runs it: a child process that has the gateway load each new adapter before `succeeded`.
const trainer = superviseTrainer(
  { ...process.env, ...shared, TRAINER_PORT: '0', TRAINER_THREADS: values['trainer-threads'], TRAINER_POLL_MS: '20', TRAINER_CHECKPOINT_STEPS: '1000000' },
  gateway.services.logger,
  ({ tenant, adapter, version }) => gateway.preloadAdapter(tenant, adapter, version),
);
const client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: 'sk-bench', maxRetries: 0 });
const base = gateway.services.models.baseName;

try {
  const stories = Array.from({ length: 32 }, (_, i) => JSON.stringify({ text: `Once upon a time, there was a cat number ${i}. It liked to run and play.` }));
  const file = await client.files.create({ file: await toFile(Buffer.from(stories.join('\n')), 'bench.jsonl'), purpose: 'fine-tune' });
  const createJob = (epochs: number) =>
    client.fineTuning.jobs.create({ model: base, training_file: file.id, hyperparameters: { n_epochs: epochs, batch_size: 4 } });
  const waitFor = async (id: string, done: (job: OpenAI.FineTuning.FineTuningJob) => boolean | Promise<boolean>, pollMs: number) => {
    for (;;) {
      const job = await client.fineTuning.jobs.retrieve(id);
      if (await done(job)) return job;
      await new Promise((r) => setTimeout(r, pollMs));
    }
  };

  /** Aggregate completion tokens/s of `streams` concurrent greedy base-model completions. */
  const serve = async () => {
    const started = performance.now();
    const results = await Promise.all(
      Array.from({ length: streams }, (_, i) =>
        client.completions.create({ model: base, prompt: `Once upon a time ${i}`, max_tokens: maxTokens, temperature: 0 }),
      ),
    );
    const tokens = results.reduce((sum, r) => sum + (r.usage?.completion_tokens ?? 0), 0);
    return tokens / ((performance.now() - started) / 1000);
  };

  await serve(); // warm-up
  const ratios: number[] = [];
  const idleRates: number[] = [];
  const busyRates: number[] = [];
  for (let trial = 0; trial < trials; trial++) {
    const idle = await serve();
    const job = await createJob(50);
    await waitFor(job.id, async (j) => j.status === 'running' && (await client.fineTuning.jobs.listEvents(j.id)).data.some((e) => e.type === 'metrics'), 20);
    const busy = await serve();
    await client.fineTuning.jobs.cancel(job.id);
    await waitFor(job.id, (j) => FINISHED_STATUSES.has(j.status), 20);
    idleRates.push(idle);
    busyRates.push(busy);
    ratios.push(busy / idle);
    log(`trial ${trial + 1}: serving ${idle.toFixed(1)} tokens/s idle, ${busy.toFixed(1)} while training (×${(busy / idle).toFixed(2)})`);
  }

  const latencies: number[] = [];
  const baseChats: number[] = [];
  const coldChats: number[] = [];
  for (let trial = 0; trial < trials; trial++) {
    const job = await createJob(1);
    const done = await waitFor(job.id, (j) => FINISHED_STATUSES.has(j.status), 5);
    if (done.status !== 'succeeded') throw new Error(`job ${job.id} ended ${done.status}: ${JSON.stringify(done.error)}`);
    const chat = async (model: string) => {
      const started = performance.now();
      await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 1 });
      return (performance.now() - started) / 1000;
    };
    latencies.push(await chat(done.fine_tuned_model!));
    // The same request on the base model right after: what a chat costs on this machine at this moment.
    baseChats.push(await chat(base));
    // And on the same files published by hand, which nothing loads before its first request.
    const published = gateway.services.store.resolve('bench', done.fine_tuned_model!.slice(`${base}+bench/`.length).split('@')[0])!;
    const files = new Map<string, Uint8Array>();
    for (const name of [ADAPTER_CONFIG_FILE, 'adapter_model.safetensors']) files.set(name, await readFile(join(published.path, name)));
    const copy = await gateway.services.store.publish('bench', `cold-copy-${trial}`, files);
    coldChats.push(await chat(`${base}+bench/cold-copy-${trial}@${copy.version}`));
    log(
      `trial ${trial + 1}: first chat on ${done.fine_tuned_model} ${(latencies.at(-1)! * 1000).toFixed(0)} ms after the job reported ` +
        `succeeded (the same chat on the base model: ${(baseChats.at(-1)! * 1000).toFixed(0)} ms; on a copy nothing preloaded: ` +
        `${(coldChats.at(-1)! * 1000).toFixed(0)} ms)`,
    );
  }

  const report = {
    model: base,
    engineThreads: Number(values['engine-threads']),
    trainerThreads: Number(values['trainer-threads']),
    streams,
    servingWhileTraining: {
      ratioMedian: median(ratios),
      ratioMin: Math.min(...ratios),
      ratioMax: Math.max(...ratios),
      idleTokensPerSecond: idleRates,
      trainingTokensPerSecond: busyRates,
    },
    succeededToFirstChatSeconds: { median: median(latencies), max: Math.max(...latencies), all: latencies },
    baseChatSeconds: { median: median(baseChats), all: baseChats },
    notPreloadedFirstChatSeconds: { median: median(coldChats), all: coldChats },
    /** Per trial: the first chat after `succeeded` over the first chat on the same files not preloaded. */
    preloadedOverColdRatio: latencies.map((seconds, i) => seconds / coldChats[i]),
  };
  if (values.json) process.stdout.write(`${JSON.stringify(report)}\n`);
  else {
    log(`serving while a job trains: ×${report.servingWhileTraining.ratioMedian.toFixed(2)} of idle (pairs ${report.servingWhileTraining.ratioMin.toFixed(2)}–${report.servingWhileTraining.ratioMax.toFixed(2)})`);
    log(
      `succeeded → first chat: median ${(report.succeededToFirstChatSeconds.median * 1000).toFixed(0)} ms, max ` +
        `${(report.succeededToFirstChatSeconds.max * 1000).toFixed(0)} ms (base-model chat: median ${(report.baseChatSeconds.median * 1000).toFixed(0)} ms; ` +
        `first chat on the same files not preloaded: median ${(report.notPreloadedFirstChatSeconds.median * 1000).toFixed(0)} ms)`,
    );
  }
} finally {
  await trainer.stop();
  await gateway.close(1000);
  await rm(dir, { recursive: true, force: true });
}

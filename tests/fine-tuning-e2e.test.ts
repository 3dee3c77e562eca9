/**
 * End to end with the official OpenAI client: upload stories that teach stories260K a made-up word, fine-tune, watch
 * the job, and chat with the result the moment it succeeds, while the base model served beside it stays unchanged.
 * Eval loss on held-back stories is computed here independently, with the serving runtime, for the base and the
 * trained adapter.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { toFile } from 'openai';
import { loadLoraAdapter } from '../src/adapters/lora.ts';
import { loadBaseModel } from '../src/model/load.ts';
import { ModelRunner } from '../src/runtime/model-runner.ts';
import { loadChatFormatter, loadTokenizer } from '../src/tokenizer/load.ts';
import { parseTrainingJsonl } from '../src/training/data/jsonl-examples.ts';
import { tokenizeExamples, type TokenizedSequence } from '../src/training/data/tokenize-examples.ts';
import { BASE_MODEL, KEYS, startTestGateway, type TestGateway } from './support/gateway.ts';
import { asJsonl, jobFinished, MADE_UP_WORD, madeUpWordStories, startTestTrainer, waitForJob, type TestTrainer } from './support/fine-tuning.ts';
import { REFERENCE, STORIES_HF_DIR } from './support/models.ts';

let gateway: TestGateway;
let trainer: TestTrainer;
before(async () => {
  gateway = await startTestGateway();
  trainer = await startTestTrainer(gateway, { TRAINER_CHECKPOINT_STEPS: '8' });
});
after(async () => {
  await trainer.close();
  await gateway.stop();
});

const TRAIN = madeUpWordStories(24);
const HELD_OUT = madeUpWordStories(6, 24);

/** Mean negative log-likelihood per target token, one token at a time through the serving runtime's KV cache. */
async function evalLoss(runner: ModelRunner, slot: number, sequences: TokenizedSequence[]): Promise<number> {
  const vocab = runner.config.vocabSize;
  let total = 0;
  let count = 0;
  for (const { tokens, lossMask } of sequences) {
    for (let position = 0; position + 1 < tokens.length; position++) {
      const logits = await runner.forward(0, [{ tokens: [tokens[position]], position, slot }]);
      if (!lossMask[position + 1]) continue;
      let max = -Infinity;
      for (let v = 0; v < vocab; v++) max = Math.max(max, logits[v]);
      let sum = 0;
      for (let v = 0; v < vocab; v++) sum += Math.exp(logits[v] - max);
      total += max + Math.log(sum) - logits[tokens[position + 1]];
      count++;
    }
  }
  return total / count;
}

test('a tenant fine-tunes with the openai client and chats with the result as soon as the job succeeds', async () => {
  const client = gateway.client(KEYS.acme);
  const readyBefore = await (await fetch(`${gateway.url}/ready`)).json();
  const baseGreedy = async () =>
    (await client.completions.create({ model: BASE_MODEL, prompt: REFERENCE.prompt, max_tokens: 32, temperature: 0 })).choices[0].text;
  assert.equal(`${REFERENCE.prompt}${await baseGreedy()}`, REFERENCE.text);

  const trainingFile = await client.files.create({ file: await toFile(Buffer.from(asJsonl(TRAIN)), 'train.jsonl'), purpose: 'fine-tune' });
  const validationFile = await client.files.create({ file: await toFile(Buffer.from(asJsonl(HELD_OUT)), 'valid.jsonl'), purpose: 'fine-tune' });
  const created = await client.fineTuning.jobs.create({
    model: BASE_MODEL,
    training_file: trainingFile.id,
    validation_file: validationFile.id,
    suffix: 'zibbo',
    seed: 42,
    method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 4, batch_size: 4, learning_rate_multiplier: 25 } } },
    lora_r: 8,
  } as never);
  assert.equal(created.status, 'validating_files');

  const statuses = new Set<string>();
  const finished = await waitForJob(client, created.id, (job) => {
    statuses.add(job.status);
    return jobFinished(job);
  });
  assert.equal(finished.status, 'succeeded', JSON.stringify(finished.error));
  const model = finished.fine_tuned_model!;
  assert.match(model, new RegExp(`^${BASE_MODEL}\\+acme/zibbo@\\d+$`));
  // At once: no wait for the store's rescan, nor for the disk: the gateway loaded the adapter before `succeeded`.
  const chat = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 8, temperature: 0 });
  assert.equal(chat.model, model);
  const coldStarts = (await (await fetch(`${gateway.url}/metrics`)).text())
    .split('\n')
    .filter((line) => line.startsWith('gateway_adapter_cold_starts_total{') && line.includes('zibbo'));
  assert.deepEqual(coldStarts.map((line) => /tier="(\w+)"/.exec(line)![1]), ['host'], coldStarts.join('\n'));
  const listed = await client.models.list();
  assert.ok(listed.data.some((card) => (card as unknown as { root: string }).root === model.slice(BASE_MODEL.length + 1)), 'listed by /v1/models');
  assert.ok(finished.trained_tokens! > 0);
  assert.equal(finished.error, null);
  assert.ok(finished.finished_at! >= finished.created_at);

  // The taught word is used by greedy generations on the adapter; the base is untouched.
  const tuned = (await client.completions.create({ model, prompt: REFERENCE.prompt, max_tokens: 32, temperature: 0 })).choices[0].text;
  assert.match(tuned, new RegExp(MADE_UP_WORD));
  assert.equal(`${REFERENCE.prompt}${await baseGreedy()}`, REFERENCE.text);
  assert.deepEqual(await (await fetch(`${gateway.url}/ready`)).json(), readyBefore, 'same base checksum');

  // Events: newest first, metrics events carrying the training metrics.
  const events = [];
  for await (const event of client.fineTuning.jobs.listEvents(created.id, { limit: 100 })) events.push(event);
  const metrics = events.filter((event) => event.type === 'metrics').reverse();
  // One event per optimizer step, and one more after each epoch's evaluation.
  const steps = metrics.map((event) => (event.data as { step: number }).step);
  assert.deepEqual([...new Set(steps)], Array.from({ length: 24 }, (_, i) => i + 1), '6 steps per epoch, 4 epochs');
  const last = metrics.at(-1)!.data as Record<string, number>;
  for (const key of ['step', 'train_loss', 'valid_loss', 'tokens_per_second', 'total_steps']) assert.equal(typeof last[key], 'number', key);
  assert.equal(events[0].message, 'The job has successfully completed');
  assert.ok(events.some((event) => event.message.startsWith('Files validated')));

  // Checkpoints at steps 8 and 16, each a servable model.
  const checkpoints = await client.fineTuning.jobs.checkpoints.list(created.id);
  assert.deepEqual(checkpoints.data.map((c) => c.step_number), [16, 8]);
  const checkpointModel = checkpoints.data[0].fine_tuned_model_checkpoint;
  assert.equal((await client.chat.completions.create({ model: checkpointModel, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2 })).model, checkpointModel);

  // Eval loss, computed independently with the serving runtime on the held-back stories.
  const base = await loadBaseModel(STORIES_HF_DIR);
  const tokenizer = await loadTokenizer(STORIES_HF_DIR, base.config.eosTokenIds);
  const heldOut = tokenizeExamples(parseTrainingJsonl(asJsonl(HELD_OUT), 1), {
    tokenizer,
    formatChat: await loadChatFormatter(STORIES_HF_DIR),
    maxLength: 1024,
  }).sequences;
  const runner = await ModelRunner.create(base, { maxBatch: 1, adapterSlots: 1, maxLoraRank: 8 });
  try {
    const record = gateway.services.store.resolve('acme', 'zibbo')!;
    const slot = runner.slots.place('tuned', await loadLoraAdapter(record.path, base.config))!;
    const baseLoss = await evalLoss(runner, 0, heldOut);
    const tunedLoss = await evalLoss(runner, slot, heldOut);
    assert.ok(tunedLoss < baseLoss / 2, `held-out loss ${tunedLoss} should fall well below the base's ${baseLoss}`);
    assert.ok(Math.abs(tunedLoss - last.valid_loss) < 1e-3 * baseLoss, `the job reported ${last.valid_loss}, the serving runtime gives ${tunedLoss}`);
  } finally {
    await runner.close();
  }

  // Observability: the sidecar's series, one span for the job, and logs without training data.
  await trainer.poll();
  const exposition = await (await fetch(`${trainer.url}/metrics`)).text();
  assert.match(exposition, /^trainer_jobs\{status="succeeded"\} 1$/m);
  assert.match(exposition, /^trainer_tokens_per_second 0$/m);
  assert.match(exposition, new RegExp(`^trainer_trained_tokens_total ${finished.trained_tokens}$`, 'm'));
  assert.match(exposition, /^trainer_job_duration_seconds_count\{status="succeeded"\} 1$/m);
  assert.match(exposition, /^trainer_loss \d/m);
  const span = trainer.spans.getFinishedSpans().find((s) => s.name === 'fine_tuning.job');
  assert.equal(span?.attributes['fine_tuning.job.id'], created.id);
  assert.equal(span?.attributes['fine_tuning.status'], 'succeeded');
  assert.ok(trainer.logs.length > 0);
  for (const line of trainer.logs) {
    assert.doesNotMatch(line, new RegExp(MADE_UP_WORD), 'no training data in logs');
    JSON.parse(line);
  }
});

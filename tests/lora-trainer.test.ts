import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadBaseModel } from '../src/model/load.ts';
import { weightsChecksum } from '../src/model/checksum.ts';
import { loadTokenizer } from '../src/tokenizer/load.ts';
import { loraAdapterFiles } from '../src/adapters/lora-writer.ts';
import { LORA_TARGET_MODULES } from '../src/model/types.ts';
import {
  DEFAULT_LORA_TRAINING_CONFIG,
  deserializeCheckpoint,
  serializeCheckpoint,
  trainLora,
  type LoraTrainingConfig,
  type TrainerCheckpoint,
  type TrainingProgress,
  type TrainingSequence,
} from '../src/training/lora-trainer.ts';
import { TrainingModel } from '../src/training/training-model.ts';
import { validationLoss } from '../src/training/training-loop.ts';
import { STORIES_HF_DIR } from './support/models.ts';

const model = await loadBaseModel(STORIES_HF_DIR);
const tokenizer = await loadTokenizer(STORIES_HF_DIR, model.config.eosTokenIds);

/** Plain text: every token after the first is a target. */
const textSequence = (text: string): TrainingSequence => {
  const tokens = Int32Array.from(tokenizer.encode(text, { addBos: true }));
  return { tokens, lossMask: Uint8Array.from(tokens, (_, i) => (i === 0 ? 0 : 1)) };
};

// Stories in which the made-up word "zib" replaces "ball": nothing in the base model predicts it.
const NAMES = ['Lily', 'Tom', 'Sue', 'Ben', 'Mia', 'Max', 'Anna', 'Sam', 'Lucy', 'Tim', 'Zoe', 'Jack'];
const PLACES = ['park', 'garden', 'yard', 'house', 'forest', 'beach'];
const story = (i: number) => {
  const name = NAMES[i % NAMES.length];
  const place = PLACES[i % PLACES.length];
  return `${name} went to the ${place} with a red zib. ${name} liked to play with the zib. The zib was big and round.`;
};
const TRAIN = Array.from({ length: 24 }, (_, i) => textSequence(story(i)));
// Held back: name/place pairs the training stories never combine.
const VALIDATION = Array.from({ length: 6 }, (_, i) => textSequence(story(i * 5 + 1).replace(NAMES[(i * 5 + 1) % NAMES.length], ['Kim', 'Dan', 'Eve', 'Ola', 'Ray', 'Ivy'][i])));

const CONFIG: LoraTrainingConfig = {
  ...DEFAULT_LORA_TRAINING_CONFIG,
  rank: 8,
  alpha: 16,
  epochs: 6,
  batchSize: 8,
  learningRate: 1e-2,
  warmupRatio: 0.1,
  seed: 7,
  maxLength: 128,
  threads: 1,
};

test('training on made-up-word stories lowers the held-out loss well below the base model’s', async () => {
  const progress: TrainingProgress[] = [];
  const result = await trainLora(model, { train: TRAIN, validation: VALIDATION }, CONFIG, { onProgress: (p) => progress.push(p) });
  assert.equal(result.status, 'completed');
  assert.equal(result.progress.step, 18); // 24 examples / batch 8 = 3 steps per epoch, 6 epochs
  assert.deepEqual(result.adapter.targetModules, [...LORA_TARGET_MODULES]);

  // The base model's held-out loss, computed independently of the run: the same graphs with a zero adapter.
  const engine = await TrainingModel.create(model, { ...CONFIG, dropout: 0 });
  const baseLoss = await validationLoss(engine, VALIDATION, new Float32Array(engine.layout.size), CONFIG.batchSize);
  const trainedLoss = await validationLoss(engine, VALIDATION, engine.layout.fromAdapterSpec(result.adapter), CONFIG.batchSize);
  await engine.close();
  assert.ok(trainedLoss < 0.6 * baseLoss, `held-out loss ${trainedLoss} should be well below the base model's ${baseLoss}`);
  const lastValid = progress.filter((p) => p.validLoss !== undefined).at(-1)!.validLoss!;
  assert.ok(Math.abs(lastValid - trainedLoss) < 1e-4, 'the last reported validation loss is the trained adapter’s');
  assert.ok(progress.at(-1)!.trainLoss < progress[0].trainLoss / 2, 'the training loss falls');
  assert.ok(progress.every((p) => p.tokensPerSecond > 0 && p.totalSteps === 18));
});

const SHORT: LoraTrainingConfig = { ...CONFIG, epochs: 2, batchSize: 4, gradientAccumulationSteps: 2, schedule: 'cosine' };
const adapterBytes = (adapter: Parameters<typeof loraAdapterFiles>[0]) => Buffer.concat([...loraAdapterFiles(adapter).values()]);

test('the same seed gives byte-identical adapters; a stopped run resumed from its checkpoint ends identical too', async () => {
  const data = { train: TRAIN.slice(0, 12), validation: VALIDATION.slice(0, 2) };
  const first = await trainLora(model, data, SHORT);
  const second = await trainLora(model, data, SHORT);
  assert.equal(first.progress.step, 4);
  assert.ok(adapterBytes(first.adapter).equals(adapterBytes(second.adapter)), 'same seed, same bytes');
  const otherSeed = await trainLora(model, data, { ...SHORT, seed: 8 });
  assert.ok(!adapterBytes(first.adapter).equals(adapterBytes(otherSeed.adapter)), 'another seed, another adapter');

  // Stop after the first step (the stop request is read after the step that follows it), keeping checkpoints.
  let saved: TrainerCheckpoint | undefined;
  const stopped = await trainLora(model, data, SHORT, {
    shouldStop: () => true,
    checkpointEvery: 1,
    onCheckpoint: async (checkpoint) => {
      saved = deserializeCheckpoint(serializeCheckpoint(checkpoint));
    },
  });
  assert.equal(stopped.status, 'stopped');
  assert.ok(saved && saved.step === stopped.progress.step && saved.step < 4);
  const resumed = await trainLora(model, data, SHORT, { resumeFrom: saved });
  assert.equal(resumed.status, 'completed');
  assert.ok(adapterBytes(resumed.adapter).equals(adapterBytes(first.adapter)), 'resumed run ends where the uninterrupted one did');

  await assert.rejects(trainLora(model, data, { ...SHORT, learningRate: 2e-2 }, { resumeFrom: saved }), /other settings, data or base model/);
});

test('settings out of range are refused with the setting’s name', async () => {
  await assert.rejects(trainLora(model, { train: TRAIN }, { ...CONFIG, rank: 0 }), /training setting rank must be a positive integer/);
  await assert.rejects(trainLora(model, { train: TRAIN }, { ...CONFIG, dropout: 1 }), /training setting dropout/);
  await assert.rejects(trainLora(model, { train: [] }, CONFIG), /training data is empty/);
});

test('runs borrow the one copy of the base weights: moved to the training thread, shared by concurrent runs, then back unchanged', async () => {
  const data = { train: TRAIN.slice(0, 8) };
  const settings: LoraTrainingConfig = { ...SHORT, epochs: 1 };
  const alone = await trainLora(model, data, settings);
  const probe = model.weights.get('model.layers.0.self_attn.q_proj.weight')!;
  const lengthsDuringRuns: number[] = [];
  const watch = { onProgress: () => lengthsDuringRuns.push(probe.data.length) };
  const [same, other] = await Promise.all([trainLora(model, data, settings, watch), trainLora(model, data, { ...settings, seed: 9 }, watch)]);
  // While runs were in progress this thread's arrays were detached: the weights were moved, not copied.
  assert.ok(lengthsDuringRuns.length >= 2 && lengthsDuringRuns.every((length) => length === 0), `lengths seen: ${lengthsDuringRuns}`);
  assert.ok(adapterBytes(same.adapter).equals(adapterBytes(alone.adapter)), 'a run beside another trains as it does alone');
  assert.ok(!adapterBytes(other.adapter).equals(adapterBytes(alone.adapter)));
  // Back, and the same bytes: the checksum the loader computed.
  assert.equal(probe.data.length, model.config.hiddenSize * model.config.hiddenSize);
  assert.equal(weightsChecksum(model.weights), model.checksum);
});

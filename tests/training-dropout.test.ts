import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBaseModel } from '../src/model/random-model.ts';
import { createRng, randomNormal } from '../src/engine/random.ts';
import { LORA_TARGET_MODULES, type LlamaConfig } from '../src/model/types.ts';
import { fillDropoutMask, TrainingModel } from '../src/training/training-model.ts';
import { packBatch } from '../src/training/batches.ts';
import { projectionDims } from '../src/adapters/lora.ts';

const ALL = [...LORA_TARGET_MODULES];

const TINY: LlamaConfig = {
  hiddenSize: 16,
  intermediateSize: 24,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 4,
  vocabSize: 32,
  maxPositions: 64,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  ropeScaling: null,
  tieWordEmbeddings: true,
  bosTokenId: 1,
  eosTokenIds: [2],
};

const P = 0.5;

/**
 * One layer, three tokens, the loss on position 1 only: no gradient reaches position 2, and at position 0 only k
 * and v (read by position 1's query) get one. A LoRA A matrix's gradient is then zero in exactly the input
 * features its module's dropout dropped wherever a gradient arrives, so its zero columns show which mask the real
 * graphs gave each projection.
 */
const ONE_LAYER: LlamaConfig = { ...TINY, numLayers: 1 };
const POSITIONS_WITH_GRADIENT: Record<string, number[]> = { k_proj: [0, 1], v_proj: [0, 1] };

async function droppedFeatures(training: TrainingModel, parameters: Float32Array, seeds: number[][]) {
  const batch = packBatch([{ tokens: Int32Array.from([3, 7, 11]), lossMask: Uint8Array.from([0, 0, 1]) }], 1);
  const gradient = new Float32Array(parameters.length);
  await training.lossAndGradients(batch, parameters, gradient, seeds);
  const dropped = new Map<string, number[]>();
  for (const slot of training.layout.slots.filter((s) => s.matrix === 'A')) {
    const [rank, width] = slot.shape;
    const a = training.layout.view(gradient, slot);
    const largest = Math.max(...a.map(Math.abs));
    const column = (i: number) => Math.max(...[...Array(rank).keys()].map((r) => Math.abs(a[r * width + i])));
    dropped.set(slot.module, [...Array(width).keys()].filter((i) => column(i) <= 1e-6 * largest));
  }
  return { dropped, gradient };
}

test('every adapted projection draws its own seeded dropout mask, as PEFT does per module', async () => {
  const model = randomBaseModel(ONE_LAYER, 11, 0.4);
  const training = await TrainingModel.create(model, { rank: 2, alpha: 4, targetModules: ALL, dropout: P, threads: 1 });
  const rng = createRng(5);
  const parameters = Float32Array.from({ length: training.layout.size }, () => 0.3 * randomNormal(rng));
  const seeds = training.dropoutSeeds(1234);
  const { dropped, gradient } = await droppedFeatures(training, parameters, seeds);

  ALL.forEach((module, i) => {
    // An independent draw of the mask from the module's own seed, over the batch's [1, 3, width] input.
    const width = projectionDims(ONE_LAYER, module).inFeatures;
    const mask = new Float32Array(3 * width);
    fillDropoutMask(mask, P, seeds[0][i]);
    const positions = POSITIONS_WITH_GRADIENT[module] ?? [1];
    const expected = [...Array(width).keys()].filter((f) => positions.every((t) => mask[t * width + f] === 0));
    assert.ok(expected.length > 0 && expected.length < width, `${module}: the seed chosen drops some features and keeps others`);
    assert.deepEqual(dropped.get(module), expected, `${module}: dropped input features`);
  });
  // Projections reading the same activation (q, k, v; gate, up) do not share a mask.
  const pattern = (module: string) => JSON.stringify(dropped.get(module));
  assert.equal(new Set(['q_proj', 'k_proj', 'v_proj'].map(pattern)).size, 3, 'q, k and v masks differ');
  assert.notEqual(pattern('gate_proj'), pattern('up_proj'), 'gate and up masks differ');

  // Reproducible: the same seeds give bit-identical gradients; other seeds drop other features.
  const again = await droppedFeatures(training, parameters, training.dropoutSeeds(1234));
  assert.deepEqual(again.gradient, gradient);
  const other = await droppedFeatures(training, parameters, training.dropoutSeeds(4321));
  assert.notDeepEqual([...other.dropped.values()], [...dropped.values()]);
  await training.close();
});

test('running a layer over groups of sequences gives the whole batch’s loss and gradients', async () => {
  const model = randomBaseModel(TINY, 12, 0.4);
  const settings = { rank: 2, alpha: 4, targetModules: ALL, dropout: 0.2, threads: 1 };
  const whole = await TrainingModel.create(model, settings);
  // 7 tokens per run with 5-token sequences: one sequence per layer run.
  const grouped = await TrainingModel.create(model, { ...settings, layerTokens: 7 });
  const rng = createRng(8);
  const parameters = Float32Array.from({ length: whole.layout.size }, () => 0.3 * randomNormal(rng));
  const sequence = (length: number) => ({
    tokens: Int32Array.from({ length }, () => Math.floor(rng() * TINY.vocabSize)),
    lossMask: Uint8Array.from({ length }, (_, i) => (i > 0 ? 1 : 0)),
  });
  const batch = packBatch([sequence(5), sequence(3), sequence(5)], 1 / 10);
  const seeds = whole.dropoutSeeds(77);
  const wholeGradient = new Float32Array(parameters.length);
  const groupedGradient = new Float32Array(parameters.length);
  const wholeLoss = await whole.lossAndGradients(batch, parameters, wholeGradient, seeds);
  const groupedLoss = await grouped.lossAndGradients(batch, parameters, groupedGradient, seeds);
  assert.ok(Math.abs(wholeLoss - groupedLoss) < 1e-6, `loss ${wholeLoss} vs ${groupedLoss}`);
  const scale = Math.max(...wholeGradient.map(Math.abs));
  wholeGradient.forEach((g, i) => assert.ok(Math.abs(g - groupedGradient[i]) <= 1e-5 * scale, `gradient ${i}: ${g} vs ${groupedGradient[i]}`));
  assert.ok(Math.abs((await whole.loss(batch, parameters)) - (await grouped.loss(batch, parameters))) < 1e-6);
  await whole.close();
  await grouped.close();
});

test('a dropout mask drops each element with probability p, independently, and scales the kept ones by 1/(1−p)', () => {
  for (const p of [0.05, 0.3]) {
    const mask = new Float32Array(400_000);
    fillDropoutMask(mask, p, 42);
    const keep = Math.fround(1 / (1 - p));
    assert.ok(mask.every((m) => m === 0 || m === keep));
    const dropped = mask.filter((m) => m === 0).length / mask.length;
    // Binomial standard deviation is sqrt(p(1−p)/n) ≤ 0.00073 here: 5 of them.
    assert.ok(Math.abs(dropped - p) < 0.0037, `p ${p}: dropped ${dropped}`);
    // Neighbours are independent: a drop right after a drop is as likely as any drop.
    let pairs = 0;
    for (let i = 1; i < mask.length; i++) if (mask[i] === 0 && mask[i - 1] === 0) pairs++;
    const afterDrop = pairs / (dropped * mask.length);
    assert.ok(Math.abs(afterDrop - p) < 0.02, `p ${p}: drop after a drop ${afterDrop}`);
  }
  const a = new Float32Array(1000);
  const b = new Float32Array(1000);
  fillDropoutMask(a, 0.5, 1);
  fillDropoutMask(b, 0.5, 1);
  assert.deepEqual(a, b, 'seeded');
});

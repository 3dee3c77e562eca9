import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadBaseModel } from '../src/model/load.ts';
import { ModelRunner } from '../src/runtime/model-runner.ts';
import { loadLoraAdapter } from '../src/adapters/lora.ts';
import { randomLoraAdapter, writeLoraAdapter } from '../src/adapters/lora-writer.ts';
import { randomBaseModel } from '../src/model/random-model.ts';
import { createRng, randomNormal } from '../src/engine/random.ts';
import { LORA_TARGET_MODULES } from '../src/model/types.ts';
import { projectionDims } from '../src/adapters/lora.ts';
import { TrainingModel } from '../src/training/training-model.ts';
import { packBatch } from '../src/training/batches.ts';
import { STORIES_HF_DIR } from './support/models.ts';
import { TINY } from './support/tiny-config.ts';

const ALL = [...LORA_TARGET_MODULES];

test('the training forward pass gives the serving graph’s logits (base and LoRA adapter, every prefix)', async () => {
  const model = await loadBaseModel(STORIES_HF_DIR);
  const dir = await mkdtemp(join(tmpdir(), 'train-forward-'));
  try {
    const spec = randomLoraAdapter(model.config, { rank: 4, targetModules: ALL, seed: 3, std: 0.15, alpha: 8 });
    await writeLoraAdapter(dir, spec);
    const runner = await ModelRunner.create(model, { maxBatch: 8, adapterSlots: 1, maxLoraRank: 4 });
    const slot = runner.slots.place('a', await loadLoraAdapter(dir, model.config))!;
    const tokens = [1, 403, 407, 261, 378, 432, 383, 286];
    const prefixes = [2, 5, 8].map((length) => tokens.slice(0, length));

    const training = await TrainingModel.create(model, { rank: 4, alpha: 8, targetModules: ALL, dropout: 0.1, threads: 1 });
    const batch = packBatch([{ tokens: Int32Array.from(tokens), lossMask: new Uint8Array(tokens.length) }], 0);
    const vocab = model.config.vocabSize;
    for (const [adapterSlot, parameters] of [
      [0, new Float32Array(training.layout.size)],
      [slot, training.layout.fromAdapterSpec(spec)],
    ] as const) {
      const logits = await training.logits(batch, parameters);
      const serving = await runner.forward(0, prefixes.map((prefix) => ({ tokens: prefix, position: 0, slot: adapterSlot })));
      prefixes.forEach((prefix, row) => {
        const position = prefix.length - 1;
        let worst = 0;
        for (let v = 0; v < vocab; v++) worst = Math.max(worst, Math.abs(logits[position * vocab + v] - serving[row * vocab + v]));
        assert.ok(worst < 1e-4, `slot ${adapterSlot}, position ${position}: logits differ by ${worst}`);
      });
    }
    await training.close();
    await runner.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});


test('gradients of the whole decoder (every LoRA matrix, with dropout and padding) match central differences', async () => {
  const model = randomBaseModel(TINY, 11, 0.4);
  const training = await TrainingModel.create(model, { rank: 2, alpha: 4, targetModules: ALL, dropout: 0.2, threads: 1, headRows: 5 });
  const rng = createRng(5);
  const parameters = Float32Array.from({ length: training.layout.size }, () => 0.3 * randomNormal(rng));
  const sequence = (length: number, from: number) => ({
    tokens: Int32Array.from({ length }, () => Math.floor(rng() * TINY.vocabSize)),
    lossMask: Uint8Array.from({ length }, (_, i) => (i >= from ? 1 : 0)),
  });
  const batch = packBatch([sequence(7, 1), sequence(4, 2), sequence(6, 3)], 1 / 12);
  const seeds = training.dropoutSeeds(99);
  const loss = (p: Float32Array) => training.lossAndGradients(batch, p, new Float32Array(p.length), seeds);

  const gradient = new Float32Array(parameters.length);
  const value = await training.lossAndGradients(batch, parameters, gradient, seeds);
  assert.ok(Number.isFinite(value) && value > 0);
  assert.ok(gradient.some((g) => g !== 0));

  const eps = 1e-3;
  const centralDifference = async (direction: Float32Array, step: number) =>
    ((await loss(parameters.map((p, i) => p + step * direction[i]))) - (await loss(parameters.map((p, i) => p - step * direction[i])))) / (2 * step);
  const directional = async (direction: Float32Array) => {
    // Richardson's extrapolation of two central differences cancels their step² error, which a direction through
    // every parameter at once can make large.
    const numeric = (4 * (await centralDifference(direction, eps / 2)) - (await centralDifference(direction, eps))) / 3;
    const analytic = gradient.reduce((sum, g, i) => sum + g * direction[i], 0);
    assert.ok(Math.abs(numeric - analytic) <= 5e-3 * Math.abs(numeric) + 2e-4, `directional derivative ${analytic}, central difference ${numeric}`);
  };
  // Every matrix on its own (A and B of each projection in each layer), then random directions through all.
  for (const slot of training.layout.slots) {
    const direction = new Float32Array(parameters.length);
    training.layout.view(direction, slot).forEach((_, i, view) => (view[i] = randomNormal(rng)));
    await directional(direction);
  }
  for (let trial = 0; trial < 3; trial++) await directional(Float32Array.from(parameters, () => randomNormal(rng)));
  await training.close();
});

test('a backward walk over saved base-projection outputs gives the gradients of a full recomputation', async () => {
  const model = randomBaseModel(TINY, 12, 0.4);
  const settings = { rank: 2, alpha: 4, targetModules: ALL, dropout: 0.2, threads: 1, layerTokens: 7 };
  const rng = createRng(6);
  const sequence = (length: number) => ({ tokens: Int32Array.from({ length }, () => Math.floor(rng() * TINY.vocabSize)), lossMask: Uint8Array.from({ length }, (_, i) => (i > 0 ? 1 : 0)) });
  const batch = packBatch([sequence(6), sequence(5), sequence(6)], 1 / 15);
  const perLayer = batch.rows * batch.tokens * ALL.reduce((sum, m) => sum + projectionDims(TINY, m).outFeatures, 0) * 4;
  const gradientsWith = async (savedActivationBytes: number) => {
    const training = await TrainingModel.create(model, { ...settings, savedActivationBytes });
    const p = Float32Array.from({ length: training.layout.size }, (_, i) => 0.3 * Math.sin(i));
    const gradient = new Float32Array(p.length);
    const loss = await training.lossAndGradients(batch, p, gradient, training.dropoutSeeds(7));
    await training.close();
    return { loss, gradient };
  };
  const recomputed = await gradientsWith(0);
  assert.ok(recomputed.gradient.some((g) => g !== 0));
  // Every layer saved, and only the first of them (the rest recomputed).
  for (const budget of [perLayer * TINY.numLayers, perLayer]) {
    const { loss, gradient } = await gradientsWith(budget);
    assert.ok(Math.abs(loss - recomputed.loss) <= 1e-6 * Math.abs(recomputed.loss), `loss ${loss} against ${recomputed.loss}`);
    const worst = gradient.reduce((max, g, i) => Math.max(max, Math.abs(g - recomputed.gradient[i])), 0);
    const scale = recomputed.gradient.reduce((max, g) => Math.max(max, Math.abs(g)), 0);
    assert.ok(worst <= 1e-5 * scale, `gradients differ by ${worst} (largest ${scale}) with ${budget} bytes saved`);
  }
});

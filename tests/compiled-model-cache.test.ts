/**
 * The compiled base model is cached on disk between starts: a second start serves the same model from the cache,
 * and any change to the model's files (or a damaged entry) compiles it again instead of serving a stale one.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readdir, readFile, rename, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { compileBaseModel, type CompiledModel } from '../src/runtime/compiled-model-cache.ts';
import { ModelRunner } from '../src/runtime/model-runner.ts';
import { REFERENCE, storiesCopyWithCache } from './support/models.ts';

/** The logits of the reference prompt's last position, computed by a session built from `compiled`. */
async function lastLogits(compiled: CompiledModel): Promise<Float32Array> {
  const runner = await ModelRunner.fromGraphs(compiled.graphs, compiled.config, { maxBatch: 1, adapterSlots: 1, maxLoraRank: 4, threads: 1 }, compiled.rowNorms);
  try {
    return await runner.forward(0, [{ tokens: REFERENCE.promptIds, position: 0, slot: 0 }]);
  } finally {
    await runner.close();
  }
}

test('a second start serves the same model from the cache', async (t) => {
  const { model, cache } = await storiesCopyWithCache(t, 'compiled-cache-');
  const uncached = await compileBaseModel(model, {});
  const first = await compileBaseModel(model, { cacheDir: cache });
  const second = await compileBaseModel(model, { cacheDir: cache });
  assert.equal(first.cached, false);
  assert.equal(second.cached, true);
  assert.ok(!('models' in second.graphs), 'served from the entry on disk');
  assert.equal(second.checksum, uncached.checksum);
  assert.deepEqual(second.config, uncached.config);
  assert.deepEqual([...second.rowNorms.keys()], [...uncached.rowNorms.keys()]);
  for (const [name, norms] of uncached.rowNorms) assert.deepEqual(second.rowNorms.get(name), norms, name);
  assert.deepEqual(await lastLogits(second), await lastLogits(uncached));
});

test('changed weights are compiled again, never served from the old entry', async (t) => {
  const { model, cache } = await storiesCopyWithCache(t, 'compiled-cache-');
  const before = await compileBaseModel(model, { cacheDir: cache });
  const weightsPath = join(model, 'model.safetensors');
  const weights = await readFile(weightsPath);
  // The last byte of the last tensor: same size, different weights.
  weights[weights.length - 2] ^= 0x01;
  await writeFile(weightsPath, weights);
  const after = await compileBaseModel(model, { cacheDir: cache });
  assert.equal(after.cached, false);
  assert.notEqual(after.checksum, before.checksum);
  assert.equal((await compileBaseModel(model, { cacheDir: cache })).checksum, after.checksum);
});

test('a damaged entry is compiled again', async (t) => {
  const { model, cache } = await storiesCopyWithCache(t, 'compiled-cache-');
  const good = await compileBaseModel(model, { cacheDir: cache });
  const [entry] = (await readdir(cache)).filter((name) => !name.includes('.partial-'));
  await truncate(join(cache, entry, 'weights.bin'), 100);
  const again = await compileBaseModel(model, { cacheDir: cache });
  assert.equal(again.cached, false);
  assert.equal(again.checksum, good.checksum);
  assert.equal((await compileBaseModel(model, { cacheDir: cache })).cached, true);
});

test('an entry laid out by an earlier version (one graph file) is compiled again, and the model still serves', async (t) => {
  const { model, cache } = await storiesCopyWithCache(t, 'compiled-cache-');
  const good = await compileBaseModel(model, { cacheDir: cache });
  const [entry] = (await readdir(cache)).filter((name) => !name.includes('.partial-'));
  // An entry as the version with one graph wrote it: model.onnx beside the weights, listed in meta.json.
  const dir = join(cache, entry);
  await rename(join(dir, 'adapters.onnx'), join(dir, 'model.onnx'));
  await rm(join(dir, 'base.onnx'));
  const meta = JSON.parse(await readFile(join(dir, 'meta.json'), 'utf8')) as { sizes: Record<string, number> };
  meta.sizes = { 'model.onnx': meta.sizes['adapters.onnx'], 'weights.bin': meta.sizes['weights.bin'], 'row-norms.bin': meta.sizes['row-norms.bin'] };
  await writeFile(join(dir, 'meta.json'), JSON.stringify(meta));
  const again = await compileBaseModel(model, { cacheDir: cache });
  assert.equal(again.cached, false);
  assert.deepEqual(await lastLogits(again), await lastLogits(good));
  assert.equal((await compileBaseModel(model, { cacheDir: cache })).cached, true);
});

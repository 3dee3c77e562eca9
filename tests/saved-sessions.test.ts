/**
 * Sessions open from onnxruntime's optimized form of the serving graphs, saved beside the compiled-model cache
 * entry: they compute the same bits as sessions built from the graphs, the saved set stores each blob once, and a
 * damaged or unusable set never keeps the model from serving.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mkdir, mkdtemp, open, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import onnxProto from 'onnx-proto';
import { randomLoraAdapter, writeLoraAdapter } from '../src/adapters/lora-writer.ts';
import { loadAdapter } from '../src/adapters/adapter.ts';
import { SERVING_GRAPHS } from '../src/graph/decoder-graph.ts';
import { compileBaseModel, type CompiledModel } from '../src/runtime/compiled-model-cache.ts';
import { ModelRunner, type RunnerOptions } from '../src/runtime/model-runner.ts';
import type { SessionSource } from '../src/runtime/saved-sessions.ts';
import { REFERENCE, storiesCopyWithCache } from './support/models.ts';
import { greedy } from './support/greedy.ts';

const { onnx } = onnxProto;
const OPTIONS: RunnerOptions = { maxBatch: 2, adapterSlots: 2, maxLoraRank: 4, threads: 1 };

/** The compiled-model cache entry the graphs were read from. */
function entryOf(compiled: CompiledModel): string {
  assert.ok(!('models' in compiled.graphs), 'the graphs are files of a cache entry');
  return join(compiled.graphs.base, '..');
}

/** The entry's saved set: its directory (one per entry). */
async function savedSet(compiled: CompiledModel): Promise<string> {
  const entry = entryOf(compiled);
  const sets = (await readdir(entry)).filter((name) => name.startsWith('sessions-'));
  assert.equal(sets.length, 1, `one saved set in the entry, found ${sets.join(', ')}`);
  return join(entry, sets[0]);
}

/**
 * What a runner computes on every serving graph: greedy ids on the base graph, and the logits of a pass mixing a
 * base row with a LoRA row and with a DoRA row (whose scales come from the adapter graph's probe branch), on the
 * mixed graph and on the adapter graph.
 */
async function outputs(compiled: CompiledModel, expected: SessionSource): Promise<{ greedyIds: number[]; logits: Float32Array[] }> {
  const runner = await ModelRunner.fromGraphs(compiled.graphs, compiled.config, OPTIONS, compiled.rowNorms);
  try {
    assert.equal(runner.sessionSource, expected);
    const greedyIds = await greedy(runner, REFERENCE.promptIds, 8);
    const adapter = async (dora: boolean, seed: number) => {
      const dir = await mkdtemp(join(tmpdir(), 'saved-sessions-adapter-'));
      try {
        await writeLoraAdapter(dir, randomLoraAdapter(compiled.config, { rank: 4, targetModules: ['q_proj', 'v_proj', 'down_proj'], seed, std: 0.15, alpha: 8, dora }));
        return await runner.prepareAdapter(await loadAdapter(dir, compiled.config));
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    };
    const lora = runner.slots.place('lora', await adapter(false, 1))!;
    const dora = runner.slots.place('dora', await adapter(true, 2))!;
    const logits: Float32Array[] = [];
    for (const slot of [lora, dora]) {
      const rows = [
        { tokens: REFERENCE.promptIds, position: 0, slot: 0 },
        { tokens: REFERENCE.promptIds.slice(0, 5), position: 0, slot },
      ];
      logits.push(await runner.forward(0, rows, 0));
    }
    return { greedyIds, logits };
  } finally {
    await runner.close();
  }
}

test('sessions opened from their saved form compute the same bits as sessions built from the graphs', async (t) => {
  const { model, cache } = await storiesCopyWithCache(t, 'saved-sessions-');
  const built = await outputs(await compileBaseModel(model, {}), 'built');
  assert.deepEqual(built.greedyIds, REFERENCE.greedyIds.slice(0, 8));
  // The first start compiles the model, saves the sessions' form and opens them from it; the next opens it only.
  const savedNow = await outputs(await compileBaseModel(model, { cacheDir: cache }), 'saved-now');
  const saved = await outputs(await compileBaseModel(model, { cacheDir: cache }), 'saved');
  for (const opened of [savedNow, saved]) {
    assert.deepEqual(opened.greedyIds, built.greedyIds);
    opened.logits.forEach((logits, i) => assert.deepEqual(logits, built.logits[i], `pass ${i}`));
  }
});

test('the saved set keeps every blob once, in one data file that all saved graphs read', async (t) => {
  const { model, cache } = await storiesCopyWithCache(t, 'saved-sessions-');
  const compiled = await compileBaseModel(model, { cacheDir: cache });
  // A set saved for another CPU or onnxruntime: writing this machine's set removes it.
  const entry = entryOf(compiled);
  await mkdir(join(entry, 'sessions-0123456789abcdef'));
  await writeFile(join(entry, 'sessions-0123456789abcdef', 'meta.json'), '{}');
  await (await ModelRunner.fromGraphs(compiled.graphs, compiled.config, OPTIONS, compiled.rowNorms)).close();
  const set = await savedSet(compiled);
  assert.deepEqual((await readdir(set)).sort(), ['adapters.onnx', 'base.onnx', 'meta.json', 'mixed.onnx', 'weights.bin']);

  // Where each graph keeps each tensor's bytes and pre-packed blobs.
  const placements = new Map<string, Map<string, string>>();
  for (const kind of SERVING_GRAPHS) {
    const graph = onnx.ModelProto.decode(await readFile(join(set, `${kind}.onnx`))).graph!;
    for (const tensor of graph.initializer ?? []) {
      if (!tensor.externalData?.length) continue;
      const entries = new Map(tensor.externalData.map(({ key, value }) => [key!, value!]));
      assert.equal(entries.get('location'), 'weights.bin', `${kind}: ${tensor.name}`);
      const placement = placements.get(tensor.name!) ?? new Map<string, string>();
      placement.set(kind, JSON.stringify([...entries].filter(([key]) => key !== 'location')));
      placements.set(tensor.name!, placement);
    }
  }
  const embedding = placements.get('model.embed_tokens.weight');
  assert.ok(embedding, 'the token embeddings are stored outside the saved graphs');
  assert.equal(embedding.size, SERVING_GRAPHS.length, 'every graph reads the token embeddings');
  assert.equal(new Set(embedding.values()).size, 1, 'at the same place in the data file');
  assert.match([...embedding.values()][0], /prepacked_/, 'with their pre-packed form beside them');
});

test('a damaged set is saved again, and a set onnxruntime cannot open is marked and the sessions built instead', async (t) => {
  const { model, cache } = await storiesCopyWithCache(t, 'saved-sessions-');
  const reference = await outputs(await compileBaseModel(model, {}), 'built');
  const compiled = await compileBaseModel(model, { cacheDir: cache });
  await outputs(compiled, 'saved-now');
  const set = await savedSet(compiled);

  // Cut short (a crash while copying it, a full disk): the sizes no longer match, so it is saved again.
  await truncate(join(set, 'weights.bin'), 4096);
  assert.deepEqual(await outputs(compiled, 'saved-now'), reference);

  // Same size, unreadable content: onnxruntime refuses it, the sessions are built from the graphs, and the mark
  // keeps later starts from trying again.
  const file = await open(join(set, 'base.onnx'), 'r+');
  await file.write(Buffer.alloc(64, 0xff), 0, 64, 0);
  await file.close();
  assert.deepEqual(await outputs(compiled, 'built'), reference);
  const meta = JSON.parse(await readFile(join(set, 'meta.json'), 'utf8')) as { unusable?: string };
  assert.equal(typeof meta.unusable, 'string');
  assert.deepEqual(await readdir(set), ['meta.json'], 'the unusable data is deleted');
  assert.deepEqual(await outputs(compiled, 'built'), reference);
});

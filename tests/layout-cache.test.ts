/**
 * Slot layouts kept on disk: a version loaded once is read back, by a later loader (a restarted engine) too, in
 * one phase and equal to a layout made afresh; changed files, damaged entries and the size bound each send a load
 * back to the full path, never to a stale or broken layout.
 */
import { before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { loadAdapter } from '../src/adapters/adapter.ts';
import { bottleneckAdapterFiles, randomBottleneckAdapter } from '../src/adapters/bottleneck-writer.ts';
import { loraAdapterFiles, randomLoraAdapter } from '../src/adapters/lora-writer.ts';
import { ia3AdapterFiles, promptLearningAdapterFiles, randomIa3Adapter, randomPromptLearningAdapter } from '../src/adapters/peft-writers.ts';
import { adapterLoaderFor } from '../src/engine/adapter-loader.ts';
import { AdapterLoaderThread } from '../src/engine/adapter-loader-thread.ts';
import { ENTRY_SUFFIX, LayoutCache } from '../src/engine/layout-cache.ts';
import { ReadBuffers } from '../src/engine/read-buffers.ts';
import { adapterValidator } from '../src/gateway/adapter-validator.ts';
import { adapterCacheKey, readAdapterSummary, type AdapterSummary } from '../src/gateway/model-resolver.ts';
import { configFromHuggingFace } from '../src/model/config.ts';
import { LORA_TARGET_MODULES } from '../src/model/types.ts';
import type { LlamaConfig } from '../src/model/types.ts';
import { AdapterStore, AlteredFileError, type AdapterRecord } from '../src/registry/adapter-store.ts';
import { entryToFloat32, parseSafetensors, serializeSafetensors, type SafetensorsTensorInput } from '../src/formats/safetensors.ts';
import { layOutForSlot, type SlotReadyAdapter } from '../src/runtime/slot-ready-adapter.ts';
import { STORIES_HF_DIR } from './support/models.ts';
import { stopAfterTest, tempStoreRoot } from './support/store-dirs.ts';

const SLOT_RANK = 16;
let base: LlamaConfig;

before(async () => {
  base = configFromHuggingFace(JSON.parse(await readFile(join(STORIES_HF_DIR, 'config.json'), 'utf8')));
});

/** A started store on a temporary root, and a layout cache directory beside it. */
async function storeAndCacheDir(t: TestContext) {
  const root = await tempStoreRoot(t, 'layout-cache-');
  const validator = adapterValidator(base, SLOT_RANK);
  const store = stopAfterTest(
    t,
    new AdapterStore<AdapterSummary>({
      root,
      validate: validator,
      readSummary: (value) => readAdapterSummary(value, { maxLoraRank: SLOT_RANK, maxPositions: base.maxPositions }),
    }),
  );
  await store.start();
  return { store, cacheDir: join(dirname(root), 'layouts') };
}

const refOf = (record: AdapterRecord<unknown>) => ({ key: adapterCacheKey(record), path: record.path, files: record.files });

/** Loads through a fresh loader (a new engine: nothing verified in memory), counting the pauses between phases. */
async function loadCounting(cache: LayoutCache, record: AdapterRecord<unknown>): Promise<{ ready: SlotReadyAdapter; pauses: number }> {
  let pauses = 0;
  const ready = await adapterLoaderFor(base, SLOT_RANK, cache)(refOf(record), async () => void pauses++);
  await cache.settled();
  return { ready, pauses };
}

/** The layout made afresh from the version's files, with no cache involved. */
async function freshLayout(record: AdapterRecord<unknown>): Promise<SlotReadyAdapter> {
  return layOutForSlot(base, SLOT_RANK, await loadAdapter(record.path, base));
}

function assertSameLayout(actual: SlotReadyAdapter, expected: SlotReadyAdapter): void {
  const { blocks, prompt, ...rest } = actual;
  const { blocks: expectedBlocks, prompt: expectedPrompt, ...expectedRest } = expected;
  assert.deepEqual(rest, expectedRest);
  assert.deepEqual(prompt, expectedPrompt);
  assert.deepEqual([...blocks.keys()].sort(), [...expectedBlocks.keys()].sort());
  for (const [name, data] of expectedBlocks) assert.deepEqual(blocks.get(name), data, name);
}

const entries = async (dir: string) => (await readdir(dir)).filter((name) => name.endsWith(ENTRY_SUFFIX));

test('every family is read back in one phase, equal to its layout made afresh, by a later loader too', async (t) => {
  const { store, cacheDir } = await storeAndCacheDir(t);
  const versions = {
    lora: loraAdapterFiles(randomLoraAdapter(base, { rank: 8, targetModules: ['q_proj', 'down_proj'], seed: 1, std: 0.2 })),
    ia3: ia3AdapterFiles(randomIa3Adapter(base, { targetModules: ['k_proj', 'down_proj'], feedforwardModules: ['down_proj'], seed: 2 })),
    prompt: promptLearningAdapterFiles(randomPromptLearningAdapter(base, { peftType: 'PROMPT_TUNING', virtualTokens: 3, seed: 3 }), base),
    prefix: promptLearningAdapterFiles(randomPromptLearningAdapter(base, { peftType: 'PREFIX_TUNING', virtualTokens: 2, seed: 4 }), base),
    bottleneck: bottleneckAdapterFiles(randomBottleneckAdapter(base, { kind: 'par_bn', seed: 5, options: { reduction_factor: 16 } }), base),
  };
  for (const [name, files] of Object.entries(versions)) {
    const record = await store.publish('acme', name, files);
    const expected = await freshLayout(record);

    const first = await loadCounting(new LayoutCache({ dir: cacheDir, maxBytes: 1 << 30 }, base, SLOT_RANK), record);
    assert.equal(first.pauses, 2, `${name}: the first load verifies, parses and lays out, pausing between`);
    assertSameLayout(first.ready, expected);

    // A new cache object and loader, as after a restart: the layout comes from disk in one phase.
    const again = await loadCounting(new LayoutCache({ dir: cacheDir, maxBytes: 1 << 30 }, base, SLOT_RANK), record);
    assert.equal(again.pauses, 0, `${name}: read back in one phase`);
    assertSameLayout(again.ready, expected);
  }
  assert.equal((await entries(cacheDir)).length, Object.keys(versions).length);
});

test('a changed file is never served from its old layout: the load verifies it again and refuses it', async (t) => {
  const { store, cacheDir } = await storeAndCacheDir(t);
  const record = await store.publish('acme', 'bot', loraAdapterFiles(randomLoraAdapter(base, { rank: 4, targetModules: ['v_proj'], seed: 6, std: 0.2 })));
  const weights = join(record.path, 'adapter_model.safetensors');
  const cache = new LayoutCache({ dir: cacheDir, maxBytes: 1 << 30 }, base, SLOT_RANK);
  assert.equal((await loadCounting(cache, record)).pauses, 2);

  // Same inode and size; the write gives it a new mtime, so a new identity.
  const bytes = await readFile(weights);
  bytes[bytes.length - 3] ^= 0x40;
  await writeFile(weights, bytes);
  await assert.rejects(adapterLoaderFor(base, SLOT_RANK, new LayoutCache({ dir: cacheDir, maxBytes: 1 << 30 }, base, SLOT_RANK))(refOf(record)), AlteredFileError);
});

test('a damaged or foreign entry is removed and made again from the version', async (t) => {
  const { store, cacheDir } = await storeAndCacheDir(t);
  const record = await store.publish('acme', 'bot', loraAdapterFiles(randomLoraAdapter(base, { rank: 4, targetModules: ['o_proj'], seed: 7, std: 0.2 })));
  const expected = await freshLayout(record);
  const cache = () => new LayoutCache({ dir: cacheDir, maxBytes: 1 << 30 }, base, SLOT_RANK);
  await loadCounting(cache(), record);
  const [entry] = await entries(cacheDir);
  const path = join(cacheDir, entry);
  const good = await readFile(path);

  const otherVersion = await store.publish('acme', 'other', loraAdapterFiles(randomLoraAdapter(base, { rank: 4, targetModules: ['o_proj'], seed: 8, std: 0.2 })));
  await loadCounting(cache(), otherVersion);
  const foreign = (await entries(cacheDir)).find((name) => name !== entry)!;

  const damages: [string, Uint8Array][] = [
    ['truncated', good.subarray(0, good.length - 100)],
    ['garbage', Buffer.from('not a layout')],
    ['one value short', withFirstTensorShort(good)],
    ["another version's layout", await readFile(join(cacheDir, foreign))],
  ];
  for (const [damage, bytes] of damages) {
    await writeFile(path, bytes);
    const { ready, pauses } = await loadCounting(cache(), record);
    assert.equal(pauses, 2, `${damage}: loaded in full`);
    assertSameLayout(ready, expected);
    assert.deepEqual(await readFile(path), good, `${damage}: the entry is made again`);
  }
});

test('the cache keeps within its bytes, dropping the least recently used entries, and clears leftover partial writes', async (t) => {
  const { store, cacheDir } = await storeAndCacheDir(t);
  const records = [];
  for (let i = 0; i < 3; i++) {
    records.push(await store.publish('acme', `bot-${i}`, loraAdapterFiles(randomLoraAdapter(base, { rank: 4, targetModules: ['q_proj'], seed: 10 + i, std: 0.2 }))));
  }
  const probe = new LayoutCache({ dir: join(cacheDir, '..', 'probe'), maxBytes: 1 << 30 }, base, SLOT_RANK);
  await loadCounting(probe, records[0]);
  const entryBytes = (await stat(join(cacheDir, '..', 'probe', (await entries(join(cacheDir, '..', 'probe')))[0]))).size;

  // Room for two entries and not three (entries differ by a few bytes: their labels hold stat times).
  const maxBytes = 2.5 * entryBytes;
  const cache = new LayoutCache({ dir: cacheDir, maxBytes }, base, SLOT_RANK);
  await loadCounting(cache, records[0]);
  await loadCounting(cache, records[1]);
  // Used again, bot-0 is now more recent than bot-1, so the third entry pushes out bot-1.
  assert.equal((await loadCounting(cache, records[0])).pauses, 0);
  await loadCounting(cache, records[2]);
  assert.equal((await entries(cacheDir)).length, 2);
  assert.equal((await loadCounting(cache, records[0])).pauses, 0, 'bot-0 kept');
  assert.equal((await loadCounting(cache, records[2])).pauses, 0, 'bot-2 kept');

  // A restart reads the directory: a partial write left by a crash is removed, and the bound holds across starts.
  await writeFile(join(cacheDir, '.partial.layout.safetensors.0123456789ab.tmp'), 'partial');
  const restarted = new LayoutCache({ dir: cacheDir, maxBytes }, base, SLOT_RANK);
  assert.equal((await loadCounting(restarted, records[1])).pauses, 2, 'bot-1 was dropped');
  const left = await readdir(cacheDir);
  assert.equal(left.length, 2, left.join());
  assert.ok(left.every((name) => name.endsWith(ENTRY_SUFFIX)));
});

/** The entry with its first tensor one value short, everything else (its label too) as it was. */
function withFirstTensorShort(file: Uint8Array): Uint8Array {
  const { metadata, tensors } = parseSafetensors(new Uint8Array(file));
  const inputs: Record<string, SafetensorsTensorInput> = {};
  [...tensors].forEach(([name, entry], index) => {
    const data = index === 0 ? entryToFloat32(entry).subarray(1) : entryToFloat32(entry);
    inputs[name] = { dtype: 'F32', shape: [data.length], data };
  });
  return serializeSafetensors(inputs, metadata);
}

test('a layout of every LoRA module is read back into a buffer faulted in ahead, equal to its layout made afresh', async (t) => {
  const { store, cacheDir } = await storeAndCacheDir(t);
  const full = await store.publish('acme', 'full', loraAdapterFiles(randomLoraAdapter(base, { rank: 4, targetModules: [...LORA_TARGET_MODULES], seed: 11, std: 0.2 })));
  const partial = await store.publish('acme', 'partial', loraAdapterFiles(randomLoraAdapter(base, { rank: 4, targetModules: ['q_proj'], seed: 12, std: 0.2 })));
  const expected = { full: await freshLayout(full), partial: await freshLayout(partial) };
  const options = { dir: cacheDir, maxBytes: 1 << 30 };
  for (const record of [full, partial]) await loadCounting(new LayoutCache(options, base, SLOT_RANK), record);

  const buffers = new ReadBuffers(1, expected.full.byteSize);
  let pieces = 0;
  while (buffers.prefault(64 * 1024)) pieces++;
  assert.equal(buffers.available, 1);
  assert.ok(pieces >= Math.floor(buffers.size / (64 * 1024)), `faulted in a piece at a time (${pieces} pieces)`);
  const bufferOf = (ready: SlotReadyAdapter) => [...ready.blocks.values()][0].buffer;
  const readBack = (record: AdapterRecord<unknown>) => loadCounting(new LayoutCache(options, base, SLOT_RANK, (bytes) => buffers.take(bytes)), record);

  // A smaller layout would leave most of the buffer unused: it gets one of its own size.
  const small = await readBack(partial);
  assert.equal(small.pauses, 0);
  assertSameLayout(small.ready, expected.partial);
  assert.equal(buffers.available, 1);
  assert.ok(bufferOf(small.ready).byteLength < buffers.size / 2);

  const pooled = await readBack(full);
  assert.equal(pooled.pauses, 0);
  assertSameLayout(pooled.ready, expected.full);
  assert.equal(bufferOf(pooled.ready).byteLength, buffers.size, 'read into the buffer faulted in ahead');
  assert.equal(buffers.available, 0);

  // With the pool empty, a read takes a buffer of its own again, until the pool is filled again.
  const fresh = await readBack(full);
  assertSameLayout(fresh.ready, expected.full);
  assert.ok(bufferOf(fresh.ready).byteLength < buffers.size);
  while (buffers.prefault(1 << 20));
  assert.equal(buffers.available, 1);
});

test("the loader thread warms up on an adapter generated in memory, fills its read buffers, and reads a full layout back into one", async (t) => {
  const { store, cacheDir } = await storeAndCacheDir(t);
  const full = await store.publish('acme', 'full', loraAdapterFiles(randomLoraAdapter(base, { rank: 4, targetModules: [...LORA_TARGET_MODULES], seed: 13, std: 0.2 })));
  const expected = await freshLayout(full);
  const loader = new AdapterLoaderThread({ config: base, slotRank: SLOT_RANK, layoutCache: { dir: cacheDir, maxBytes: 1 << 30 }, readBuffers: 1 });
  t.after(() => loader.close());
  // The first load makes the layout and keeps it on disk, off the load.
  assertSameLayout(await loader.load(refOf(full)), expected);
  while (!(await readdir(cacheDir).catch(() => [])).some((name) => name.endsWith(ENTRY_SUFFIX))) await new Promise((resolve) => setTimeout(resolve, 10));
  // Its pool exists only once the warm-up has laid out a full layout: without it, there is nothing to fill.
  let pieces = 0;
  while (await loader.prefault(64 * 1024)) pieces++;
  assert.ok(pieces > 0, 'the read buffers were faulted in');
  const readBack = await loader.load(refOf(full));
  assertSameLayout(readBack, expected);
  const pooledSize = new ReadBuffers(1, expected.byteSize).size;
  assert.equal([...readBack.blocks.values()][0].buffer.byteLength, pooledSize, 'read back into the buffer faulted in ahead');
});

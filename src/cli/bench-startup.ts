/**
 * The start-up section of `npm run bench` (and `npm run bench:startup`): how long the engine takes to be ready on
 * the benchmark model with an empty compiled-model cache (cold) and with the entry the cold start wrote (warm: the
 * compiled model and its sessions' saved optimized form), with the parts of each; and how much a store of 10,000 real adapter versions adds to the adapter store's start against
 * an empty store, listed from the catalog snapshot the last scan saved (as every start after the first) and by a
 * full scan (the first start, or one whose snapshot is unusable). The cases run interleaved in this run; the
 * figures are differences and ratios of them. `dropCaches` empties the page cache before each store start, as after
 * a reboot.
 */
import { existsSync } from 'node:fs';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { loraAdapterFiles } from '../adapters/lora-writer.ts';
import { Engine } from '../engine/engine.ts';
import type { SessionSource } from '../runtime/saved-sessions.ts';
import type { EngineOptions } from '../engine/protocol.ts';
import { adapterValidator } from '../gateway/adapter-validator.ts';
import { readAdapterSummary } from '../gateway/model-resolver.ts';
import { BENCH_MODEL_DIR } from '../model/bench-model.ts';
import { SMOLLM2_135M_SHAPE } from '../model/random-model.ts';
import { AdapterStore } from '../registry/adapter-store.ts';
import { CATALOG_SNAPSHOT_FILE } from '../registry/catalog-snapshot.ts';
import { serializeManifest, type FileDigest } from '../registry/manifest.ts';
import { median, round } from './bench-stats.ts';

export const STORED_ADAPTERS = 10_000;
const MAX_LORA_RANK = 16;

export interface StartupBenchOptions {
  engineOptions: EngineOptions;
  benchDir: string;
  trials: number;
  log: (message: string) => void;
  /** Only the adapter store's part, without the engine's starts: a short run that fits a quiet window. */
  storeOnly?: boolean;
  /** Empty the page cache before each store start (needs root: it writes /proc/sys/vm/drop_caches). */
  dropCaches?: boolean;
}

/**
 * `count` published versions of genuine PEFT LoRA adapters for the benchmark model (rank 1 on one projection of
 * one layer: listing cost does not depend on the weights' size), spread over 10 tenants, each with the manifest
 * the store's publisher writes. Written once; a marker file records that the store is complete.
 */
async function ensureLargeStore(root: string, count: number, log: (message: string) => void): Promise<void> {
  const marker = join(root, `.complete-${count}`);
  if (existsSync(marker)) return;
  log(`writing a store of ${count} adapter versions into ${root} (once) ...`);
  const hidden = SMOLLM2_135M_SHAPE.hiddenSize;
  const files = loraAdapterFiles({
    r: 1,
    alpha: 1,
    targetModules: ['q_proj'],
    layersToTransform: [0],
    modules: [{ layer: 0, module: 'q_proj', A: new Float32Array(hidden).fill(0.01), B: new Float32Array(hidden).fill(0.01) }],
  });
  const digests: Record<string, FileDigest> = {};
  for (const [name, bytes] of files) digests[name] = { size: bytes.byteLength, sha256: createHash('sha256').update(bytes).digest('hex') };
  const first = join(root, 'tenant-0', 'adapter-0', '1');
  await writeVersionFiles(first, files);
  // The summary the gateway's validator gives these files, as a publish would record it.
  const summary = await adapterValidator(SMOLLM2_135M_SHAPE, MAX_LORA_RANK)(first);
  const manifest = serializeManifest({ version: '1', publishedAt: new Date(0).toISOString(), files: digests, summary });
  for (let i = 0; i < count; i++) {
    const dir = join(root, `tenant-${i % 10}`, `adapter-${i}`, '1');
    await writeVersionFiles(dir, files);
    await writeFile(join(dir, 'manifest.json'), manifest);
  }
  await writeFile(marker, '');
}

async function writeVersionFiles(dir: string, files: Map<string, Uint8Array>): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const [name, bytes] of files) await writeFile(join(dir, name), bytes);
}

/** Writes dirty pages out and empties the page cache, dentries and inodes, so the next reads go to the disk. */
async function dropPageCache(): Promise<void> {
  execFileSync('sync');
  try {
    await writeFile('/proc/sys/vm/drop_caches', '3');
  } catch (err) {
    throw new Error(`--drop-caches needs to write /proc/sys/vm/drop_caches (run as root): ${(err as Error).message}`);
  }
}

interface StoreStart {
  /** Until `start()` resolved: the gateway serves the listing from then on. */
  startSeconds: number;
  /** Until the scan that checks the listing against the disk ended (the same scan, when start waited for it). */
  scannedSeconds: number;
}

/** How long the store takes to list `root`, as the gateway configures it; the validator must never run. */
async function storeStart(root: string, expected: number, from: 'snapshot' | 'scan', dropCaches: boolean): Promise<StoreStart> {
  if (from === 'scan') await rm(join(root, CATALOG_SNAPSHOT_FILE), { force: true });
  if (dropCaches) await dropPageCache();
  const store = new AdapterStore({
    root,
    validate: async () => {
      throw new Error('listing must not need the validator');
    },
    readSummary: (value) => readAdapterSummary(value, { maxLoraRank: MAX_LORA_RANK, maxPositions: SMOLLM2_135M_SHAPE.maxPositions }),
  });
  const started = performance.now();
  await store.start();
  const startSeconds = (performance.now() - started) / 1000;
  if (store.list().length !== expected) throw new Error(`the benchmark store's start listed ${store.list().length} versions, expected ${expected}`);
  await store.stop();
  const scannedSeconds = (performance.now() - started) / 1000;
  if (store.listInvalid().length > 0) throw new Error(`the benchmark store has invalid versions: ${store.listInvalid()[0].error}`);
  if (store.list().length !== expected) throw new Error(`the benchmark store listed ${store.list().length} versions, expected ${expected}`);
  return { startSeconds, scannedSeconds };
}

/**
 * Seconds from `npm start` to `/ready` answering 200: the benchmark model with a warm compiled-model cache, and the
 * store of 10,000 versions. `env` is added to this process's environment.
 */
async function gatewayReadySeconds(env: Record<string, string>): Promise<number> {
  const started = performance.now();
  // Its own process group, so that stopping it stops node too (npm does not pass signals on).
  const child = spawn('npm', ['start', '--silent'], { env: { ...process.env, ...env }, detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = once(child, 'exit');
  try {
    const url = await new Promise<string>((resolve, reject) => {
      const lines: string[] = [];
      createInterface({ input: child.stderr! }).on('line', (line) => {
        lines.push(line);
        let entry: { msg?: string; url?: string } = {};
        try {
          entry = JSON.parse(line);
        } catch {
          // Not one of the gateway's log lines.
        }
        if (entry?.msg === 'serving' && entry.url) resolve(entry.url);
      });
      void exited.then(() => reject(new Error(`npm start exited before serving:\n${lines.slice(-20).join('\n')}`)));
    });
    while (!(await fetch(`${url}/ready`).then((response) => response.ok, () => false))) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return (performance.now() - started) / 1000;
  } finally {
    if (child.exitCode === null) process.kill(-child.pid!, 'SIGTERM');
    await exited;
  }
}

interface EngineStart {
  seconds: number;
  cached: boolean;
  sessions: SessionSource;
  parts: Record<string, number>;
}

async function engineStart(engineOptions: EngineOptions): Promise<EngineStart> {
  const started = performance.now();
  const engine = await Engine.start(engineOptions);
  const seconds = (performance.now() - started) / 1000;
  const { cached, sessions, ms } = engine.info.startup;
  await engine.close();
  return { seconds, cached, sessions, parts: ms };
}

export async function measureStartup(options: StartupBenchOptions) {
  const { trials, log, benchDir } = options;
  const large = join(benchDir, `store-${STORED_ADAPTERS}-peft`);
  const empty = join(benchDir, 'store-empty');
  await ensureLargeStore(large, STORED_ADAPTERS, log);
  await mkdir(empty, { recursive: true });

  const engine = options.storeOnly ? '' : 'engine ready on the benchmark model, cold and warm compiled-model cache; ';
  log(`start-up: ${engine}listing ${STORED_ADAPTERS} stored adapters against none, interleaved ...`);
  const cold: EngineStart[] = [];
  const warm: EngineStart[] = [];
  const gateway = { withHugePages: [] as number[], without: [] as number[] };
  const gatewayEnv = {
    PORT: '0',
    HOST: '127.0.0.1',
    MODEL_PATH: BENCH_MODEL_DIR,
    ADAPTERS_DIR: large,
    MODEL_CACHE_DIR: join(benchDir, 'model-cache-gateway'),
    TRAINER: 'external',
  };
  // Fills the gateway's compiled-model cache and the store's snapshot, so every timed start is a warm one.
  if (!options.storeOnly) await gatewayReadySeconds(gatewayEnv);
  const emptyStore: StoreStart[] = [];
  const scanned: StoreStart[] = [];
  const restored: StoreStart[] = [];
  const dropCaches = options.dropCaches ?? false;
  for (let i = 0; i < trials; i++) {
    emptyStore.push(await storeStart(empty, 0, 'scan', dropCaches));
    // The full scan saves the snapshot the start after it restores.
    scanned.push(await storeStart(large, STORED_ADAPTERS, 'scan', dropCaches));
    restored.push(await storeStart(large, STORED_ADAPTERS, 'snapshot', dropCaches));
    if (options.storeOnly) continue;
    const cacheDir = await mkdtemp(join(benchDir, 'model-cache-'));
    try {
      cold.push(await engineStart({ ...options.engineOptions, compiledModelCacheDir: cacheDir }));
      warm.push(await engineStart({ ...options.engineOptions, compiledModelCacheDir: cacheDir }));
    } finally {
      await rm(cacheDir, { recursive: true, force: true });
    }
    if (cold.at(-1)!.cached || !warm.at(-1)!.cached) throw new Error('the cold start must compile and the warm start must read the cache');
    if (warm.at(-1)!.sessions !== 'saved') throw new Error(`the warm start's sessions must open from their saved form, not ${warm.at(-1)!.sessions}`);
    // As `npm start` runs it (GLIBC_TUNABLES asks malloc for transparent huge pages), and with that setting emptied.
    gateway.withHugePages.push(await gatewayReadySeconds(gatewayEnv));
    gateway.without.push(await gatewayReadySeconds({ ...gatewayEnv, GLIBC_TUNABLES: '' }));
  }
  const added = (starts: StoreStart[]) => starts.map((start, i) => start.startSeconds - emptyStore[i].startSeconds);
  const seconds = (values: number[], digits = 2) => values.map((s) => round(s, digits));
  const store = {
    stored_adapters: STORED_ADAPTERS,
    page_cache: dropCaches ? 'dropped before each start' : 'warm',
    store_start_s_empty_runs: seconds(emptyStore.map((s) => s.startSeconds), 3),
    // What a start adds: from the snapshot (every start after the first) and by the full scan.
    startup_added_by_stored_adapters_s: round(median(added(restored)), 2),
    startup_added_by_stored_adapters_s_runs: seconds(added(restored)),
    startup_added_without_snapshot_s: round(median(added(scanned)), 2),
    startup_added_without_snapshot_s_runs: seconds(added(scanned)),
    // Until the background scan after a start from the snapshot had checked every version.
    store_snapshot_checked_s_runs: seconds(restored.map((s) => s.scannedSeconds)),
  };
  if (options.storeOnly) return store;
  const ratios = warm.map((w, i) => w.seconds / cold[i].seconds);
  const hugePageRatios = gateway.withHugePages.map((s, i) => s / gateway.without[i]);
  return {
    // From `npm start` to /ready, warm compiled-model cache, 10,000 stored adapters (target <= 5 s).
    gateway_ready_s: round(median(gateway.withHugePages), 2),
    gateway_ready_s_runs: gateway.withHugePages.map((s) => round(s, 2)),
    gateway_ready_s_without_huge_pages_runs: gateway.without.map((s) => round(s, 2)),
    gateway_ready_huge_pages_over_without: round(median(hugePageRatios), 2),
    engine_ready_s_cold_cache: round(median(cold.map((c) => c.seconds)), 2),
    engine_ready_s_warm_cache: round(median(warm.map((w) => w.seconds)), 2),
    engine_ready_warm_over_cold: round(median(ratios), 2),
    engine_ready_warm_over_cold_runs: ratios.map((r) => round(r, 2)),
    engine_ready_s_cold_cache_runs: cold.map((c) => round(c.seconds, 2)),
    engine_ready_s_warm_cache_runs: warm.map((w) => round(w.seconds, 2)),
    // The parts of the last trial's starts, in milliseconds (the rest of `seconds` is the worker's own start).
    engine_parts_ms_cold_cache: cold.at(-1)!.parts,
    engine_parts_ms_warm_cache: warm.at(-1)!.parts,
    ...store,
  };
}

/**
 * The stall-free section of `npm run bench`: what newcomers do to streams already decoding, how much later a
 * never-used adapter gives its first token than a resident one, and what a layout kept on disk saves a cold load.
 * Every figure is a ratio or a difference between cases run interleaved in this run. (Start-up is measured by
 * bench-startup.ts.)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ADAPTER_CONFIG_FILE } from '../adapters/adapter-files.ts';
import { ADAPTER_WEIGHTS_FILE } from '../adapters/lora.ts';
import { adapterLoaderFor } from '../engine/adapter-loader.ts';
import { Engine } from '../engine/engine.ts';
import { LayoutCache } from '../engine/layout-cache.ts';
import { DEFAULT_PREFILL_TOKEN_BUDGET, type AdapterRef, type EngineOptions } from '../engine/protocol.ts';
import { SMOLLM2_135M_SHAPE } from '../model/random-model.ts';
import { digestFile, type FileDigest } from '../registry/store-files.ts';
import { median, round } from './bench-stats.ts';
import { measureFirstBursts } from './bench-first-burst.ts';
import { GREEDY, prompt } from './bench-workloads.ts';

const RUNNING = 8;
const ARRIVING = 8;

export interface StallBenchOptions {
  engineOptions: EngineOptions;
  /** r=16 adapters on disk, at least ARRIVING + 1 of them; each trial loads them under keys never used before. */
  adapters: AdapterRef[];
  trials: number;
  log: (message: string) => void;
}

let freshKeys = 0;
/**
 * The same files (and checksums) under a key the engine has never seen: a cold load from the page cache, its
 * checksums verified as on the gateway's first load of a version.
 */
function neverUsed(ref: AdapterRef): AdapterRef {
  return { ...ref, key: `${ref.key}#cold-${++freshKeys}` };
}

/** The refs with their files' sizes and checksums, as the gateway passes a published version's manifest. */
async function withChecksums(refs: AdapterRef[]): Promise<AdapterRef[]> {
  return Promise.all(
    refs.map(async (ref) => {
      const files: Record<string, FileDigest> = {};
      for (const name of [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE]) files[name] = (await digestFile(join(ref.path, name)))!;
      return { ...ref, files };
    }),
  );
}

/** Tokens each running stream decodes before its gaps count: the first ones come while the streams prefill. */
const SETTLING_TOKENS = 4;
/** Undisturbed gaps per running stream before the newcomers arrive; their median is the ratios' denominator. */
const UNDISTURBED_GAPS = 32;

/**
 * RUNNING base-model streams decode; once each has SETTLING_TOKENS + UNDISTURBED_GAPS tokens, ARRIVING requests
 * arrive at once. Returns the running streams' longest inter-token gap from the arrival until every newcomer has
 * its first token, over their median gap before the arrival (once all of them decode: a gap undisturbed by any
 * newcomer), and their median gap in that window over the same (what a typical step of the burst costs, apart
 * from one-off slow steps); that undisturbed median, and the newcomers' times to first token.
 */
async function burst(engine: Engine, newcomers: { adapter: AdapterRef | null; promptIds: number[] }[]) {
  const times: number[][] = Array.from({ length: RUNNING }, () => []);
  let arrive!: () => void;
  const arrived = new Promise<void>((resolve) => (arrive = resolve));
  const controller = new AbortController();
  const streams = times.map((t, i) =>
    engine
      .generate({
        promptIds: prompt(24, i),
        adapter: null,
        sampling: GREEDY,
        maxTokens: 1000,
        stopTokenIds: [],
        signal: controller.signal,
        onToken: () => {
          t.push(performance.now());
          if (times.every((s) => s.length >= SETTLING_TOKENS + UNDISTURBED_GAPS)) arrive();
        },
      })
      .catch(() => undefined),
  );
  await arrived;
  const arrival = performance.now();
  const ttft = await Promise.all(
    newcomers.map(async (newcomer) => {
      let first = 0;
      await engine.generate({
        ...newcomer,
        sampling: GREEDY,
        maxTokens: 4,
        stopTokenIds: [],
        onToken: () => (first ||= performance.now()),
      });
      return first - arrival;
    }),
  );
  const until = arrival + Math.max(...ttft);
  controller.abort();
  await Promise.all(streams);
  const settled = Math.max(...times.map((t) => t[SETTLING_TOKENS - 1]));
  // Each gap with the time it started.
  const gaps = times.flatMap((t) => t.slice(1).map((x, i) => [t[i], x] as const));
  const undisturbed = median(gaps.filter(([from, to]) => from >= settled && to <= arrival).map(([from, to]) => to - from));
  const during = gaps.filter(([from]) => from >= arrival - 1 && from <= until).map(([from, to]) => to - from);
  return { maxOverMedian: Math.max(...during) / undisturbed, medianDuringOverMedian: median(during) / undisturbed, undisturbedGapMs: undisturbed, ttftMs: ttft };
}

/** Time to first token of one request alone, on an adapter resident in a slot or never used before. */
async function firstToken(engine: Engine, adapter: AdapterRef): Promise<number> {
  const started = performance.now();
  let first = 0;
  await engine.generate({ promptIds: prompt(24, 99), adapter, sampling: GREEDY, maxTokens: 2, stopTokenIds: [], onToken: () => (first ||= performance.now()) });
  return first - started;
}

/**
 * The stall figures, on one engine: each trial interleaves a burst of cold-adapter requests, a burst of
 * 128-token prompts, and a lone request on a resident then a never-used adapter. Times to first token are also
 * given in running decode gaps (their undisturbed median), which compares across runs and prefill budgets.
 */
export async function measureStalls(options: StallBenchOptions) {
  const { trials, log } = options;
  // Page cache: the adapters' files are read once (here, to checksum them), as "files in the page cache" in the
  // targets assumes.
  const adapters = await withChecksums(options.adapters);
  log(`stalls: ${RUNNING} streams decoding while ${ARRIVING} requests arrive (cold adapters / 128-token prompts), interleaved ...`);
  const engine = await Engine.start(options.engineOptions);
  let stalls;
  try {
    const cold = [];
    const long = [];
    const coldTtft: number[] = [];
    const residentTtft: number[] = [];
    const resident = adapters[ARRIVING];
    await firstToken(engine, resident);
    for (let i = 0; i < trials; i++) {
      cold.push(await burst(engine, adapters.slice(0, ARRIVING).map((ref, j) => ({ adapter: neverUsed(ref), promptIds: prompt(24, 50 + j) }))));
      long.push(await burst(engine, Array.from({ length: ARRIVING }, (_, j) => ({ adapter: null, promptIds: prompt(128, 70 + j) }))));
      residentTtft.push(await firstToken(engine, resident));
      coldTtft.push(await firstToken(engine, neverUsed(adapters[i % ARRIVING])));
    }
    const ratios = (runs: { maxOverMedian: number }[]) => runs.map((r) => round(r.maxOverMedian, 2));
    const typical = (runs: { medianDuringOverMedian: number }[]) => runs.map((r) => round(r.medianDuringOverMedian, 2));
    const inGaps = (runs: { ttftMs: number[]; undisturbedGapMs: number }[]) => round(median(runs.flatMap((r) => r.ttftMs.map((t) => t / r.undisturbedGapMs))), 1);
    const coldPenalty = coldTtft.map((c, i) => c - residentTtft[i]);
    stalls = {
      prefill_token_budget: options.engineOptions.prefillTokenBudget ?? DEFAULT_PREFILL_TOKEN_BUDGET,
      thread_spinning: options.engineOptions.threadSpinning ?? true,
      stall_cold_adapters_max_gap_over_median: round(median(cold.map((r) => r.maxOverMedian)), 2),
      stall_cold_adapters_runs: ratios(cold),
      stall_cold_adapters_median_gap_during_over_median: typical(cold),
      stall_long_prompts_max_gap_over_median: round(median(long.map((r) => r.maxOverMedian)), 2),
      stall_long_prompts_runs: ratios(long),
      stall_long_prompts_median_gap_during_over_median: typical(long),
      running_undisturbed_median_gap_ms: round(median([...cold, ...long].map((r) => r.undisturbedGapMs))),
      newcomer_ttft_ms_cold_adapters_median: Math.round(median(cold.flatMap((r) => r.ttftMs))),
      newcomer_ttft_ms_long_prompts_median: Math.round(median(long.flatMap((r) => r.ttftMs))),
      newcomer_ttft_in_running_gaps_cold_adapters: inGaps(cold),
      newcomer_ttft_in_running_gaps_long_prompts: inGaps(long),
      ttft_cold_minus_resident_ms: Math.round(median(coldPenalty)),
      ttft_cold_minus_resident_ms_runs: coldPenalty.map(Math.round),
    };
  } finally {
    await engine.close();
  }
  log('cold loads: made in full against read back from the layout cache, interleaved ...');
  const readBack = await layoutReadBack(adapters, options.engineOptions.maxLoraRank);
  return { ...stalls, ...readBack, ...(await measureFirstBursts(options.engineOptions, adapters, trials, log)) };
}

/**
 * What a layout kept on disk (layout-cache.ts) saves each cold load: a load made in full (checksums, parsing,
 * validation, slot layout) against the same version read back from the cache, adapter by adapter, on this thread.
 */
async function layoutReadBack(adapters: AdapterRef[], slotRank: number) {
  const dir = await mkdtemp(join(tmpdir(), 'bench-layouts-'));
  const cache = new LayoutCache({ dir, maxBytes: 2 ** 40 }, SMOLLM2_135M_SHAPE, slotRank);
  const full: number[] = [];
  const readBack: number[] = [];
  try {
    for (const ref of adapters) {
      const started = performance.now();
      await adapterLoaderFor(SMOLLM2_135M_SHAPE, slotRank)(ref);
      full.push(performance.now() - started);
      // A loader with the cache makes the layout and keeps it; the next one reads it back.
      await adapterLoaderFor(SMOLLM2_135M_SHAPE, slotRank, cache)(ref);
      await cache.settled();
      const again = performance.now();
      await adapterLoaderFor(SMOLLM2_135M_SHAPE, slotRank, cache)(ref);
      readBack.push(performance.now() - again);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return {
    cold_load_in_full_ms: round(median(full), 1),
    cold_load_read_back_ms: round(median(readBack), 1),
    cold_load_read_back_over_in_full: round(median(readBack) / median(full), 3),
  };
}

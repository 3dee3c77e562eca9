/**
 * How close multi-LoRA decoding runs to the memory floor: the time adapters add to a 16-row decode step, divided
 * by the time this machine takes to read the distinct adapters' weights once, both measured in the same run.
 *
 * Two mixes against 16 base-model rows: 16 rows on 16 distinct adapters, and a Zipf-like mix of 16 rows over 4
 * adapters (7/4/3/2 rows, interleaved in the batch). Each trial times one pass of each case back to back in a
 * rotating order, plus the bandwidth probes, and each ratio is computed within its trial; the report gives the
 * median over trials and their spread, since other processes on the machine make single trials noisy.
 *
 * Bandwidth probes, so that the floor is not flattered: the best of three ways onnxruntime can read a 256 MiB
 * float32 tensor (eight times the last-level cache of the machines this runs on) fed zero-copy from JavaScript,
 * with the decoder session's thread count: ReduceSum along rows, ReduceMax down columns, and a one-row MatMul
 * against it as a `[K, N]` weight (the M=1 kernel the LoRA matmuls of a 16-distinct-adapter step run). Each trial
 * takes the fastest of them as the machine's read bandwidth; the report gives each probe's median too.
 *
 * The machine is shared, and a busy neighbour stretches any single timing by up to 20×. Beside the wall-clock
 * ratio (the target) the report therefore gives the same ratio over the minimum of each quantity across trials
 * (`ratio_of_minimums`: the least disturbed base pass, adapter pass and probe), and over CPU time
 * (`cpu_ratio_added_vs_floor`: the process's CPU time an adapter pass adds over a base pass, against the CPU time
 * the fastest probe spends reading the same bytes), which other processes do not stretch as they do wall time.
 *
 * Arithmetic can bound a mix before bandwidth does: a segment of M rows does 2·M flops per 4-byte weight, and
 * every segment is padded to the largest, so 7/4/3/2 rows compute 4 × 7 rows against their 4 adapters. The
 * report therefore also gives a compute floor, those flops at the rate onnxruntime's float32 GEMM reaches here
 * (a 256×1024×1024 MatMul probe, timed in the same trials).
 */
import * as ort from 'onnxruntime-node';
import { loadLoraAdapter } from '../adapters/lora.ts';
import { elementCount } from '../formats/tensor-shape.ts';
import { OnnxGraphBuilder } from '../graph/onnx-builder.ts';
import { loadBaseModel } from '../model/load.ts';
import { loraInputShapes } from '../runtime/slot-layout.ts';
import { ModelRunner } from '../runtime/model-runner.ts';
import { median, round } from './bench-stats.ts';

const ROWS = 16;
/** Rows per adapter of the Zipf-like mix. */
const ZIPF_ROWS = [7, 4, 3, 2];
const PROMPT = 16;
const PROBE_BYTES = 256 * 2 ** 20;
/** The GEMM probe: [GEMM_M, GEMM_K] × [GEMM_K, GEMM_N]. */
const [GEMM_M, GEMM_K, GEMM_N] = [256, 1024, 1024];

export interface LoraFloorOptions {
  modelPath: string;
  /** At least 16 adapter directories of one rank. */
  adapterPaths: string[];
  rank: number;
  threads: number;
  /** Whether the decoder's idle threads spin between operators (RunnerOptions.threadSpinning); default true. */
  threadSpinning?: boolean;
  trials: number;
  log: (message: string) => void;
}

/** One timed run: wall-clock and process CPU milliseconds. */
interface Timing {
  ms: number;
  cpuMs: number;
}

type Mix = 'distinct' | 'zipf';

export async function measureLoraFloor(options: LoraFloorOptions) {
  const model = await loadBaseModel(options.modelPath);
  const c = model.config;
  const runner = await ModelRunner.create(model, { maxBatch: ROWS, adapterSlots: ROWS, maxLoraRank: options.rank, maxPositions: 256, threads: options.threads, threadSpinning: options.threadSpinning });
  // The probes keep onnxruntime's default threads whatever the decoder's: one large operator each, which no
  // wake-up between operators slows, so the floor is never made easier to reach.
  const probes = await bandwidthProbes(options.threads);
  const gemm = await gemmProbe(options.threads);
  try {
    const slots: number[] = [];
    for (const [i, path] of options.adapterPaths.slice(0, ROWS).entries()) {
      slots.push(runner.slots.place(`floor-${i}`, await loadLoraAdapter(path, c))!);
    }
    // Rows of one adapter are spread through the batch, as requests arrive, rather than contiguous.
    const zipf = ZIPF_ROWS.flatMap((count, adapter) => new Array<number>(count).fill(slots[adapter]));
    const mixes = {
      base: new Array<number>(ROWS).fill(0),
      distinct: slots,
      zipf: zipf.map((_, row) => zipf[(row * 5) % ROWS]),
    };
    const step = (rowSlots: number[]) => timed(() => runner.forward(0, rowSlots.map((slot, row) => ({ tokens: [1 + row], position: PROMPT, slot }))));
    await runner.forward(0, mixes.base.map((slot, row) => ({ tokens: Array.from({ length: PROMPT }, (_, t) => 1 + row + t), position: 0, slot })));
    for (const mix of Object.values(mixes)) await step(mix); // stacks the adapters before timing

    options.log(`LoRA floor: ${ROWS}-row decode steps, base vs ${ROWS} distinct adapters vs ${ZIPF_ROWS.join('/')} rows over 4, against ${Object.keys(probes).join(', ')} bandwidth probes ...`);
    const bytesPerAdapter = 4 * c.numLayers * Object.values(loraInputShapes(c, options.rank)).reduce((sum, shape) => sum + elementCount(shape), 0);
    const trials: { steps: Record<'base' | Mix, Timing>; probes: Record<string, Timing>; gemmMs: number }[] = [];
    const order = ['base', 'distinct', 'zipf'] as const;
    for (let trial = 0; trial < options.trials; trial++) {
      const steps = {} as Record<'base' | Mix, Timing>;
      // Rotate the order so that no case always follows the probes or another case.
      for (let i = 0; i < order.length; i++) {
        const mix = order[(trial + i) % order.length];
        steps[mix] = await step(mixes[mix]);
      }
      const probeTimes: Record<string, Timing> = {};
      for (const [name, probe] of Object.entries(probes)) probeTimes[name] = await timed(probe);
      trials.push({ steps, probes: probeTimes, gemmMs: (await timed(gemm)).ms });
    }
    const gbPerS = (ms: number) => PROBE_BYTES / ms / 1e6;
    /** The fastest probe of a trial, by wall clock or by CPU time. */
    const bestProbe = (t: (typeof trials)[number], key: keyof Timing) => Math.min(...Object.values(t.probes).map((p) => p[key]));
    const gflopPerS = (t: (typeof trials)[number]) => (2 * GEMM_M * GEMM_K * GEMM_N) / t.gemmMs / 1e6;
    const ratioRange = (ratios: number[]) => ({
      median: round(median(ratios), 3),
      range: [round(Math.min(...ratios), 3), round(Math.max(...ratios), 3)],
    });
    /** `segmentRows`: the rows every segment is padded to, so each adapter's weights meet that many rows. */
    const report = (mix: Mix, adapters: number, segmentRows: number) => {
      const bytes = adapters * bytesPerAdapter;
      const floorMs = (t: (typeof trials)[number], key: keyof Timing) => (bytes / PROBE_BYTES) * bestProbe(t, key);
      const added = (t: (typeof trials)[number], key: keyof Timing) => t.steps[mix][key] - t.steps.base[key];
      const wall = ratioRange(trials.map((t) => added(t, 'ms') / floorMs(t, 'ms')));
      const cpu = ratioRange(trials.map((t) => added(t, 'cpuMs') / floorMs(t, 'cpuMs')));
      const least = (f: (t: (typeof trials)[number]) => number) => Math.min(...trials.map(f));
      const leastAddedMs = least((t) => t.steps[mix].ms) - least((t) => t.steps.base.ms);
      const leastFloorMs = (bytes / PROBE_BYTES) * least((t) => bestProbe(t, 'ms'));
      return {
        adapters,
        adapter_mib: round(bytes / 2 ** 20),
        added_step_ms: round(median(trials.map((t) => added(t, 'ms'))), 2),
        floor_ms: round(median(trials.map((t) => floorMs(t, 'ms'))), 2),
        ratio_added_vs_floor: wall.median,
        ratio_range: wall.range,
        ratio_of_minimums: round(leastAddedMs / leastFloorMs, 3),
        cpu_ratio_added_vs_floor: cpu.median,
        cpu_ratio_range: cpu.range,
        compute_floor_ms: round(median(trials.map((t) => (2 * segmentRows * adapters * (bytesPerAdapter / 4)) / (gflopPerS(t) * 1e6))), 2),
      };
    };
    return {
      rows: ROWS,
      rank: options.rank,
      thread_spinning: options.threadSpinning !== false,
      trials: options.trials,
      read_bandwidth_gb_per_s: round(median(trials.map((t) => gbPerS(bestProbe(t, 'ms'))))),
      probe_gb_per_s: Object.fromEntries(Object.keys(probes).map((name) => [name, round(median(trials.map((t) => gbPerS(t.probes[name].ms))))])),
      gemm_gflop_per_s: round(median(trials.map(gflopPerS))),
      distinct_16: report('distinct', ROWS, 1),
      zipf_7_4_3_2: report('zipf', ZIPF_ROWS.length, Math.max(...ZIPF_ROWS)),
    };
  } finally {
    await runner.close();
  }
}

/** Times one call by wall clock and by the CPU time of the whole process (every onnxruntime thread). */
async function timed(run: () => Promise<unknown>): Promise<Timing> {
  const cpu = process.cpuUsage();
  const start = performance.now();
  await run();
  const ms = performance.now() - start;
  const used = process.cpuUsage(cpu);
  return { ms, cpuMs: (used.user + used.system) / 1000 };
}

/** Sessions that each read PROBE_BYTES once through onnxruntime, by name. */
async function bandwidthProbes(threads: number): Promise<Record<string, () => Promise<unknown>>> {
  const data = new Float32Array(PROBE_BYTES / 4).fill(1);
  /** Reduces `data` as `[rows, n]` along `axis`; the output stays small, since the binding copies outputs. */
  const reduce = (op: string, rows: number, axis: number) => {
    const g = new OnnxGraphBuilder(`read_${op}`);
    const x = g.input('x', 'float32', [rows, 'n']);
    g.output(g.op(op, [x, g.constInt64([axis])], { keepdims: 0 }), 'out', 'float32');
    return session(g, threads, { x: new ort.Tensor('float32', data, [rows, data.length / rows]) });
  };
  const k = 4096;
  const gemv = () => {
    const g = new OnnxGraphBuilder('read_gemv');
    g.output(g.op('MatMul', [g.input('v', 'float32', [1, k]), g.input('w', 'float32', [k, 'n'])]), 'out', 'float32', [1, 'n']);
    return session(g, threads, {
      v: new ort.Tensor('float32', new Float32Array(k).fill(0.5), [1, k]),
      w: new ort.Tensor('float32', data, [k, data.length / k]),
    });
  };
    return {
    // 64 rows, so the row sums split evenly across the threads.
    reduce_sum_rows: await reduce('ReduceSum', 64, 1),
    reduce_max_columns: await reduce('ReduceMax', k, 0),
    gemv: await gemv(),
  };
}

/** Returns a function that runs one float32 GEMM of the probe's shape. */
async function gemmProbe(threads: number): Promise<() => Promise<unknown>> {
  const g = new OnnxGraphBuilder('gemm_rate');
  g.output(g.op('MatMul', [g.input('a', 'float32', [GEMM_M, GEMM_K]), g.input('b', 'float32', [GEMM_K, GEMM_N])]), 'c', 'float32', [GEMM_M, GEMM_N]);
  return session(g, threads, {
    a: new ort.Tensor('float32', new Float32Array(GEMM_M * GEMM_K).fill(0.5), [GEMM_M, GEMM_K]),
    b: new ort.Tensor('float32', new Float32Array(GEMM_K * GEMM_N).fill(0.25), [GEMM_K, GEMM_N]),
  });
}

/** Returns a function that runs `g` once on `feeds`. */
async function session(g: OnnxGraphBuilder, threads: number, feeds: Record<string, ort.Tensor>): Promise<() => Promise<unknown>> {
  const created = await ort.InferenceSession.create(g.build([{ domain: '', version: 21 }]).modelBytes, {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
  });
  return () => created.run(feeds);
}


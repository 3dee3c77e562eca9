/**
 * How close multi-LoRA decoding runs to the memory floor: the time adapters add to a 16-row decode step, divided
 * by the time this machine takes to read the distinct adapters' weights once, both measured in the same run.
 *
 * Two mixes against 16 base-model rows: 16 rows on 16 distinct adapters, and a Zipf-like mix of 16 rows over 4
 * adapters (7/4/3/2 rows, interleaved in the batch). Each trial times one pass of each case back to back in a
 * rotating order, plus the bandwidth probe, and each ratio is computed within its trial; the report gives the
 * median over trials and their spread, since other processes on the machine make single trials noisy.
 *
 * Bandwidth probe: onnxruntime's ReduceSum over a 256 MiB float32 tensor (eight times the last-level cache of
 * the machines this runs on) fed zero-copy from JavaScript, with the decoder session's thread count. It is the
 * same runtime and thread pool reading the same kind of buffer as the adapter stacks, vectorised and doing
 * nothing but read, so it is the rate the LoRA matmuls could reach; a JavaScript loop reads one float at a time
 * on one thread and measured 10–20× slower.
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
import { ModelRunner, type StepRow } from '../runtime/model-runner.ts';
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
  trials: number;
  log: (message: string) => void;
}

export async function measureLoraFloor(options: LoraFloorOptions) {
  const model = await loadBaseModel(options.modelPath);
  const c = model.config;
  const runner = await ModelRunner.create(model, { maxBatch: ROWS, adapterSlots: ROWS, maxLoraRank: options.rank, maxPositions: 256, threads: options.threads });
  const probe = await bandwidthProbe(options.threads);
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
    const step = async (rowSlots: number[]) => {
      const rows: StepRow[] = rowSlots.map((slot, row) => ({ tokens: [1 + row], position: PROMPT, slot }));
      const start = performance.now();
      await runner.forward(0, rows);
      return performance.now() - start;
    };
    await runner.forward(0, mixes.base.map((slot, row) => ({ tokens: Array.from({ length: PROMPT }, (_, t) => 1 + row + t), position: 0, slot })));
    for (const mix of Object.values(mixes)) await step(mix); // stacks the adapters before timing

    options.log(`LoRA floor: ${ROWS}-row decode steps, base vs ${ROWS} distinct adapters vs ${ZIPF_ROWS.join('/')} rows over 4, against a ReduceSum bandwidth probe ...`);
    const bytesPerAdapter = 4 * c.numLayers * Object.values(loraInputShapes(c, options.rank)).reduce((sum, shape) => sum + elementCount(shape), 0);
    const trials: { gbPerS: number; gflopPerS: number; added: Record<'distinct' | 'zipf', number> }[] = [];
    const order = ['base', 'distinct', 'zipf'] as const;
    for (let trial = 0; trial < options.trials; trial++) {
      const ms: Record<string, number> = {};
      // Rotate the order so that no case always follows the probe or another case.
      for (let i = 0; i < order.length; i++) {
        const mix = order[(trial + i) % order.length];
        ms[mix] = await step(mixes[mix]);
      }
      ms.probe = await probe();
      ms.gemm = await gemm();
      trials.push({
        gbPerS: PROBE_BYTES / ms.probe / 1e6,
        gflopPerS: (2 * GEMM_M * GEMM_K * GEMM_N) / ms.gemm / 1e6,
        added: { distinct: ms.distinct - ms.base, zipf: ms.zipf - ms.base },
      });
    }
    /** `segmentRows`: the rows every segment is padded to, so each adapter's weights meet that many rows. */
    const report = (mix: 'distinct' | 'zipf', adapters: number, segmentRows: number) => {
      const floorMs = (t: (typeof trials)[number]) => (adapters * bytesPerAdapter) / (t.gbPerS * 1e6);
      const computeMs = (t: (typeof trials)[number]) => (2 * segmentRows * adapters * (bytesPerAdapter / 4)) / (t.gflopPerS * 1e6);
      const ratios = trials.map((t) => t.added[mix] / floorMs(t));
      return {
        adapters,
        adapter_mib: round((adapters * bytesPerAdapter) / 2 ** 20),
        added_step_ms: round(median(trials.map((t) => t.added[mix])), 2),
        floor_ms: round(median(trials.map(floorMs)), 2),
        ratio_added_vs_floor: round(median(ratios), 3),
        ratio_range: [round(Math.min(...ratios), 3), round(Math.max(...ratios), 3)],
        compute_floor_ms: round(median(trials.map(computeMs)), 2),
      };
    };
    return {
      rows: ROWS,
      rank: options.rank,
      trials: options.trials,
      read_bandwidth_gb_per_s: round(median(trials.map((t) => t.gbPerS))),
      gemm_gflop_per_s: round(median(trials.map((t) => t.gflopPerS))),
      distinct_16: report('distinct', ROWS, 1),
      zipf_7_4_3_2: report('zipf', ZIPF_ROWS.length, Math.max(...ZIPF_ROWS)),
    };
  } finally {
    await runner.close();
  }
}

/** Returns a function that reads PROBE_BYTES once through onnxruntime and returns the milliseconds it took. */
async function bandwidthProbe(threads: number): Promise<() => Promise<number>> {
  const g = new OnnxGraphBuilder('read_bandwidth');
  // 64 rows, so the reduction splits evenly across the threads.
  const x = g.input('x', 'float32', [64, 'n']);
  g.output(g.op('ReduceSum', [x, g.constInt64([1])], { keepdims: 0 }), 'sums', 'float32', [64]);
  const data = new Float32Array(PROBE_BYTES / 4).fill(1);
  return timedRun(g, threads, { x: new ort.Tensor('float32', data, [64, data.length / 64]) });
}

/** Returns a function that runs one float32 GEMM of the probe's shape and returns the milliseconds it took. */
async function gemmProbe(threads: number): Promise<() => Promise<number>> {
  const g = new OnnxGraphBuilder('gemm_rate');
  g.output(g.op('MatMul', [g.input('a', 'float32', [GEMM_M, GEMM_K]), g.input('b', 'float32', [GEMM_K, GEMM_N])]), 'c', 'float32', [GEMM_M, GEMM_N]);
  return timedRun(g, threads, {
    a: new ort.Tensor('float32', new Float32Array(GEMM_M * GEMM_K).fill(0.5), [GEMM_M, GEMM_K]),
    b: new ort.Tensor('float32', new Float32Array(GEMM_K * GEMM_N).fill(0.25), [GEMM_K, GEMM_N]),
  });
}

async function timedRun(g: OnnxGraphBuilder, threads: number, feeds: Record<string, ort.Tensor>): Promise<() => Promise<number>> {
  const session = await ort.InferenceSession.create(g.build([{ domain: '', version: 21 }]).modelBytes, {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
  });
  return async () => {
    const start = performance.now();
    await session.run(feeds);
    return performance.now() - start;
  };
}


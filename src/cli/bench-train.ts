/**
 * Training benchmark: LoRA r=16 on all seven projections, (a) stories260K at batch 16 × 256 tokens and (b) the
 * SmolLM2-135M shape (random weights, generated once into .bench/) at batch 4 × 256, against PyTorch's CPU eager
 * loop (bench-train-pytorch.py: fp32, same models, batch, LoRA and thread count). Each trial runs both sides as
 * separate processes, one after the other in alternating order, so each side's peak RSS is its own and the
 * ratios compare runs made minutes apart at most; the report gives each ratio's median and spread.
 *   npm run bench:train [-- --json] [--trials N] [--steps N] [--threads N] [--cases stories,smollm]
 */
import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parseArgs } from 'node:util';
import { BENCH_MODEL_DIR, ensureBenchModel } from '../model/bench-model.ts';
import { loadBaseModel } from '../model/load.ts';
import { LORA_TARGET_MODULES } from '../model/types.ts';
import { DEFAULT_LORA_TRAINING_CONFIG, trainLora, type TrainingSequence } from '../training/lora-trainer.ts';
import { median } from './bench-stats.ts';

const run = promisify(execFile);
const log = (message: string) => process.stderr.write(`${message}\n`);
const MODELS_DIR = resolve(process.env.MODELS_DIR ?? '../shared/models');
const PYTHON = process.env.PYTHON ?? '/usr/bin/python3';
const PYTORCH_SCRIPT = fileURLToPath(new URL('./bench-train-pytorch.py', import.meta.url));
const RANK = 16;
const ALPHA = 32;

interface BenchCase {
  name: string;
  model: string;
  rows: number;
  tokens: number;
}

const CASES: Record<string, BenchCase> = {
  stories: { name: 'stories260K, batch 16 x 256', model: resolve(MODELS_DIR, 'stories260K-hf'), rows: 16, tokens: 256 },
  smollm: { name: 'SmolLM2-135M shape, batch 4 x 256', model: BENCH_MODEL_DIR, rows: 4, tokens: 256 },
};

interface Measurement {
  tokensPerSecond: number;
  peakRssBytes: number;
  /** PyTorch's side: the BLAS libraries its process loaded. */
  blas?: string[];
}

/** Debian's reference BLAS (libblas3), which python3-torch falls back to when no optimised BLAS is installed. */
const REFERENCE_BLAS = /\/blas\/libblas\.so/;

/** This engine, in this process (a child of the benchmark): one warm-up step, then `steps` timed steps. */
async function measureEngine(bench: BenchCase, steps: number, threads: number): Promise<Measurement> {
  const model = await loadBaseModel(bench.model);
  const vocab = model.config.vocabSize;
  let state = 12345;
  const nextId = () => (state = (Math.imul(state, 1103515245) + 12345) >>> 0) % vocab;
  const train: TrainingSequence[] = Array.from({ length: bench.rows * (steps + 1) }, () => ({
    tokens: Int32Array.from({ length: bench.tokens }, nextId),
    lossMask: Uint8Array.from({ length: bench.tokens }, (_, i) => (i === 0 ? 0 : 1)),
  }));
  const stepEnds: number[] = [];
  await trainLora(
    model,
    { train },
    {
      ...DEFAULT_LORA_TRAINING_CONFIG,
      rank: RANK,
      alpha: ALPHA,
      targetModules: [...LORA_TARGET_MODULES],
      epochs: 1,
      batchSize: bench.rows,
      learningRate: 1e-4,
      maxLength: bench.tokens,
      threads,
      seed: 1,
    },
    { onProgress: () => stepEnds.push(performance.now()) },
  );
  const seconds = (stepEnds.at(-1)! - stepEnds[0]) / 1000;
  return { tokensPerSecond: (bench.rows * bench.tokens * steps) / seconds, peakRssBytes: process.resourceUsage().maxRSS * 1024 };
}

async function child(command: string, args: string[]): Promise<Measurement> {
  const { stdout } = await run(command, args, { maxBuffer: 1 << 20 });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as Measurement;
}

async function pytorchAvailable(): Promise<string | null> {
  try {
    return (await run(PYTHON, ['-c', 'import torch; print(torch.__version__)'])).stdout.trim();
  } catch {
    return null;
  }
}

const spread = (values: number[]) => [Math.min(...values), Math.max(...values)];

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      json: { type: 'boolean', default: false },
      trials: { type: 'string', default: '3' },
      steps: { type: 'string', default: '3' },
      threads: { type: 'string', default: '2' },
      cases: { type: 'string', default: 'stories,smollm' },
      'engine-child': { type: 'string' },
    },
  });
  const steps = Number(values.steps);
  const threads = Number(values.threads);
  if (values['engine-child']) {
    process.stdout.write(`${JSON.stringify(await measureEngine(CASES[values['engine-child']], steps, threads))}\n`);
    return;
  }
  const trials = Number(values.trials);
  const torchVersion = await pytorchAvailable();
  if (!torchVersion) log(`PyTorch is not importable by ${PYTHON}: install Debian's python3-torch (apt-get install python3-torch) for the anchor`);
  const report: Record<string, unknown> = { pytorch: torchVersion, threads, steps, trials, lora: { rank: RANK, alpha: ALPHA, targets: LORA_TARGET_MODULES } };
  for (const key of values.cases.split(',')) {
    const bench = CASES[key];
    if (!bench) throw new Error(`unknown case "${key}"; known: ${Object.keys(CASES).join(', ')}`);
    if (key === 'smollm') await ensureBenchModel(BENCH_MODEL_DIR, log);
    const ours: Measurement[] = [];
    const theirs: Measurement[] = [];
    const engineRun = () => child(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), '--engine-child', key, '--steps', String(steps), '--threads', String(threads)]);
    const torchRun = () =>
      child(PYTHON, [PYTORCH_SCRIPT, bench.model, '--rows', String(bench.rows), '--tokens', String(bench.tokens), '--rank', String(RANK), '--alpha', String(ALPHA), '--steps', String(steps), '--threads', String(threads)]);
    for (let trial = 0; trial < trials; trial++) {
      // Alternate which side goes first, so a drift in the machine's load favours neither.
      const order = trial % 2 === 0 || !torchVersion ? ['engine', 'pytorch'] : ['pytorch', 'engine'];
      for (const side of order) {
        if (side === 'engine') ours.push(await engineRun());
        else if (torchVersion) theirs.push(await torchRun());
      }
      log(`${bench.name}, trial ${trial + 1}: engine ${ours.at(-1)!.tokensPerSecond.toFixed(0)} tokens/s` + (torchVersion ? `, PyTorch ${theirs.at(-1)!.tokensPerSecond.toFixed(0)} tokens/s` : ''));
    }
    const blas = theirs[0]?.blas ?? [];
    if (blas.some((path) => REFERENCE_BLAS.test(path))) {
      log(`PyTorch runs on the reference BLAS (${blas.join(', ')}), which makes it about ten times slower: apt-get install libopenblas0-pthread for a fair anchor`);
    }
    const throughputRatios = theirs.map((t, i) => ours[i].tokensPerSecond / t.tokensPerSecond);
    const memoryRatios = theirs.map((t, i) => ours[i].peakRssBytes / t.peakRssBytes);
    report[key] = {
      case: bench.name,
      engine: { tokensPerSecond: median(ours.map((m) => m.tokensPerSecond)), peakRssMiB: median(ours.map((m) => m.peakRssBytes)) / 2 ** 20 },
      ...(torchVersion
        ? {
            pytorch: { tokensPerSecond: median(theirs.map((m) => m.tokensPerSecond)), peakRssMiB: median(theirs.map((m) => m.peakRssBytes)) / 2 ** 20, blas },
            throughputRatio: { median: median(throughputRatios), spread: spread(throughputRatios) },
            memoryRatio: { median: median(memoryRatios), spread: spread(memoryRatios) },
          }
        : {}),
    };
  }
  if (values.json) {
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    return;
  }
  for (const key of values.cases.split(',')) {
    const r = report[key] as { case: string; engine: { tokensPerSecond: number; peakRssMiB: number }; pytorch?: { tokensPerSecond: number; peakRssMiB: number; blas: string[] }; throughputRatio?: { median: number; spread: number[] }; memoryRatio?: { median: number; spread: number[] } };
    console.log(`${r.case}`);
    console.log(`  engine:  ${r.engine.tokensPerSecond.toFixed(0)} tokens/s, peak RSS ${r.engine.peakRssMiB.toFixed(0)} MiB`);
    if (r.pytorch && r.throughputRatio && r.memoryRatio) {
      console.log(`  PyTorch: ${r.pytorch.tokensPerSecond.toFixed(0)} tokens/s, peak RSS ${r.pytorch.peakRssMiB.toFixed(0)} MiB (torch ${torchVersion}, BLAS ${r.pytorch.blas.join(', ') || 'unknown'})`);
      console.log(`  throughput engine/PyTorch ${r.throughputRatio.median.toFixed(2)}x (spread ${r.throughputRatio.spread.map((v) => v.toFixed(2)).join('–')}), memory ${r.memoryRatio.median.toFixed(2)}x (spread ${r.memoryRatio.spread.map((v) => v.toFixed(2)).join('–')})`);
    }
  }
}

await main();

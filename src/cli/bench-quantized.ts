/**
 * The quantized-base section of the engine benchmark: the SmolLM2-135M-shaped model served as float32, as Q8_0
 * and as Q4_0 (on-load quantization, QUANTIZE=q8|q4), by three engines alive at once so every trial measures
 * the three back to back: prefill, one stream's decode and 16 streams' decode, plus 16 streams on 16 distinct
 * r=16 adapters over the Q4_0 base. Ratios against float32 are taken per trial, then their median and range.
 * Peak memory is per engine, so each form is measured in a child process of its own (`--memory-probe`):
 * loading the 16 streams' workload there and reporting that process's peak and settled RSS.
 *   npm run bench:quantized [-- --json] [--trials N]     (also part of `npm run bench`)
 */
import { execFileSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Engine } from '../engine/engine.ts';
import type { AdapterRef } from '../engine/protocol.ts';
import { BENCH_MODEL_DIR, ensureBenchModel } from '../model/bench-model.ts';
import type { LoadQuantization } from '../model/types.ts';
import { median, round } from './bench-stats.ts';
import { concurrentDecode, ensureAdapters, LORA_RANK, log, singleStream, STREAMS } from './bench-workloads.ts';

const FORMS = ['f32', 'q8', 'q4'] as const;
type Form = (typeof FORMS)[number];
const quantizationOf = (form: Form): LoadQuantization | undefined => (form === 'f32' ? undefined : form);

interface Measures {
  prefill: number[];
  decode1: number[];
  decode16: number[];
}

function startEngine(form: Form, threads: number, adapterSlots: number): Promise<Engine> {
  return Engine.start({
    modelPath: BENCH_MODEL_DIR,
    maxBatch: STREAMS,
    adapterSlots,
    maxLoraRank: LORA_RANK,
    hostCacheBytes: 2 ** 30,
    maxQueue: 64,
    maxPositions: 2048,
    threads,
    quantize: quantizationOf(form),
  });
}

/** Peak and settled RSS of a process serving `form` alone under the 16-stream workload. */
function memoryOf(form: Form, threads: number): { peak_rss_mib: number; rss_after_run_mib: number } {
  const output = execFileSync(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--memory-probe', form, '--threads', String(threads)], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return JSON.parse(output);
}

async function memoryProbe(form: Form, threads: number): Promise<void> {
  const engine = await startEngine(form, threads, 1);
  await concurrentDecode(engine, new Array(STREAMS).fill(null), 16);
  await engine.close();
  console.log(JSON.stringify({ peak_rss_mib: Math.round(process.resourceUsage().maxRSS / 1024), rss_after_run_mib: Math.round(process.memoryUsage().rss / 2 ** 20) }));
}

/** Median and range of per-trial ratios. */
function ratioSummary(numerators: number[], denominators: number[]) {
  const ratios = numerators.map((value, i) => value / denominators[i]);
  return { median: round(median(ratios), 2), range: [round(Math.min(...ratios), 2), round(Math.max(...ratios), 2)] };
}

export async function measureQuantizedBase(options: { trials: number; threads: number; adapters: AdapterRef[] }) {
  const { trials, threads, adapters } = options;
  log('quantized base: peak memory of each form, one process each ...');
  const memory = Object.fromEntries(FORMS.map((form) => [form, memoryOf(form, threads)])) as Record<Form, ReturnType<typeof memoryOf>>;

  log('quantized base: starting float32, Q8_0 and Q4_0 engines ...');
  const engines = {} as Record<Form, Engine>;
  const measures = {} as Record<Form, Measures>;
  const adaptersOverQ4: number[] = [];
  try {
    for (const form of FORMS) {
      engines[form] = await startEngine(form, threads, form === 'q4' ? STREAMS : 1);
      measures[form] = { prefill: [], decode1: [], decode16: [] };
      await concurrentDecode(engines[form], new Array(STREAMS).fill(null), 4); // first-run allocations
    }
    await concurrentDecode(engines.q4, adapters, 8); // loads every adapter into its slot before timing
    for (let trial = 0; trial < trials; trial++) {
      log(`quantized base: trial ${trial + 1}/${trials} ...`);
      for (const form of FORMS) measures[form].prefill.push((await singleStream(engines[form], 256, 2)).prefillTokensPerSecond);
      for (const form of FORMS) measures[form].decode1.push((await singleStream(engines[form], 16, 48)).tokensPerSecond);
      for (const form of FORMS) measures[form].decode16.push(await concurrentDecode(engines[form], new Array(STREAMS).fill(null), 48));
      adaptersOverQ4.push(await concurrentDecode(engines.q4, adapters, 48));
    }
  } finally {
    for (const engine of Object.values(engines)) await engine.close();
  }

  const { f32 } = measures;
  const perForm = (pick: (m: Measures) => number[]) => Object.fromEntries(FORMS.map((form) => [form, round(median(pick(measures[form])))]));
  return {
    model: 'SmolLM2-135M shape, random weights; Q8_0/Q4_0 quantized on load (output projection Q8_0, embedding float32)',
    prefill_tokens_per_second: perForm((m) => m.prefill),
    decode_tokens_per_second_1_stream: perForm((m) => m.decode1),
    decode_tokens_per_second_16_streams: perForm((m) => m.decode16),
    decode_tokens_per_second_16_streams_16_adapters_q4: round(median(adaptersOverQ4)),
    ratio_vs_f32: {
      q8_prefill: ratioSummary(measures.q8.prefill, f32.prefill),
      q8_decode_1_stream: ratioSummary(measures.q8.decode1, f32.decode1),
      q8_decode_16_streams: ratioSummary(measures.q8.decode16, f32.decode16),
      q4_prefill: ratioSummary(measures.q4.prefill, f32.prefill),
      q4_decode_1_stream: ratioSummary(measures.q4.decode1, f32.decode1),
      q4_decode_16_streams: ratioSummary(measures.q4.decode16, f32.decode16),
      q4_16_adapters_decode_16_streams: ratioSummary(adaptersOverQ4, f32.decode16),
    },
    ratio_16_adapters_vs_q4_base: ratioSummary(adaptersOverQ4, measures.q4.decode16),
    memory_by_form: memory,
    peak_rss_vs_f32: { q8: round(memory.q8.peak_rss_mib / memory.f32.peak_rss_mib, 2), q4: round(memory.q4.peak_rss_mib / memory.f32.peak_rss_mib, 2) },
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      json: { type: 'boolean', default: false },
      trials: { type: 'string', default: '3' },
      'memory-probe': { type: 'string' },
      threads: { type: 'string' },
    },
  });
  const threads = values.threads ? Number(values.threads) : availableParallelism();
  const probe = values['memory-probe'];
  if (probe !== undefined) {
    if (!(FORMS as readonly string[]).includes(probe)) throw new Error(`--memory-probe must be one of ${FORMS.join(', ')}`);
    return memoryProbe(probe as Form, threads);
  }
  await ensureBenchModel(BENCH_MODEL_DIR, log);
  const result = await measureQuantizedBase({ trials: Number(values.trials), threads, adapters: await ensureAdapters() });
  if (values.json) console.log(JSON.stringify(result));
  else for (const [key, value] of Object.entries(result)) console.log(`${key.padEnd(52)} ${typeof value === 'object' ? JSON.stringify(value) : value}`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().catch((error: Error) => {
    console.error(`error: ${error.message}`);
    process.exitCode = 1;
  });
}

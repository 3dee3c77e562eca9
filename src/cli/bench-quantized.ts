/**
 * The quantized-base section of the engine benchmark: the SmolLM2-135M-shaped model served as float32, as Q8_0
 * and as Q4_0 (on-load quantization, QUANTIZE=q8|q4): prefill, one stream's decode and 16 streams' decode, plus
 * 16 streams on 16 distinct r=16 adapters over the Q4_0 base. Each form runs in a process of its own, so its peak
 * RSS is its own and no process holds three models; the adapters run over a Q4_0 base of their own process, so the
 * base forms' peak RSS is the base's alone. All stay loaded and every trial times them back to back, so ratios
 * against float32 are taken per trial (then their median and range). `matmul_ceiling` times the matmul kernels alone
 * on the same shapes (bench-matmul-ceiling.ts): no step can gain more over float32 than they do.
 *   npm run bench:quantized [-- --json] [--trials N]     (also part of `npm run bench`)
 */
import { type ChildProcess, fork } from 'node:child_process';
import { once } from 'node:events';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Engine } from '../engine/engine.ts';
import { BENCH_MODEL_DIR, ensureBenchModel } from '../model/bench-model.ts';
import { median, ratioSummary, round } from './bench-stats.ts';
import { measureMatmulCeiling } from './bench-matmul-ceiling.ts';
import { concurrentDecode, ensureAdapters, LORA_RANK, log, singleStream, STREAMS } from './bench-workloads.ts';

const FORMS = ['f32', 'q8', 'q4'] as const;
/** The served forms, and the Q4_0 base serving the adapters. */
const PROCESSES = [...FORMS, 'q4-adapters'] as const;
type Form = (typeof PROCESSES)[number];
const WORKLOADS = ['prefill', 'decode1', 'decode16', 'adapters16'] as const;
type Workload = (typeof WORKLOADS)[number];

type Request = { run: Workload } | { run: 'finish' };
type Reply = { value: number } | { memory: { peak_rss_mib: number; rss_after_run_mib: number } };

/** The child side: one engine serving `form`, running the workloads its parent asks for, one at a time. */
async function serveForm(form: Form, threads: number): Promise<void> {
  const adapters = form === 'q4-adapters' ? await ensureAdapters() : [];
  const engine = await Engine.start({
    modelPath: BENCH_MODEL_DIR,
    maxBatch: STREAMS,
    adapterSlots: Math.max(adapters.length, 1),
    maxLoraRank: LORA_RANK,
    hostCacheBytes: 2 ** 30,
    maxQueue: 64,
    maxPositions: 2048,
    threads,
    ...(form === 'f32' ? {} : { quantize: form === 'q8' ? 'q8' : 'q4' }),
  });
  const base = new Array(STREAMS).fill(null);
  // First-run allocations, and every adapter into its slot before timing.
  await concurrentDecode(engine, adapters.length > 0 ? adapters : base, adapters.length > 0 ? 8 : 4);
  const run: Record<Workload, () => Promise<number>> = {
    prefill: async () => (await singleStream(engine, 256, 2)).prefillTokensPerSecond,
    decode1: async () => (await singleStream(engine, 16, 48)).tokensPerSecond,
    decode16: () => concurrentDecode(engine, base, 48),
    adapters16: () => concurrentDecode(engine, adapters, 48),
  };
  const reply = (message: Reply) => process.send!(message);
  process.on('message', async (request: Request) => {
    if (request.run !== 'finish') return reply({ value: await run[request.run]() });
    await engine.close();
    reply({ memory: { peak_rss_mib: Math.round(process.resourceUsage().maxRSS / 1024), rss_after_run_mib: Math.round(process.memoryUsage().rss / 2 ** 20) } });
    process.disconnect();
  });
  reply({ value: 0 });
}

/** The parent's handle on one form's process. */
class FormProcess {
  private constructor(private readonly child: ChildProcess) {}

  static async start(form: Form, threads: number): Promise<FormProcess> {
    const child = fork(fileURLToPath(import.meta.url), ['--serve-form', form, '--threads', String(threads)], { execArgv: ['--import', 'tsx'] });
    const handle = new FormProcess(child);
    await handle.next();
    return handle;
  }

  private async next(): Promise<Reply> {
    const [reply] = (await Promise.race([once(this.child, 'message'), once(this.child, 'exit').then(([code]) => Promise.reject(new Error(`a benchmark process exited (${code})`)))])) as [Reply];
    return reply;
  }

  async run(workload: Workload): Promise<number> {
    this.child.send({ run: workload } satisfies Request);
    return ((await this.next()) as { value: number }).value;
  }

  async finish() {
    this.child.send({ run: 'finish' } satisfies Request);
    return ((await this.next()) as { memory: { peak_rss_mib: number; rss_after_run_mib: number } }).memory;
  }

  kill(): void {
    this.child.kill();
  }
}

export async function measureQuantizedBase(options: { trials: number; threads: number }) {
  const { trials, threads } = options;
  const processes = {} as Record<Form, FormProcess>;
  const measured = Object.fromEntries(FORMS.map((form) => [form, Object.fromEntries(WORKLOADS.map((w) => [w, [] as number[]]))])) as Record<(typeof FORMS)[number], Record<Workload, number[]>>;
  try {
    for (const form of PROCESSES) {
      log(`quantized base: loading the ${form} form in its own process ...`);
      processes[form] = await FormProcess.start(form, threads);
    }
    for (let trial = 0; trial < trials; trial++) {
      log(`quantized base: trial ${trial + 1}/${trials} ...`);
      for (const workload of WORKLOADS) {
        if (workload === 'adapters16') measured.q4.adapters16.push(await processes['q4-adapters'].run(workload));
        else for (const form of FORMS) measured[form][workload].push(await processes[form].run(workload));
      }
    }
    const memory = {} as Record<Form, Awaited<ReturnType<FormProcess['finish']>>>;
    for (const form of PROCESSES) memory[form] = await processes[form].finish();
    log('quantized base: the matmul kernels alone (the ceiling of any speed-up) ...');
    const matmulCeiling = await measureMatmulCeiling({ trials, threads });

    const { f32, q8, q4 } = measured;
    const perForm = (workload: Workload) => Object.fromEntries(FORMS.map((form) => [form, round(median(measured[form][workload]))]));
    return {
      model: 'SmolLM2-135M shape, random weights; Q8_0/Q4_0 quantized on load (output projection Q8_0, embedding float32)',
      prefill_tokens_per_second: perForm('prefill'),
      decode_tokens_per_second_1_stream: perForm('decode1'),
      decode_tokens_per_second_16_streams: perForm('decode16'),
      decode_tokens_per_second_16_streams_16_adapters_q4: round(median(q4.adapters16)),
      ratio_vs_f32: {
        q8_prefill: ratioSummary(q8.prefill, f32.prefill),
        q8_decode_1_stream: ratioSummary(q8.decode1, f32.decode1),
        q8_decode_16_streams: ratioSummary(q8.decode16, f32.decode16),
        q4_prefill: ratioSummary(q4.prefill, f32.prefill),
        q4_decode_1_stream: ratioSummary(q4.decode1, f32.decode1),
        q4_decode_16_streams: ratioSummary(q4.decode16, f32.decode16),
        q4_16_adapters_decode_16_streams: ratioSummary(q4.adapters16, f32.decode16),
      },
      ratio_16_adapters_vs_q4_base: ratioSummary(q4.adapters16, q4.decode16),
      memory_by_form: memory,
      peak_rss_vs_f32: { q8: round(memory.q8.peak_rss_mib / memory.f32.peak_rss_mib, 2), q4: round(memory.q4.peak_rss_mib / memory.f32.peak_rss_mib, 2) },
      matmul_ceiling: matmulCeiling,
    };
  } finally {
    for (const handle of Object.values(processes)) handle.kill();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      json: { type: 'boolean', default: false },
      trials: { type: 'string', default: '3' },
      'serve-form': { type: 'string' },
      threads: { type: 'string' },
    },
  });
  const threads = values.threads ? Number(values.threads) : availableParallelism();
  const form = values['serve-form'];
  if (form !== undefined) {
    if (!(PROCESSES as readonly string[]).includes(form)) throw new Error(`--serve-form must be one of ${PROCESSES.join(', ')}`);
    return serveForm(form as Form, threads);
  }
  await ensureBenchModel(BENCH_MODEL_DIR, log);
  await ensureAdapters();
  const result = await measureQuantizedBase({ trials: Number(values.trials), threads });
  if (values.json) console.log(JSON.stringify(result));
  else for (const [key, value] of Object.entries(result)) console.log(`${key.padEnd(52)} ${typeof value === 'object' ? JSON.stringify(value) : value}`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().catch((error: Error) => {
    console.error(`error: ${error.message}`);
    process.exitCode = 1;
  });
}

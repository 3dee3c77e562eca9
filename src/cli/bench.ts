/**
 * Engine benchmark on a random-weight model with the shape of SmolLM2-135M (generated once into .bench/).
 * Reports prefill and decode throughput, the cost of serving 16 streams on 16 different LoRA adapters
 * relative to 16 base-model streams, decode step time against context length, and peak memory.
 * Ratios are measured within one run, with the compared cases interleaved, because this machine's absolute
 * speed varies by 2x from minute to minute; the adapter comparison runs three times as many pairs as the other
 * measurements have trials, and reports the spread of its per-pair ratios next to their median. `lora_floor`
 * compares the time adapters add to a step with the time to read their weights once (bench-lora-floor.ts);
 * `quantized_base` the same model served as Q8_0 and Q4_0 with float32 (bench-quantized.ts); `stall_free`
 * stall-free scheduling and cold adapters (bench-stall.ts); `startup` the engine's start-up and what a store of
 * 10,000 adapters adds to it (bench-startup.ts).
 *   npm run bench [-- --json] [--trials N]
 */
import { parseArgs } from 'node:util';
import { Engine } from '../engine/engine.ts';
import { elementCount } from '../formats/tensor-shape.ts';
import { BENCH_MODEL_DIR, ensureBenchModel } from '../model/bench-model.ts';
import { SMOLLM2_135M_SHAPE } from '../model/random-model.ts';
import { loraInputShapes } from '../runtime/slot-layout.ts';
import { measureLoraFloor } from './bench-lora-floor.ts';
import { measureQuantizedBase } from './bench-quantized.ts';
import { measureStalls } from './bench-stall.ts';
import { measureStartup } from './bench-startup.ts';
import { median, round } from './bench-stats.ts';
import { BENCH_DIR, benchEngineOptions, concurrentDecode, ensureAdapters, LORA_RANK, log, printReport, runBenchCommand, singleStream, STREAMS } from './bench-workloads.ts';
import { benchFamilies } from './bench-families.ts';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { json: { type: 'boolean', default: false }, trials: { type: 'string', default: '3' } } });
  const trials = Number(values.trials);
  await ensureBenchModel(BENCH_MODEL_DIR, log);
  const adapters = await ensureAdapters();
  const engineOptions = benchEngineOptions();
  const threads = engineOptions.threads!;
  log(`starting the engine (${threads} threads) ...`);
  const engine = await Engine.start(engineOptions);
  let result;
  try {
    log('prefill and single-stream decode ...');
    const prefill = [];
    for (let i = 0; i < trials; i++) prefill.push((await singleStream(engine, 256, 2)).prefillTokensPerSecond);
    const single = [];
    for (let i = 0; i < trials; i++) single.push((await singleStream(engine, 16, 48)).tokensPerSecond);

    log(`${STREAMS} streams: base model vs ${STREAMS} distinct LoRA adapters (r=${LORA_RANK}, all seven projections), interleaved ...`);
    await concurrentDecode(engine, adapters, 8); // loads every adapter into its slot before timing
    const base: number[] = [];
    const lora: number[] = [];
    for (let i = 0; i < 3 * trials; i++) {
      base.push(await concurrentDecode(engine, adapters.map(() => null), 48));
      lora.push(await concurrentDecode(engine, adapters, 48));
    }

    log('decode step time against context length ...');
    const contexts = [64, 256, 1024];
    const steps: Record<number, number[]> = Object.fromEntries(contexts.map((c) => [c, []]));
    for (let i = 0; i < trials; i++) for (const context of contexts) steps[context].push((await singleStream(engine, context, 16)).stepMs);
    const stepMs: Record<number, number> = Object.fromEntries(contexts.map((c) => [c, median(steps[c])]));

    const ratios = lora.map((l, i) => l / base[i]);
    const stepMs16 = (tokensPerSecond: number) => (STREAMS * 1000) / tokensPerSecond;
    result = {
      model: 'SmolLM2-135M shape, random weights, float32',
      threads,
      trials,
      prefill_tokens_per_second: Math.round(median(prefill)),
      decode_tokens_per_second_1_stream: round(median(single)),
      decode_tokens_per_second_16_streams_base: round(median(base)),
      decode_tokens_per_second_16_streams_16_adapters: round(median(lora)),
      ratio_16_adapters_vs_base: round(median(ratios), 3),
      ratio_16_adapters_vs_base_range: [round(Math.min(...ratios), 3), round(Math.max(...ratios), 3)],
      // The adapters' added step time, next to the bytes of LoRA weights a step must read (each adapter once).
      adapter_step_overhead_ms: round(median(lora.map((l, i) => stepMs16(l) - stepMs16(base[i])))),
      lora_weights_read_per_step_mib: round((STREAMS * loraFloatsPerRow(LORA_RANK) * 4) / 2 ** 20),
      decode_step_ms_by_context: Object.fromEntries(Object.entries(stepMs).map(([k, v]) => [k, round(v)])),
      step_growth_1024_vs_64: round(stepMs[1024] / stepMs[64], 3),
      peft_families_16_streams: await benchFamilies({ benchDir: BENCH_DIR, streams: STREAMS, pairs: trials, concurrentDecode: (a, t) => concurrentDecode(engine, a, t), log }),
      peak_rss_mib: Math.round(process.resourceUsage().maxRSS / 1024),
      rss_after_run_mib: Math.round(process.memoryUsage().rss / 2 ** 20),
    };
  } finally {
    await engine.close();
  }
  const loraFloor = await measureLoraFloor({ modelPath: BENCH_MODEL_DIR, adapterPaths: adapters.map((a) => a.path), rank: LORA_RANK, threads, trials: 10 * trials, log });
  const quantizedBase = await measureQuantizedBase({ trials, threads });
  const stallFree = await measureStalls({ engineOptions, adapters, trials, log });
  const startup = await measureStartup({ engineOptions, benchDir: BENCH_DIR, trials, log });
  const report = { ...result, lora_floor: loraFloor, quantized_base: quantizedBase, stall_free: stallFree, startup };
  printReport(report, values.json);
}

/** Floats of one adapter's LoRA weights at rank `rank`, as a forward pass reads them. */
function loraFloatsPerRow(rank: number): number {
  const perLayer = Object.values(loraInputShapes(SMOLLM2_135M_SHAPE, rank)).reduce((sum, shape) => sum + elementCount(shape), 0);
  return perLayer * SMOLLM2_135M_SHAPE.numLayers;
}

runBenchCommand(main);

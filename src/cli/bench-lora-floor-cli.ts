/**
 * Only the LoRA floor section of the benchmark (bench-lora-floor.ts), for trying formulations:
 *   npm run bench:lora-floor [-- --json] [--trials N] [--spinning on|off]
 * `--spinning` is the engine's ENGINE_THREAD_SPINNING for the run (default on, the engine's default).
 */
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { BENCH_MODEL_DIR, ensureBenchModel } from '../model/bench-model.ts';
import { measureLoraFloor } from './bench-lora-floor.ts';
import { ensureAdapters, LORA_RANK, log, printReport, runBenchCommand, SPINNING_OPTION, threadSpinning } from './bench-workloads.ts';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { json: { type: 'boolean', default: false }, trials: { type: 'string', default: '30' }, ...SPINNING_OPTION } });
  const spinning = threadSpinning(values.spinning);
  await ensureBenchModel(BENCH_MODEL_DIR, log);
  // The same adapters `npm run bench` uses for its adapter sections.
  const adapters = await ensureAdapters();
  const report = await measureLoraFloor({
    modelPath: BENCH_MODEL_DIR,
    adapterPaths: adapters.map((a) => a.path),
    rank: LORA_RANK,
    threads: availableParallelism(),
    threadSpinning: spinning,
    trials: Number(values.trials),
    log,
  });
  printReport(report, values.json);
}

runBenchCommand(main);

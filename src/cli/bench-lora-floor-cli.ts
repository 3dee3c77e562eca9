/**
 * Only the LoRA floor section of the benchmark (bench-lora-floor.ts), for trying formulations:
 *   npm run bench:lora-floor [-- --json] [--trials N]
 */
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { BENCH_MODEL_DIR, ensureBenchModel } from '../model/bench-model.ts';
import { measureLoraFloor } from './bench-lora-floor.ts';
import { ensureAdapters, LORA_RANK, log } from './bench-workloads.ts';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { json: { type: 'boolean', default: false }, trials: { type: 'string', default: '30' } } });
  await ensureBenchModel(BENCH_MODEL_DIR, log);
  // The same adapters `npm run bench` uses for its adapter sections.
  const adapters = await ensureAdapters();
  const report = await measureLoraFloor({
    modelPath: BENCH_MODEL_DIR,
    adapterPaths: adapters.map((a) => a.path),
    rank: LORA_RANK,
    threads: availableParallelism(),
    trials: Number(values.trials),
    log,
  });
  if (values.json) console.log(JSON.stringify(report));
  else for (const [key, value] of Object.entries(report)) console.log(`${key.padEnd(48)} ${typeof value === 'object' ? JSON.stringify(value) : value}`);
}

main().catch((error: Error) => {
  console.error(`error: ${error.message}`);
  process.exitCode = 1;
});

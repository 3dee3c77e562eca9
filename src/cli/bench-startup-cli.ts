/**
 * Only the start-up section of the benchmark (bench-startup.ts):
 *   npm run bench:startup [-- --json] [--trials N]
 */
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { BENCH_MODEL_DIR, ensureBenchModel } from '../model/bench-model.ts';
import { measureStartup } from './bench-startup.ts';
import { BENCH_DIR, log } from './bench-workloads.ts';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { json: { type: 'boolean', default: false }, trials: { type: 'string', default: '3' } } });
  await ensureBenchModel(BENCH_MODEL_DIR, log);
  const report = await measureStartup({
    engineOptions: {
      modelPath: BENCH_MODEL_DIR,
      maxBatch: 16,
      adapterSlots: 16,
      maxLoraRank: 16,
      hostCacheBytes: 2 * 2 ** 30,
      maxQueue: 64,
      maxPositions: 2048,
      threads: availableParallelism(),
    },
    benchDir: BENCH_DIR,
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

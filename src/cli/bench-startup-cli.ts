/**
 * Only the start-up section of the benchmark (bench-startup.ts):
 *   npm run bench:startup [-- --json] [--trials N] [--only store] [--drop-caches]
 * `--only store` skips the engine's starts and measures what stored adapters add to the adapter store's start.
 * `--drop-caches` empties the page cache before each store start, as after a reboot (needs root).
 */
import { parseArgs } from 'node:util';
import { BENCH_MODEL_DIR, ensureBenchModel } from '../model/bench-model.ts';
import { measureStartup } from './bench-startup.ts';
import { BENCH_DIR, benchEngineOptions, log, printReport, runBenchCommand } from './bench-workloads.ts';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { json: { type: 'boolean', default: false }, trials: { type: 'string', default: '3' }, only: { type: 'string' }, 'drop-caches': { type: 'boolean', default: false } },
  });
  if (values.only !== undefined && values.only !== 'store') throw new Error(`--only: expected "store", got ${JSON.stringify(values.only)}`);
  const storeOnly = values.only === 'store';
  if (!storeOnly) await ensureBenchModel(BENCH_MODEL_DIR, log);
  const report = await measureStartup({
    engineOptions: benchEngineOptions(),
    benchDir: BENCH_DIR,
    trials: Number(values.trials),
    log,
    storeOnly,
    dropCaches: values['drop-caches'],
  });
  printReport(report, values.json);
}

runBenchCommand(main);

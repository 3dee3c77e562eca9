/**
 * Only the start-up section of the benchmark (bench-startup.ts):
 *   npm run bench:startup [-- --json] [--trials N]
 */
import { parseArgs } from 'node:util';
import { BENCH_MODEL_DIR, ensureBenchModel } from '../model/bench-model.ts';
import { measureStartup } from './bench-startup.ts';
import { BENCH_DIR, benchEngineOptions, log, printReport, runBenchCommand } from './bench-workloads.ts';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { json: { type: 'boolean', default: false }, trials: { type: 'string', default: '3' } } });
  await ensureBenchModel(BENCH_MODEL_DIR, log);
  const report = await measureStartup({
    engineOptions: benchEngineOptions(),
    benchDir: BENCH_DIR,
    trials: Number(values.trials),
    log,
  });
  printReport(report, values.json);
}

runBenchCommand(main);

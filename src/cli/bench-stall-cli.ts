/**
 * Only the stall-free section of the benchmark (bench-stall.ts), for trying prefill budgets:
 *   npm run bench:stall [-- --json] [--trials N] [--budget TOKENS]
 * or only its stall figures for each of several budgets, one engine after another (compare their ratios):
 *   npm run bench:stall -- --budgets 32,64,128,256 [--trials N] [--json]
 * `--spinning on|off` is the engine's ENGINE_THREAD_SPINNING for the run (default on, the engine's default).
 */
import { parseArgs } from 'node:util';
import { BENCH_MODEL_DIR, ensureBenchModel } from '../model/bench-model.ts';
import { measureStalls } from './bench-stall.ts';
import { benchEngineOptions, ensureAdapters, log, printReport, runBenchCommand, SPINNING_OPTION, threadSpinning } from './bench-workloads.ts';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { json: { type: 'boolean', default: false }, trials: { type: 'string', default: '3' }, budget: { type: 'string' }, budgets: { type: 'string' }, ...SPINNING_OPTION },
  });
  const engineOptions = { ...benchEngineOptions(), threadSpinning: threadSpinning(values.spinning) };
  await ensureBenchModel(BENCH_MODEL_DIR, log);
  // The same adapters `npm run bench` uses for its adapter sections.
  const adapters = await ensureAdapters();
  const common = { adapters, trials: Number(values.trials), log };
  if (values.budgets !== undefined) {
    const reports = [];
    for (const budget of values.budgets.split(',').map(Number)) {
      reports.push(await measureStalls({ ...common, engineOptions: { ...engineOptions, prefillTokenBudget: budget } }));
    }
    if (values.json) console.log(JSON.stringify(reports));
    else for (const report of reports) console.log(JSON.stringify(report));
    return;
  }
  const report = await measureStalls({
    ...common,
    engineOptions: { ...engineOptions, ...(values.budget === undefined ? {} : { prefillTokenBudget: Number(values.budget) }) },
  });
  printReport(report, values.json);
}

runBenchCommand(main);

/**
 * Only the stall-free section of the benchmark (bench-stall.ts), for trying prefill budgets:
 *   npm run bench:stall [-- --json] [--trials N] [--budget TOKENS]
 * or only its stall figures for each of several budgets, one engine after another (compare their ratios):
 *   npm run bench:stall -- --budgets 32,64,128,256 [--trials N] [--json]
 */
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { BENCH_MODEL_DIR, ensureBenchModel } from '../model/bench-model.ts';
import { measureStallFree, measureStalls } from './bench-stall.ts';
import { BENCH_DIR, ensureAdapters, log } from './bench-workloads.ts';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { json: { type: 'boolean', default: false }, trials: { type: 'string', default: '3' }, budget: { type: 'string' }, budgets: { type: 'string' } },
  });
  await ensureBenchModel(BENCH_MODEL_DIR, log);
  // The same adapters `npm run bench` uses for its adapter sections.
  const adapters = await ensureAdapters();
  const engineOptions = {
    modelPath: BENCH_MODEL_DIR,
    maxBatch: 16,
    adapterSlots: 16,
    maxLoraRank: 16,
    hostCacheBytes: 2 * 2 ** 30,
    maxQueue: 64,
    maxPositions: 2048,
    threads: availableParallelism(),
  };
  const common = { adapters, benchDir: BENCH_DIR, trials: Number(values.trials), log };
  if (values.budgets !== undefined) {
    const reports = [];
    for (const budget of values.budgets.split(',').map(Number)) {
      reports.push(await measureStalls({ ...common, engineOptions: { ...engineOptions, prefillTokenBudget: budget } }));
    }
    if (values.json) console.log(JSON.stringify(reports));
    else for (const report of reports) console.log(JSON.stringify(report));
    return;
  }
  const report = await measureStallFree({
    ...common,
    engineOptions: { ...engineOptions, ...(values.budget === undefined ? {} : { prefillTokenBudget: Number(values.budget) }) },
  });
  if (values.json) console.log(JSON.stringify(report));
  else for (const [key, value] of Object.entries(report)) console.log(`${key.padEnd(48)} ${typeof value === 'object' ? JSON.stringify(value) : value}`);
}

main().catch((error: Error) => {
  console.error(`error: ${error.message}`);
  process.exitCode = 1;
});

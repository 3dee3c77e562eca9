/**
 * `npm run fuzz -- --runs N [--seed S] [--only text]`: every fuzz target against the file parsers and a real
 * gateway serving stories260K, N inputs each. Prints, per target, the inputs tried, the time taken and the
 * slowest input's time; exits non-zero with fast-check's report (seed, path and shrunk input) on the first
 * failure. `npm test` runs the same targets with a fixed seed and few inputs (tests/fuzz.test.ts).
 */
import { parseArgs } from 'node:util';
import { STORIES_GGUF, STORIES_HF_DIR } from '../tests/support/models.ts';
import { startFuzzedGateway } from './fuzzed-gateway.ts';
import { fileParserTargets } from './file-parsers.ts';
import { httpRouteTargets } from './http-routes.ts';

const { values } = parseArgs({
  options: { runs: { type: 'string', default: '200' }, seed: { type: 'string', default: String(Date.now() % 2 ** 31) }, only: { type: 'string' } },
});
const numRuns = Number(values.runs);
const seed = Number(values.seed);
if (!Number.isInteger(numRuns) || numRuns < 1) throw new Error(`--runs must be a positive integer, got ${values.runs}`);
if (!Number.isInteger(seed)) throw new Error(`--seed must be an integer, got ${values.seed}`);

const gateway = await startFuzzedGateway();
let failed = false;
try {
  const targets = [...(await fileParserTargets(STORIES_HF_DIR, STORIES_GGUF)), ...httpRouteTargets(gateway)].filter(
    (target) => !values.only || target.name.includes(values.only),
  );
  console.log(`fuzzing ${targets.length} targets, ${numRuns} inputs each, seed ${seed}`);
  for (const target of targets) {
    const started = performance.now();
    try {
      await target.run({ numRuns, seed });
      gateway.assertNoUnexpectedErrors();
      console.log(`ok    ${target.name.padEnd(44)} ${((performance.now() - started) / 1000).toFixed(1)} s`);
    } catch (error) {
      failed = true;
      console.log(`FAIL  ${target.name}\n${(error as Error).message}`);
      break;
    }
  }
  console.log(`rss ${(process.memoryUsage().rss / 2 ** 20).toFixed(0)} MiB`);
} finally {
  await gateway.stop();
}
process.exitCode = failed ? 1 : 0;

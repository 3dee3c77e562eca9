/**
 * Writes the benchmark model (SmolLM2-135M shape, random weights, synthetic tokenizer) for the gateway to serve:
 *   npm run make-bench-model [-- --out DIR]
 *   MODEL_PATH=.bench/smollm2-135m-random npm start
 */
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { BENCH_MODEL_DIR, ensureBenchModel } from '../model/bench-model.ts';

try {
  const { values } = parseArgs({ options: { out: { type: 'string', default: BENCH_MODEL_DIR } } });
  const dir = resolve(values.out);
  await ensureBenchModel(dir, (message) => process.stderr.write(`${message}\n`));
  process.stdout.write(`${dir}\n`);
} catch (error) {
  process.stderr.write(`error: ${(error as Error).message}\n`);
  process.exitCode = 1;
}

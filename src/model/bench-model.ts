/**
 * The benchmark model: random weights with SmolLM2-135M's shape plus a synthetic tokenizer, generated once into
 * `.bench/` so the engine benchmark and a gateway (`MODEL_PATH=.bench/smollm2-135m-random`) serve the same files.
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { randomBaseModel, SMOLLM2_135M_SHAPE } from './random-model.ts';
import { writeSyntheticTokenizer } from './synthetic-tokenizer.ts';
import { writeHuggingFaceModel } from './write-model.ts';

export const BENCH_MODEL_DIR = resolve('.bench', 'smollm2-135m-random');
const BENCH_MODEL_SEED = 1;

/**
 * Writes whatever part of the benchmark model `dir` lacks: the weights (about 30 s and 513 MiB) and the tokenizer
 * files, which older benchmark directories were made without.
 */
export async function ensureBenchModel(dir = BENCH_MODEL_DIR, log: (message: string) => void = () => {}): Promise<void> {
  if (!existsSync(join(dir, 'model.safetensors'))) {
    log(`generating ${dir} (random weights, std 0.02) ...`);
    await writeHuggingFaceModel(dir, randomBaseModel(SMOLLM2_135M_SHAPE, BENCH_MODEL_SEED));
  }
  if (!existsSync(join(dir, 'tokenizer.json'))) {
    log(`writing a synthetic ${SMOLLM2_135M_SHAPE.vocabSize}-token tokenizer into ${dir} ...`);
    await writeSyntheticTokenizer(dir, SMOLLM2_135M_SHAPE);
  }
}

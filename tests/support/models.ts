import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { join, resolve } from 'node:path';

/** Repository root, so tests find `../shared/models` wherever they are started from. */
export const REPO_ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));

/** The shared test models; `MODELS_DIR` overrides the default sibling checkout. */
export const MODELS_DIR = resolve(process.env.MODELS_DIR ?? resolve(REPO_ROOT, '../shared/models'));

export const STORIES_GGUF = resolve(MODELS_DIR, 'stories260K/stories260K.gguf');
export const STORIES_HF_DIR = resolve(MODELS_DIR, 'stories260K-hf');

/** Reference greedy behaviour published with the model (see the models README). */
export const REFERENCE = {
  prompt: 'Once upon a time',
  promptIds: [1, 403, 407, 261, 378],
  greedyIds: [
    432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322,
    265, 282, 295, 433, 426, 385, 328, 432, 358, 394,
  ],
  text: 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw',
};

/** stories260K quantized by llama.cpp, with llama.cpp's reference outputs (see the models README). */
export const STORIES_QUANT_DIR = resolve(MODELS_DIR, 'stories260K-quant');

/**
 * A copy of the Hugging Face form of stories260K in a temporary directory removed after the test (its files'
 * identity is then the test's own, to change at will), and a compiled-model cache directory beside it.
 */
export async function storiesCopyWithCache(t: { after: (fn: () => Promise<void>) => void }, prefix: string): Promise<{ model: string; cache: string }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const model = join(dir, 'model');
  await cp(STORIES_HF_DIR, model, { recursive: true });
  return { model, cache: join(dir, 'cache') };
}

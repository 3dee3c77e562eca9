/**
 * Which model to serve when MODEL_PATH is not set: the stories260K test model, from the shared models folder
 * beside the repository if present (the Hugging Face form, whose config carries the 512-token context the model
 * was trained with), else from models/ (the GGUF form, downloaded once from a pinned public address and checked
 * against its sha256).
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO_ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));

export const DEFAULT_MODEL = {
  name: 'stories260K',
  sharedPath: resolve(REPO_ROOT, '../shared/models/stories260K-hf'),
  localPath: resolve(REPO_ROOT, 'models/stories260K.gguf'),
  url: 'https://huggingface.co/ggml-org/models/resolve/main/tinyllamas/stories260K.gguf',
  sha256: '047bf46455a544931cff6fef14d7910154c56afbc23ab1c5e56a72e69912c04b',
};

export async function defaultModelPath(log: (line: string) => void, model: typeof DEFAULT_MODEL = DEFAULT_MODEL): Promise<string> {
  if (existsSync(model.sharedPath)) return model.sharedPath;
  if (existsSync(model.localPath)) return model.localPath;
  log(`MODEL_PATH not set; downloading the default model from ${model.url}`);
  let bytes: Uint8Array;
  try {
    const response = await fetch(model.url, { signal: AbortSignal.timeout(60_000) });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    bytes = new Uint8Array(await response.arrayBuffer());
  } catch (error) {
    throw new Error(
      `MODEL_PATH is not set and the default model could not be downloaded (${(error as Error).message}). ` +
        `Either set MODEL_PATH to a GGUF file or Hugging Face model directory, or place stories260K.gguf ` +
        `(sha256 ${model.sha256}) at ${model.localPath}.`,
    );
  }
  const digest = createHash('sha256').update(bytes).digest('hex');
  if (digest !== model.sha256) {
    throw new Error(`the downloaded default model has sha256 ${digest}, expected ${model.sha256}; refusing to serve it`);
  }
  await mkdir(dirname(model.localPath), { recursive: true });
  const partial = `${model.localPath}.partial`;
  await writeFile(partial, bytes);
  await rename(partial, model.localPath);
  return model.localPath;
}

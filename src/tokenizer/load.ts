/** Picks the tokenizer and chat template for a model path: a Hugging Face directory or the vocabulary inside a GGUF file. */
import { stat } from 'node:fs/promises';
import { readGguf } from '../formats/gguf.ts';
import { chatTemplateConfigFromGguf, createChatFormatter, type ChatFormatter } from './chat-template.ts';
import { loadHuggingFaceTokenizer, readTokenizerConfig } from './huggingface.ts';
import { sentencePieceFromGgufMetadata } from './sentencepiece.ts';
import type { Tokenizer } from './tokenizer.ts';

/** `eosTokenIds` are the model's own end-of-sequence ids (generation_config may list several); the tokenizer's are added. */
export async function loadTokenizer(modelPath: string, eosTokenIds: number[]): Promise<Tokenizer> {
  const info = await stat(modelPath).catch((error: NodeJS.ErrnoException) => {
    throw new Error(`cannot load a tokenizer from ${modelPath}: ${error.code ?? error.message}`);
  });
  if (info.isDirectory()) return loadHuggingFaceTokenizer(modelPath, eosTokenIds);
  if (modelPath.endsWith('.gguf')) {
    const { metadata } = await readGguf(modelPath);
    return sentencePieceFromGgufMetadata(metadata, eosTokenIds);
  }
  throw new Error(`${modelPath} is neither a Hugging Face model directory nor a .gguf file`);
}

/** The model's chat template (tokenizer_config.json, or a GGUF file's metadata) as a formatter. */
export async function loadChatFormatter(modelPath: string): Promise<ChatFormatter> {
  const isDirectory = (await stat(modelPath)).isDirectory();
  return createChatFormatter(
    isDirectory ? await readTokenizerConfig(modelPath) : chatTemplateConfigFromGguf((await readGguf(modelPath)).metadata),
  );
}

/**
 * Hugging Face PEFT prompt-learning adapters, whose one tensor `prompt_embeddings` is what PEFT feeds at inference:
 *
 * - PROMPT_TUNING and P_TUNING: `[num_virtual_tokens, hidden]` embeddings placed before the prompt's own. P-tuning
 *   trains them through a prompt encoder, but PEFT saves (and serves) the encoder's output, so both are served alike.
 * - PREFIX_TUNING: `[num_virtual_tokens, layers·2·kv_dim]`, every layer's prefix keys and values. Per virtual token
 *   the row holds, for layer l, its keys (block 2l) then its values (block 2l+1), each kv_heads × head_dim (PEFT
 *   views it as [tokens, layers·2, kv_heads, head_dim] for grouped-query models). The keys enter the attention cache
 *   as they are: PEFT hands them to the model as past keys, which are never rotated again.
 *
 * Either way the virtual tokens take the first positions of the sequence, so the prompt's tokens start at
 * position num_virtual_tokens, and they occupy the context and the KV cache like real tokens.
 */
import type { SafetensorsFile } from '../formats/safetensors.ts';
import type { LlamaConfig } from '../model/types.ts';
import type { JsonObject } from '../storage/json-files.ts';
import { readFloatTensor, tensorError } from './adapter-files.ts';
import { AdapterError } from './adapter-error.ts';
import { ADAPTER_WEIGHTS_FILE } from './lora.ts';
import { ADAPTER_CONFIG_FILE, checkTaskType, describe, invalid, isUnset, positiveInteger } from './peft-config.ts';

export const PROMPT_EMBEDDINGS_TENSOR = 'prompt_embeddings';

export interface SoftPromptAdapter {
  family: 'prompt_tuning' | 'p_tuning';
  rank: 0;
  virtualTokens: number;
  /** [virtualTokens, hidden], row-major: the embeddings fed before the prompt's. */
  embeddings: Float32Array;
  byteSize: number;
}

export interface PrefixAdapter {
  family: 'prefix_tuning';
  rank: 0;
  virtualTokens: number;
  /** [virtualTokens, layers·2·kv_heads·head_dim] in PEFT's layout (see the module comment). */
  keyValues: Float32Array;
  byteSize: number;
}

export type PromptLearningType = 'PROMPT_TUNING' | 'P_TUNING' | 'PREFIX_TUNING';

/** A field PEFT derived from the base model when the adapter was trained: it must match this base. */
function matchesBase(json: JsonObject, field: string, expected: number, meaning: string): void {
  if (isUnset(json[field]) || json[field] === expected) return;
  throw new AdapterError(
    'incompatible_base',
    `${ADAPTER_CONFIG_FILE}: "${field}": ${describe(json[field])} does not match the base model, whose ${meaning} is ${expected}; the adapter was trained for another model`,
  );
}

/** Validates a prompt-tuning, p-tuning or prefix-tuning adapter against `base`. */
export function parsePromptLearningAdapter(
  peftType: PromptLearningType,
  json: JsonObject,
  weights: SafetensorsFile,
  base: LlamaConfig,
): SoftPromptAdapter | PrefixAdapter {
  checkTaskType(json);
  const virtualTokens = positiveInteger(json.num_virtual_tokens, 'num_virtual_tokens');
  if (!isUnset(json.num_transformer_submodules) && json.num_transformer_submodules !== 1) {
    invalid(`"num_transformer_submodules" must be 1 for a causal language model (one decoder), got ${describe(json.num_transformer_submodules)}`);
  }
  matchesBase(json, 'num_layers', base.numLayers, 'layer count');
  const isPrefix = peftType === 'PREFIX_TUNING';
  const kvDim = base.numKvHeads * base.headDim;
  // PEFT records the prefix width per layer (kv_heads·head_dim for grouped-query models) as token_dim.
  matchesBase(json, 'token_dim', isPrefix ? kvDim : base.hiddenSize, isPrefix ? 'key/value width per layer' : 'hidden size');

  for (const key of weights.tensors.keys()) {
    if (key !== PROMPT_EMBEDDINGS_TENSOR) {
      tensorError(ADAPTER_WEIGHTS_FILE, 'invalid_tensor', `unexpected tensor "${key}"; a ${peftType} adapter holds only "${PROMPT_EMBEDDINGS_TENSOR}"`);
    }
  }
  const entry =
    weights.tensors.get(PROMPT_EMBEDDINGS_TENSOR) ??
    tensorError(ADAPTER_WEIGHTS_FILE, 'missing_tensor', `"${PROMPT_EMBEDDINGS_TENSOR}" is missing; a ${peftType} adapter needs it`);
  if (isPrefix) {
    const width = base.numLayers * 2 * kvDim;
    const keyValues = readFloatTensor(
      ADAPTER_WEIGHTS_FILE,
      entry,
      [virtualTokens, width],
      `num_virtual_tokens ${virtualTokens} rows of ${base.numLayers} layers × (keys + values) × ${kvDim} key/value features`,
    );
    return { family: 'prefix_tuning', rank: 0, virtualTokens, keyValues, byteSize: keyValues.byteLength };
  }
  const embeddings = readFloatTensor(
    ADAPTER_WEIGHTS_FILE,
    entry,
    [virtualTokens, base.hiddenSize],
    `num_virtual_tokens ${virtualTokens} embeddings of the base model's hidden size ${base.hiddenSize}`,
  );
  return { family: peftType === 'P_TUNING' ? 'p_tuning' : 'prompt_tuning', rank: 0, virtualTokens, embeddings, byteSize: embeddings.byteLength };
}

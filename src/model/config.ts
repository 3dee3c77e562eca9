/**
 * Builds a LlamaConfig from a Hugging Face config.json or from GGUF metadata, refusing every variant the
 * runtime does not implement (biases, other activations, sliding windows, unknown RoPE scaling) so that an
 * unsupported model fails at load instead of generating plausible-looking garbage.
 */
import type { LlamaConfig, RopeScaling } from './types.ts';
import type { GgufTensorInfo } from '../formats/gguf.ts';
import { isJsonObject, type JsonObject } from '../storage/json-files.ts';

const SUPPORTED_MODEL_TYPES = ['llama', 'mistral'];
const SUPPORTED_ARCHITECTURES = ['LlamaForCausalLM', 'MistralForCausalLM'];
/** llama.cpp's default when a GGUF has no `llama.rope.freq_base`; also transformers' LlamaConfig default. */
const DEFAULT_ROPE_THETA = 10000;
/** transformers' LlamaConfig / MistralConfig defaults, used when config.json leaves these out. */
const HF_DEFAULTS = { rmsNormEps: 1e-6, bosTokenId: 1, eosTokenId: 2, hiddenAct: 'silu' };


export function configFromHuggingFace(configJson: unknown, generationConfig?: unknown): LlamaConfig {
  if (!isJsonObject(configJson)) throw new Error('config.json must be a JSON object');
  const config = configJson;
  const fail = (message: string): never => {
    throw new Error(`unsupported model in config.json: ${message}`);
  };

  const modelType = config.model_type;
  if (typeof modelType !== 'string' || !SUPPORTED_MODEL_TYPES.includes(modelType)) {
    fail(`model_type ${JSON.stringify(modelType)} is not supported; only Llama-family models (${SUPPORTED_MODEL_TYPES.join(', ')}) are`);
  }
  const architectures = config.architectures;
  if (architectures !== undefined) {
    const listed = Array.isArray(architectures) ? architectures : [architectures];
    const unsupported = listed.filter((name) => !SUPPORTED_ARCHITECTURES.includes(name as string));
    if (unsupported.length > 0) {
      fail(`architectures ${JSON.stringify(unsupported)} are not supported; expected ${SUPPORTED_ARCHITECTURES.join(' or ')}`);
    }
  }
  if (config.attention_bias === true) fail('attention_bias is true (q/k/v/o biases are not implemented)');
  if (config.mlp_bias === true) fail('mlp_bias is true (MLP biases are not implemented)');
  const hiddenAct = config.hidden_act ?? HF_DEFAULTS.hiddenAct;
  if (hiddenAct !== 'silu') fail(`hidden_act ${JSON.stringify(hiddenAct)} is not supported; only silu is`);

  const read = fieldReader(config, 'config.json');
  const hiddenSize = read.positiveInt('hidden_size');
  const numHeads = read.positiveInt('num_attention_heads');
  const maxPositions = read.positiveInt('max_position_embeddings');
  const slidingWindow = config.sliding_window;
  if (slidingWindow !== undefined && slidingWindow !== null) {
    if (typeof slidingWindow !== 'number' || slidingWindow < maxPositions) {
      fail(
        `sliding_window ${JSON.stringify(slidingWindow)} is smaller than max_position_embeddings ${maxPositions} ` +
          '(sliding-window attention is not implemented)',
      );
    }
  }

  // transformers 5 moves rope_theta and the scaling description into `rope_parameters`.
  const ropeParameters = isJsonObject(config.rope_parameters) ? config.rope_parameters : undefined;
  const ropeTheta = config.rope_theta ?? ropeParameters?.rope_theta ?? DEFAULT_ROPE_THETA;
  if (typeof ropeTheta !== 'number' || !(ropeTheta > 0)) fail(`rope_theta ${JSON.stringify(ropeTheta)} must be a positive number`);

  const generation = isJsonObject(generationConfig) ? generationConfig : {};
  const eos = generation.eos_token_id ?? config.eos_token_id ?? HF_DEFAULTS.eosTokenId;
  const bos = config.bos_token_id ?? generation.bos_token_id ?? HF_DEFAULTS.bosTokenId;

  return validated({
    hiddenSize,
    intermediateSize: read.positiveInt('intermediate_size'),
    numLayers: read.positiveInt('num_hidden_layers'),
    numHeads,
    numKvHeads: config.num_key_value_heads == null ? numHeads : read.positiveInt('num_key_value_heads'),
    headDim: config.head_dim == null ? hiddenSize / numHeads : read.positiveInt('head_dim'),
    vocabSize: read.positiveInt('vocab_size'),
    maxPositions,
    rmsNormEps: config.rms_norm_eps == null ? HF_DEFAULTS.rmsNormEps : read.positiveNumber('rms_norm_eps'),
    ropeTheta: ropeTheta as number,
    ropeScaling: ropeScalingFromHuggingFace(config.rope_scaling ?? ropeParameters, maxPositions),
    tieWordEmbeddings: config.tie_word_embeddings === true,
    bosTokenId: tokenId(bos, 'bos_token_id'),
    eosTokenIds: tokenIds(eos, 'eos_token_id'),
  });
}

function ropeScalingFromHuggingFace(value: unknown, maxPositions: number): RopeScaling | null {
  if (value === null || value === undefined) return null;
  if (!isJsonObject(value)) throw new Error(`unsupported model in config.json: rope_scaling ${JSON.stringify(value)} must be null or an object`);
  const kind = value.rope_type ?? value.type;
  const read = fieldReader(value, 'config.json rope_scaling');
  switch (kind) {
    case 'default':
      return null;
    case 'linear':
      return { type: 'linear', factor: read.positiveNumber('factor') };
    case 'llama3':
      return {
        type: 'llama3',
        factor: read.positiveNumber('factor'),
        lowFreqFactor: read.positiveNumber('low_freq_factor'),
        highFreqFactor: read.positiveNumber('high_freq_factor'),
        originalMaxPositions:
          value.original_max_position_embeddings == null ? maxPositions : read.positiveInt('original_max_position_embeddings'),
      };
    default:
      throw new Error(
        `unsupported model in config.json: rope_scaling type ${JSON.stringify(kind)} is not supported (supported: linear, llama3)`,
      );
  }
}

export function configFromGguf(metadata: Map<string, unknown>, tensors: Map<string, GgufTensorInfo>): LlamaConfig {
  const architecture = metadata.get('general.architecture');
  if (architecture !== 'llama') {
    throw new Error(`unsupported GGUF: general.architecture is ${describe(architecture)}; only "llama" is supported`);
  }
  if (tensors.has('rope_freqs.weight')) {
    throw new Error(
      'unsupported GGUF: it carries rope_freqs.weight (llama3-style RoPE scaling), which is not implemented for GGUF; ' +
        'use the Hugging Face checkpoint',
    );
  }
  const read = fieldReader(Object.fromEntries(metadata), 'GGUF metadata');
  const hiddenSize = read.positiveInt('llama.embedding_length');
  const numHeads = read.positiveInt('llama.attention.head_count');
  const headDim = metadata.has('llama.attention.key_length')
    ? read.positiveInt('llama.attention.key_length')
    : hiddenSize / numHeads;
  const rotaryDims = metadata.has('llama.rope.dimension_count') ? read.positiveInt('llama.rope.dimension_count') : headDim;
  if (rotaryDims !== headDim) {
    throw new Error(
      `unsupported GGUF: llama.rope.dimension_count ${rotaryDims} differs from the head size ${headDim} ` +
        '(partial rotary embeddings are not implemented)',
    );
  }

  const tokens = metadata.get('tokenizer.ggml.tokens');
  const embedding = tensors.get('token_embd.weight');
  const vocabSize = Array.isArray(tokens) ? tokens.length : embedding?.shape[0];
  if (vocabSize === undefined) {
    throw new Error('GGUF has neither tokenizer.ggml.tokens nor token_embd.weight to tell the vocabulary size');
  }

  return validated({
    hiddenSize,
    intermediateSize: read.positiveInt('llama.feed_forward_length'),
    numLayers: read.positiveInt('llama.block_count'),
    numHeads,
    numKvHeads: metadata.has('llama.attention.head_count_kv') ? read.positiveInt('llama.attention.head_count_kv') : numHeads,
    headDim,
    vocabSize,
    maxPositions: read.positiveInt('llama.context_length'),
    rmsNormEps: read.positiveNumber('llama.attention.layer_norm_rms_epsilon'),
    ropeTheta: metadata.has('llama.rope.freq_base') ? read.positiveNumber('llama.rope.freq_base') : DEFAULT_ROPE_THETA,
    ropeScaling: ropeScalingFromGguf(metadata, read),
    tieWordEmbeddings: !tensors.has('output.weight'),
    bosTokenId: metadata.has('tokenizer.ggml.bos_token_id') ? read.nonNegativeInt('tokenizer.ggml.bos_token_id') : HF_DEFAULTS.bosTokenId,
    eosTokenIds: [metadata.has('tokenizer.ggml.eos_token_id') ? read.nonNegativeInt('tokenizer.ggml.eos_token_id') : HF_DEFAULTS.eosTokenId],
  });
}

function ropeScalingFromGguf(metadata: Map<string, unknown>, read: FieldReader): RopeScaling | null {
  const kind = metadata.get('llama.rope.scaling.type') ?? 'none';
  if (kind === 'none') return null;
  if (kind === 'linear') return { type: 'linear', factor: read.positiveNumber('llama.rope.scaling.factor') };
  throw new Error(`unsupported GGUF: llama.rope.scaling.type ${describe(kind)} is not supported (supported: none, linear)`);
}

/** Cross-field checks shared by both sources. */
function validated(config: LlamaConfig): LlamaConfig {
  const fail = (message: string): never => {
    throw new Error(`invalid model configuration: ${message}`);
  };
  if (!Number.isInteger(config.headDim)) {
    fail(`hidden size ${config.hiddenSize} is not divisible by ${config.numHeads} heads and no head_dim is given`);
  }
  if (config.headDim % 2 !== 0) fail(`head size ${config.headDim} must be even for rotary embeddings`);
  if (config.numHeads % config.numKvHeads !== 0) {
    fail(`${config.numHeads} attention heads are not a multiple of ${config.numKvHeads} key/value heads`);
  }
  for (const id of [config.bosTokenId, ...config.eosTokenIds]) {
    if (id >= config.vocabSize) fail(`special token id ${id} is outside the vocabulary of ${config.vocabSize}`);
  }
  return config;
}

function tokenId(value: unknown, field: string): number {
  if (!Number.isInteger(value) || (value as number) < 0) {
    throw new Error(`invalid model configuration: ${field} ${describe(value)} must be a non-negative integer`);
  }
  return value as number;
}

function tokenIds(value: unknown, field: string): number[] {
  const ids = (Array.isArray(value) ? value : [value]).map((id) => tokenId(id, field));
  if (ids.length === 0) throw new Error(`invalid model configuration: ${field} lists no ids`);
  return ids;
}

type FieldReader = ReturnType<typeof fieldReader>;

function fieldReader(fields: JsonObject, where: string) {
  const value = (key: string, valid: (v: unknown) => boolean, expected: string): number => {
    const v = fields[key];
    if (!valid(v)) {
      throw new Error(`invalid model configuration: ${where} ${key} is ${v === undefined ? 'missing' : describe(v)}; expected ${expected}`);
    }
    return v as number;
  };
  return {
    positiveInt: (key: string) => value(key, (v) => Number.isSafeInteger(v) && (v as number) > 0, 'a positive integer'),
    nonNegativeInt: (key: string) => value(key, (v) => Number.isSafeInteger(v) && (v as number) >= 0, 'a non-negative integer'),
    positiveNumber: (key: string) => value(key, (v) => typeof v === 'number' && v > 0 && Number.isFinite(v), 'a positive number'),
  };
}

/** JSON.stringify throws on bigint, which GGUF metadata may hold. */
function describe(value: unknown): string {
  return typeof value === 'bigint' ? `${value}` : JSON.stringify(value);
}


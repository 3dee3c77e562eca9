/**
 * Writes IA3 and prompt-learning adapters in genuine PEFT layout (the config fields and tensor names PEFT's
 * save_pretrained produces), for tests, the benchmark and anything else this project generates.
 */
import { serializeSafetensors, type SafetensorsTensorInput } from '../formats/safetensors.ts';
import { createRng, randomNormal } from '../engine/random.ts';
import type { LlamaConfig, LoraTargetModule } from '../model/types.ts';
import { ia3TensorKey, type Ia3Vector } from './ia3.ts';
import { ADAPTER_WEIGHTS_FILE, projectionDims } from './lora.ts';
import { ADAPTER_CONFIG_FILE } from './peft-config.ts';
import { PROMPT_EMBEDDINGS_TENSOR, type PromptLearningType } from './prompt-learning.ts';

function files(config: Record<string, unknown>, tensors: Record<string, SafetensorsTensorInput>): Map<string, Uint8Array> {
  return new Map([
    [ADAPTER_CONFIG_FILE, new TextEncoder().encode(`${JSON.stringify(config, null, 2)}\n`)],
    [ADAPTER_WEIGHTS_FILE, serializeSafetensors(tensors, { format: 'pt' })],
  ]);
}

export interface Ia3AdapterSpec {
  targetModules: LoraTargetModule[];
  /** The subset of targetModules whose input is scaled. */
  feedforwardModules: LoraTargetModule[];
  vectors: Omit<Ia3Vector, 'kind'>[];
}

export function ia3AdapterFiles(spec: Ia3AdapterSpec): Map<string, Uint8Array> {
  const tensors: Record<string, SafetensorsTensorInput> = {};
  for (const { layer, module, values } of spec.vectors) {
    const shape = spec.feedforwardModules.includes(module) ? [1, values.length] : [values.length, 1];
    tensors[ia3TensorKey(layer, module)] = { dtype: 'F32', shape, data: values };
  }
  const config = {
    peft_type: 'IA3',
    task_type: 'CAUSAL_LM',
    target_modules: spec.targetModules,
    feedforward_modules: spec.feedforwardModules,
    exclude_modules: null,
    fan_in_fan_out: false,
    modules_to_save: null,
    init_ia3_weights: true,
    inference_mode: true,
  };
  return files(config, tensors);
}

/** IA3 vectors around 1 (1 + N(0, std)) on every layer of `base`. */
export function randomIa3Adapter(
  base: LlamaConfig,
  opts: { targetModules: LoraTargetModule[]; feedforwardModules: LoraTargetModule[]; seed: number; std?: number },
): Ia3AdapterSpec {
  const rng = createRng(opts.seed);
  const std = opts.std ?? 0.2;
  const vectors: Ia3AdapterSpec['vectors'] = [];
  for (let layer = 0; layer < base.numLayers; layer++) {
    for (const module of opts.targetModules) {
      const { inFeatures, outFeatures } = projectionDims(base, module);
      const width = opts.feedforwardModules.includes(module) ? inFeatures : outFeatures;
      vectors.push({ layer, module, values: Float32Array.from({ length: width }, () => 1 + std * randomNormal(rng)) });
    }
  }
  return { targetModules: opts.targetModules, feedforwardModules: opts.feedforwardModules, vectors };
}

export interface PromptLearningAdapterSpec {
  peftType: PromptLearningType;
  virtualTokens: number;
  /** Prompt/p-tuning: [virtualTokens, hidden]; prefix tuning: [virtualTokens, layers·2·kv_dim]. */
  embeddings: Float32Array;
}

export function promptLearningAdapterFiles(spec: PromptLearningAdapterSpec, base: LlamaConfig): Map<string, Uint8Array> {
  const isPrefix = spec.peftType === 'PREFIX_TUNING';
  const tokenDim = isPrefix ? base.numKvHeads * base.headDim : base.hiddenSize;
  const config: Record<string, unknown> = {
    peft_type: spec.peftType,
    task_type: 'CAUSAL_LM',
    num_virtual_tokens: spec.virtualTokens,
    token_dim: tokenDim,
    num_transformer_submodules: 1,
    num_attention_heads: isPrefix ? base.numKvHeads : base.numHeads,
    num_layers: base.numLayers,
    inference_mode: true,
    ...(isPrefix ? { prefix_projection: false, encoder_hidden_size: tokenDim } : {}),
    ...(spec.peftType === 'PROMPT_TUNING' ? { prompt_tuning_init: 'RANDOM' } : {}),
    ...(spec.peftType === 'P_TUNING' ? { encoder_reparameterization_type: 'MLP', encoder_hidden_size: base.hiddenSize } : {}),
  };
  const width = spec.embeddings.length / spec.virtualTokens;
  return files(config, { [PROMPT_EMBEDDINGS_TENSOR]: { dtype: 'F32', shape: [spec.virtualTokens, width], data: spec.embeddings } });
}

/** Seeded normal embeddings (std `std`) of the right width for the type. */
export function randomPromptLearningAdapter(
  base: LlamaConfig,
  opts: { peftType: PromptLearningType; virtualTokens: number; seed: number; std?: number },
): PromptLearningAdapterSpec {
  const rng = createRng(opts.seed);
  const width = opts.peftType === 'PREFIX_TUNING' ? base.numLayers * 2 * base.numKvHeads * base.headDim : base.hiddenSize;
  const std = opts.std ?? 1;
  const embeddings = Float32Array.from({ length: opts.virtualTokens * width }, () => std * randomNormal(rng));
  return { peftType: opts.peftType, virtualTokens: opts.virtualTokens, embeddings };
}

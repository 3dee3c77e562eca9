/**
 * The shapes every part of the runtime agrees on: a Llama-family configuration and its weights in one
 * canonical layout, whatever file format they came from.
 */

/** Rotary position embedding scaling as Hugging Face configs describe it (`rope_scaling`). */
export type RopeScaling =
  | { type: 'linear'; factor: number }
  | {
      type: 'llama3';
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositions: number;
    };

export interface LlamaConfig {
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  maxPositions: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  tieWordEmbeddings: boolean;
  bosTokenId: number;
  /** Every id that ends a sequence (generation_config may list several). */
  eosTokenIds: number[];
}

/** A dense float32 tensor, row-major. Linear weights are `[out, in]` as in PyTorch. */
export interface F32Tensor {
  shape: number[];
  data: Float32Array;
}

/** The seven projections a LoRA adapter may target, by their Hugging Face module names. */
export const LORA_TARGET_MODULES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type LoraTargetModule = (typeof LORA_TARGET_MODULES)[number];

/**
 * Canonical weight names are Hugging Face Llama names (`model.layers.3.self_attn.q_proj.weight`, ...).
 * q/k rows are always in Hugging Face's rotate-half order, so a GGUF model is permuted at load and adapters
 * trained against Hugging Face checkpoints apply unchanged.
 */
export type WeightMap = Map<string, F32Tensor>;

export interface BaseModel {
  config: LlamaConfig;
  weights: WeightMap;
  /** sha256 over the canonical weights (names, shapes, bytes), recorded at load. */
  checksum: string;
  source: { format: 'gguf' | 'hf'; path: string };
}

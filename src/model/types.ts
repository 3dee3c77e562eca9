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

/**
 * A weight matrix `[rows, columns]` (PyTorch `[out, in]`) kept block-quantized, in the layout onnxruntime's
 * `com.microsoft.MatMulNBits` reads: for column c of row r, with `b = c / blockSize`,
 *   value = scales[r·blocks + b] · (code − 2^(bits−1)) + offsets[r·columns/32 + c/32]   (offsets only when present)
 * Codes are unsigned, `blockSize·bits/8` bytes per block, a row's blocks contiguous; 4-bit codes two per byte,
 * the lower-numbered column in the low nibble. The zero point is always MatMulNBits' default, 2^(bits−1).
 */
export interface QuantizedMatrix {
  shape: [rows: number, columns: number];
  /** Where the values came from: the GGUF type (`Q4_0`, `Q4_K`, ...) or the on-load quantization's. */
  sourceType: string;
  bits: 4 | 8;
  blockSize: number;
  codes: Uint8Array;
  scales: Float32Array;
  /** K-quants' sub-block minimums: one additive term per row and 32 columns, `[rows, columns/32]`. */
  offsets?: Float32Array;
}

/** Columns that share one entry of `QuantizedMatrix.offsets` (the K-quants' sub-block width). */
export const QUANTIZED_OFFSET_BLOCK = 32;

/** Quantization applied at load to float weights: llama.cpp's Q8_0 or Q4_0. */
export type LoadQuantization = 'q8' | 'q4';

export interface BaseModel {
  config: LlamaConfig;
  weights: WeightMap;
  /**
   * Projection weights (and the output projection) served block-quantized, under their canonical names; a
   * name here is absent from `weights`. Absent or empty for a float model.
   */
  quantized?: Map<string, QuantizedMatrix>;
  /** sha256 over the weights as served (names, shapes, bytes; quantized ones in their served form), recorded at load. */
  checksum: string;
  source: { format: 'gguf' | 'hf'; path: string };
}

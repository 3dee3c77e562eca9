/**
 * Random-weight models with the shape of real ones. Speed depends on shape, not on what the weights learned,
 * so benchmarks run on these instead of multi-hundred-megabyte downloads.
 */
import { createRng, randomNormal } from '../engine/random.ts';
import { weightsChecksum } from './checksum.ts';
import type { BaseModel, LlamaConfig, WeightMap } from './types.ts';

/** The shape of SmolLM2-135M (Hugging Face config): hidden 576, 30 layers, 9 heads, 3 KV heads, ffn 1536. */
export const SMOLLM2_135M_SHAPE: LlamaConfig = {
  hiddenSize: 576,
  intermediateSize: 1536,
  numLayers: 30,
  numHeads: 9,
  numKvHeads: 3,
  headDim: 64,
  vocabSize: 49152,
  maxPositions: 8192,
  rmsNormEps: 1e-5,
  ropeTheta: 100000,
  ropeScaling: null,
  tieWordEmbeddings: true,
  bosTokenId: 1,
  eosTokenIds: [2],
};

/** Canonical weight names and shapes of a Llama-family model. */
export function llamaWeightShapes(c: LlamaConfig): Map<string, number[]> {
  const shapes = new Map<string, number[]>([['model.embed_tokens.weight', [c.vocabSize, c.hiddenSize]]]);
  const qDim = c.numHeads * c.headDim;
  const kvDim = c.numKvHeads * c.headDim;
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}`;
    shapes.set(`${p}.input_layernorm.weight`, [c.hiddenSize]);
    shapes.set(`${p}.self_attn.q_proj.weight`, [qDim, c.hiddenSize]);
    shapes.set(`${p}.self_attn.k_proj.weight`, [kvDim, c.hiddenSize]);
    shapes.set(`${p}.self_attn.v_proj.weight`, [kvDim, c.hiddenSize]);
    shapes.set(`${p}.self_attn.o_proj.weight`, [c.hiddenSize, qDim]);
    shapes.set(`${p}.post_attention_layernorm.weight`, [c.hiddenSize]);
    shapes.set(`${p}.mlp.gate_proj.weight`, [c.intermediateSize, c.hiddenSize]);
    shapes.set(`${p}.mlp.up_proj.weight`, [c.intermediateSize, c.hiddenSize]);
    shapes.set(`${p}.mlp.down_proj.weight`, [c.hiddenSize, c.intermediateSize]);
  }
  shapes.set('model.norm.weight', [c.hiddenSize]);
  if (!c.tieWordEmbeddings) shapes.set('lm_head.weight', [c.vocabSize, c.hiddenSize]);
  return shapes;
}

/** Seeded normal weights (std `std`); norm weights are 1 as in a freshly initialised model. */
export function randomBaseModel(config: LlamaConfig, seed: number, std = 0.02): BaseModel {
  const rng = createRng(seed);
  const weights: WeightMap = new Map();
  for (const [name, shape] of llamaWeightShapes(config)) {
    const size = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(size);
    if (name.endsWith('norm.weight')) data.fill(1);
    else for (let i = 0; i < size; i++) data[i] = std * randomNormal(rng);
    weights.set(name, { shape, data });
  }
  return { config, weights, checksum: weightsChecksum(weights), source: { format: 'hf', path: `random:${seed}` } };
}

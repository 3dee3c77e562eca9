/**
 * Random-weight models with the shape of real ones. Speed depends on shape, not on what the weights learned,
 * so benchmarks run on these instead of multi-hundred-megabyte downloads.
 */
import { createRng, randomNormal } from '../engine/random.ts';
import { elementCount } from '../formats/tensor-shape.ts';
import { weightsChecksum } from './checksum.ts';
import type { BaseModel, LlamaConfig, WeightMap } from './types.ts';
import { llamaWeightShapes } from './weight-shapes.ts';

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

/** Seeded normal weights (std `std`); norm weights are 1 as in a freshly initialised model. */
export function randomBaseModel(config: LlamaConfig, seed: number, std = 0.02): BaseModel {
  const rng = createRng(seed);
  const weights: WeightMap = new Map();
  for (const [name, shape] of llamaWeightShapes(config)) {
    const size = elementCount(shape);
    const data = new Float32Array(size);
    if (name.endsWith('norm.weight')) data.fill(1);
    else for (let i = 0; i < size; i++) data[i] = std * randomNormal(rng);
    weights.set(name, { shape, data });
  }
  return { config, weights, checksum: weightsChecksum(weights), source: { format: 'hf', path: `random:${seed}` } };
}

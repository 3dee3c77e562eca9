import type { LlamaConfig } from '../../src/model/types.ts';

/** A Llama shape small enough for finite differences and per-element checks: 2 layers, GQA, 16 hidden. */
export const TINY: LlamaConfig = {
  hiddenSize: 16,
  intermediateSize: 24,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 4,
  vocabSize: 32,
  maxPositions: 64,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  ropeScaling: null,
  tieWordEmbeddings: true,
  bosTokenId: 1,
  eosTokenIds: [2],
};

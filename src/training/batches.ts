/** Examples to packed batches, and the seeded order in which an epoch visits them. */
import { createRng } from '../engine/random.ts';
import type { PackedBatch } from './training-model.ts';

/**
 * One tokenised example: `tokens` are model input ids; `lossMask[i] = 1` when tokens[i] is a prediction target
 * (its loss is taken from the logits at position i-1). lossMask[0] is always 0.
 */
export interface TrainingSequence {
  tokens: Int32Array;
  lossMask: Uint8Array;
}

/** Prediction targets in a sequence (positions ≥ 1 whose mask is set). */
export function targetCount(sequence: TrainingSequence): number {
  let count = 0;
  for (let i = 1; i < sequence.tokens.length; i++) count += sequence.lossMask[i] ? 1 : 0;
  return count;
}

/**
 * Right-pads `sequences` to the longest and weights each target by `targetWeight` (1 / the targets of the whole
 * optimizer step, so accumulated micro-batches add up to the mean loss per target token).
 */
export function packBatch(sequences: TrainingSequence[], targetWeight: number): PackedBatch {
  const rows = sequences.length;
  const tokens = Math.max(...sequences.map((s) => s.tokens.length));
  const inputIds = new Int32Array(rows * tokens);
  const labels = new BigInt64Array(rows * tokens);
  const tokenWeights = new Float32Array(rows * tokens);
  sequences.forEach((sequence, row) => {
    const base = row * tokens;
    inputIds.set(sequence.tokens, base);
    for (let i = 0; i + 1 < sequence.tokens.length; i++) {
      labels[base + i] = BigInt(sequence.tokens[i + 1]);
      if (sequence.lossMask[i + 1]) tokenWeights[base + i] = targetWeight;
    }
  });
  return { rows, tokens, inputIds, labels, tokenWeights };
}

/** A seeded permutation of 0..count-1 for one epoch (Fisher–Yates). */
export function epochOrder(count: number, seed: number, epoch: number): number[] {
  const rng = createRng(seed * 1009 + epoch);
  const order = [...Array(count).keys()];
  for (let i = count - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

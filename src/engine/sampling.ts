/**
 * Per-request next-token choice with OpenAI/vLLM semantics: penalties on the tokens generated so far,
 * then temperature, top-k, top-p and min-p, then a draw from a seeded generator. Runs once per token over
 * the whole vocabulary, so it never sorts it: top-k keeps a heap of k candidates, top-p partitions around
 * the nucleus boundary, and every pass works in scratch buffers allocated once, not per token.
 */

import { randomInt } from 'node:crypto';
import { createRng } from './random.ts';

export interface SamplingParams {
  /** 0 (or anything below 1e-5) picks the most likely token every time. */
  temperature: number;
  /** Nucleus mass in (0, 1]; 1 keeps every token. */
  topP: number;
  /** Keep only the k most likely tokens; 0 = off. */
  topK: number;
  /** Drop tokens less likely than minP times the most likely one; 0 or absent = off. */
  minP?: number;
  presencePenalty: number;
  frequencyPenalty: number;
  /** Multiplicative penalty (Hugging Face/vLLM style) on tokens already generated; 1 or absent = off. */
  repetitionPenalty?: number;
  /** Same seed, same parameters and same logits → same tokens. Absent = a fresh random seed. */
  seed?: number;
  /** How many most likely alternatives to report per token (0..20); absent = none. */
  logprobs?: number;
}

export interface SampledToken {
  id: number;
  /**
   * Log-probability of `id` under the penalised logits, before temperature and truncation. Absent for greedy
   * decoding without `logprobs`, where computing it would be the sampler's only cost.
   */
  logprob?: number;
  /** The `logprobs` most likely tokens under the same distribution, most likely first. */
  topLogprobs?: { id: number; logprob: number }[];
}

export const MAX_TOP_LOGPROBS = 20;

/**
 * Temperatures below this are treated as 0 (greedy), as vLLM does: dividing by them would overflow the
 * weights, and the distribution is already a point mass in all but name.
 */
const GREEDY_TEMPERATURE = 1e-5;

/** Largest seed `randomInt` can draw (its range must stay below 2^48). */
const MAX_RANDOM_SEED = 2 ** 48 - 1;

/**
 * Per-step scratch shared by every sampler. `sample` runs start to finish synchronously, so no two steps
 * ever use it at once, and memory stays flat however many requests are in flight.
 */
const scratch = { logits: new Float32Array(0), weights: new Float64Array(0), ids: new Int32Array(0) };

function scratchFor(vocabSize: number): typeof scratch {
  if (scratch.logits.length < vocabSize) {
    // Samplers built before growth keep their views of the old buffers, which stay valid for them.
    scratch.logits = new Float32Array(vocabSize);
    scratch.weights = new Float64Array(vocabSize);
    scratch.ids = new Int32Array(vocabSize);
  }
  return {
    logits: scratch.logits.subarray(0, vocabSize),
    weights: scratch.weights.subarray(0, vocabSize),
    ids: scratch.ids.subarray(0, vocabSize),
  };
}

export class TokenSampler {
  private readonly params: SamplingParams;
  private readonly rng: () => number;
  private readonly minP: number;
  private readonly repetitionPenalty: number;
  /** The step's logits with penalties applied; a copy because the caller's array may be a shared buffer. */
  private readonly logits: Float32Array;
  /** Each token's probability relative to the most likely token (which weighs exactly 1). */
  private readonly weights: Float64Array;
  /** Token ids being ranked or partitioned. */
  private readonly ids: Int32Array;
  /** How often each generated token id has been chosen so far; sparse because outputs are short. */
  private readonly generatedCounts = new Map<number, number>();
  private readonly topKIds: Int32Array | null;
  private readonly topLogprobIds: Int32Array | null;

  constructor(params: SamplingParams, vocabSize: number) {
    validateParams(params);
    if (!Number.isInteger(vocabSize) || vocabSize < 1) {
      throw new RangeError(`vocabSize must be a positive integer, got ${vocabSize}`);
    }
    this.params = params;
    this.rng = createRng(params.seed ?? randomInt(MAX_RANDOM_SEED));
    this.minP = params.minP ?? 0;
    this.repetitionPenalty = params.repetitionPenalty ?? 1;
    ({ logits: this.logits, weights: this.weights, ids: this.ids } = scratchFor(vocabSize));
    this.topKIds = params.topK > 0 && params.topK < vocabSize ? new Int32Array(params.topK) : null;
    this.topLogprobIds = params.logprobs === undefined ? null : new Int32Array(Math.min(params.logprobs, vocabSize));
  }

  /** Chooses the next token from one step's logits and remembers it for the penalties of later steps. */
  sample(stepLogits: Float32Array): SampledToken {
    const { logits, weights } = this;
    if (stepLogits.length !== logits.length) {
      throw new RangeError(
        `logits have ${stepLogits.length} entries but the sampler was built for a vocabulary of ${logits.length}`,
      );
    }
    logits.set(stepLogits);
    this.applyPenalties();

    let argmax = 0;
    let max = logits[0];
    for (let i = 1; i < logits.length; i++) {
      if (logits[i] > max) {
        max = logits[i];
        argmax = i;
      }
    }
    const greedy = this.params.temperature < GREEDY_TEMPERATURE || this.params.topK === 1;
    if (greedy && !this.topLogprobIds) {
      // The common serving case: no distribution needed, so skip the pass of exp over the whole vocabulary.
      if (!Number.isFinite(max)) {
        throw new RangeError('logits contain NaN or +Infinity, or are all -Infinity; the model output is unusable');
      }
      this.generatedCounts.set(argmax, (this.generatedCounts.get(argmax) ?? 0) + 1);
      return { id: argmax };
    }
    let sumExp = 0;
    for (let i = 0; i < logits.length; i++) {
      const w = Math.exp(logits[i] - max);
      weights[i] = w;
      sumExp += w;
    }
    const logNormaliser = max + Math.log(sumExp);
    // NaN or +Infinity anywhere, or every entry -Infinity, leaves the normaliser non-finite.
    if (!Number.isFinite(logNormaliser)) {
      throw new RangeError('logits contain NaN or +Infinity, or are all -Infinity; the model output is unusable');
    }

    const id = greedy ? argmax : this.sampleStochastic(max);
    this.generatedCounts.set(id, (this.generatedCounts.get(id) ?? 0) + 1);

    const token: SampledToken = { id, logprob: logits[id] - logNormaliser };
    if (this.topLogprobIds) {
      const ranked = this.topLogprobIds;
      selectTopIds(logits, ranked);
      token.topLogprobs = Array.from(ranked, (rankedId) => ({
        id: rankedId,
        logprob: logits[rankedId] - logNormaliser,
      }));
    }
    return token;
  }

  private applyPenalties(): void {
    const { presencePenalty, frequencyPenalty } = this.params;
    const repetition = this.repetitionPenalty;
    const logits = this.logits;
    for (const [id, count] of this.generatedCounts) {
      let logit = logits[id];
      // Dividing a positive logit and multiplying a negative one both make the token less likely.
      if (repetition !== 1) logit = logit > 0 ? logit / repetition : logit * repetition;
      logits[id] = logit - count * frequencyPenalty - presencePenalty;
    }
  }

  /** Relies on `sample` having left the temperature-1 weights in `weights`. */
  private sampleStochastic(max: number): number {
    const { logits, weights } = this;
    const temperature = this.params.temperature;
    const inverseTemperature = 1 / temperature;

    if (this.topKIds) {
      const ranked = this.topKIds;
      selectTopIds(logits, ranked);
      let total = 0;
      for (const id of ranked) {
        const w = Math.exp((logits[id] - max) * inverseTemperature);
        weights[id] = w;
        total += w;
      }
      // Both lists are best first, so the top-p cut is a prefix.
      const limit = this.params.topP * total;
      let kept = 0;
      let mass = 0;
      while (kept < ranked.length && mass < limit) mass += weights[ranked[kept++]];
      return this.draw(ranked, kept);
    }

    if (temperature !== 1) {
      for (let i = 0; i < logits.length; i++) weights[i] = Math.exp((logits[i] - max) * inverseTemperature);
    }
    if (this.params.topP < 1) return this.draw(this.ids, this.selectNucleus());
    return this.draw(null, logits.length);
  }

  /**
   * Gathers the top-p nucleus into `ids[0..returned)`, in no particular order: a token belongs to it when the
   * tokens ranked above it hold less than topP of the mass (so the most likely token always does). Found by
   * quickselect-style partitioning in expected linear time, because a flat distribution can put most of the
   * vocabulary in the nucleus and ranking it one token at a time would cost a full sort.
   */
  private selectNucleus(): number {
    const { logits, weights, ids } = this;
    let total = 0;
    let size = 0;
    for (let i = 0; i < weights.length; i++) {
      const w = weights[i];
      total += w;
      // A token whose weight underflows to 0 can neither be drawn nor move the nucleus boundary.
      if (w > 0) ids[size++] = i;
    }
    const limit = this.params.topP * total;

    // Invariant: ids[0..lo) are in the nucleus and hold `massAbove`; ids[hi..size) are not; ids[lo..hi) are
    // undecided and rank below everything in ids[0..lo).
    let lo = 0;
    let hi = size;
    let massAbove = 0;
    while (lo < hi) {
      movePivotToEnd(ids, lo, hi, logits);
      const pivot = ids[hi - 1];
      let store = lo;
      let betterMass = 0;
      for (let j = lo; j < hi - 1; j++) {
        const id = ids[j];
        if (outranks(logits, id, pivot)) {
          ids[j] = ids[store];
          ids[store++] = id;
          betterMass += weights[id];
        }
      }
      ids[hi - 1] = ids[store];
      ids[store] = pivot;
      if (massAbove + betterMass >= limit) {
        hi = store;
      } else {
        massAbove += betterMass + weights[pivot];
        lo = store + 1;
        if (massAbove >= limit) break;
      }
    }
    return lo;
  }

  /** Draws one of `ids[0..count)` (or of tokens 0..count when `ids` is null) by weight, after min-p. */
  private draw(ids: Int32Array | null, count: number): number {
    const { weights, minP } = this;
    let total = 0;
    for (let i = 0; i < count; i++) {
      const w = weights[ids ? ids[i] : i];
      if (w >= minP) total += w;
    }
    const target = this.rng() * total;
    let cumulative = 0;
    for (let i = 0; i < count; i++) {
      const id = ids ? ids[i] : i;
      const w = weights[id];
      if (w < minP) continue;
      cumulative += w;
      // Zero-weight tokens never pass: the cumulative sum does not grow at them.
      if (target < cumulative) return id;
    }
    throw new Error('internal error: the sampling draw fell outside the kept tokens');
  }
}

function validateParams(params: SamplingParams): void {
  const { temperature, topP, topK, minP, presencePenalty, frequencyPenalty, repetitionPenalty, logprobs } =
    params;
  if (!(Number.isFinite(temperature) && temperature >= 0)) {
    throw new RangeError(`temperature must be a finite number >= 0, got ${temperature}`);
  }
  if (!(topP > 0 && topP <= 1)) throw new RangeError(`topP must be in (0, 1], got ${topP}`);
  if (!(Number.isInteger(topK) && topK >= 0)) {
    throw new RangeError(`topK must be an integer >= 0 (0 = off), got ${topK}`);
  }
  if (minP !== undefined && !(minP >= 0 && minP <= 1)) throw new RangeError(`minP must be in [0, 1], got ${minP}`);
  if (!Number.isFinite(presencePenalty)) throw new RangeError(`presencePenalty must be finite, got ${presencePenalty}`);
  if (!Number.isFinite(frequencyPenalty)) {
    throw new RangeError(`frequencyPenalty must be finite, got ${frequencyPenalty}`);
  }
  if (repetitionPenalty !== undefined && !(Number.isFinite(repetitionPenalty) && repetitionPenalty > 0)) {
    throw new RangeError(`repetitionPenalty must be a finite number > 0 (1 = off), got ${repetitionPenalty}`);
  }
  if (logprobs !== undefined && !(Number.isInteger(logprobs) && logprobs >= 0 && logprobs <= MAX_TOP_LOGPROBS)) {
    throw new RangeError(`logprobs must be an integer from 0 to ${MAX_TOP_LOGPROBS}, got ${logprobs}`);
  }
}

/** Median-of-three pivot choice, so already ordered logits do not degrade partitioning to quadratic time. */
function movePivotToEnd(ids: Int32Array, lo: number, hi: number, values: Float32Array): void {
  const last = hi - 1;
  const mid = lo + ((last - lo) >> 1);
  const a = ids[lo];
  const b = ids[mid];
  const c = ids[last];
  // When a ranks above both or below both, the median is whichever of b and c lies between; else it is a.
  const median =
    outranks(values, a, b) === outranks(values, a, c)
      ? outranks(values, b, c) === outranks(values, a, b)
        ? mid
        : last
      : lo;
  const chosen = ids[median];
  ids[median] = ids[last];
  ids[last] = chosen;
}

/** Whether token `a` ranks above token `b`: higher logit, ties to the lower id so results are deterministic. */
function outranks(values: Float32Array, a: number, b: number): boolean {
  return values[a] > values[b] || (values[a] === values[b] && a < b);
}

/**
 * Restores the heap property below `pos`. With `bestOnTop` the root is the highest-ranked token,
 * otherwise the lowest-ranked one.
 */
function siftDown(heap: Int32Array, size: number, pos: number, values: Float32Array, bestOnTop: boolean): void {
  const item = heap[pos];
  for (;;) {
    let child = 2 * pos + 1;
    if (child >= size) break;
    const right = child + 1;
    if (right < size && outranks(values, heap[right], heap[child]) === bestOnTop) child = right;
    if (outranks(values, heap[child], item) !== bestOnTop) break;
    heap[pos] = heap[child];
    pos = child;
  }
  heap[pos] = item;
}

/**
 * Fills `out` with the ids of the `out.length` highest values, best first, in O(n log k): a heap of the
 * best so far whose root is the weakest member, so most tokens cost one comparison.
 */
function selectTopIds(values: Float32Array, out: Int32Array): void {
  const k = out.length;
  if (k === 0) return;
  for (let i = 0; i < k; i++) out[i] = i;
  for (let i = (k >> 1) - 1; i >= 0; i--) siftDown(out, k, i, values, false);
  for (let i = k; i < values.length; i++) {
    // Later ids lose ties, so only a strictly higher value displaces the weakest member.
    if (values[i] > values[out[0]]) {
      out[0] = i;
      siftDown(out, k, 0, values, false);
    }
  }
  // Heap sort: each weakest remaining member moves to the back, leaving the array best first.
  for (let end = k - 1; end > 0; end--) {
    const weakest = out[0];
    out[0] = out[end];
    out[end] = weakest;
    siftDown(out, end, 0, values, false);
  }
}

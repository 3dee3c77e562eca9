import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRng, randomNormal } from '../src/engine/random.ts';
import { TokenSampler, type SamplingParams } from '../src/engine/sampling.ts';

const DEFAULTS: SamplingParams = { temperature: 1, topP: 1, topK: 0, presencePenalty: 0, frequencyPenalty: 0 };

function sampler(params: Partial<SamplingParams>, vocabSize: number): TokenSampler {
  return new TokenSampler({ ...DEFAULTS, ...params }, vocabSize);
}

/** Log-softmax in double precision, written independently of the sampler. */
function logSoftmax(logits: ArrayLike<number>): number[] {
  const values = Array.from(logits);
  const max = values.reduce((a, b) => Math.max(a, b), -Infinity);
  const logSum = Math.log(values.reduce((sum, x) => sum + Math.exp(x - max), 0)) + max;
  return values.map((x) => x - logSum);
}

function randomLogits(vocabSize: number, seed: number, scale = 3): Float32Array {
  const rng = createRng(seed);
  return Float32Array.from({ length: vocabSize }, () => scale * randomNormal(rng));
}

function drawFrequencies(s: TokenSampler, logits: Float32Array, draws: number): number[] {
  const counts = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < draws; i++) counts[s.sample(logits).id]++;
  return counts.map((c) => c / draws);
}

function assertFrequencies(actual: number[], expected: number[], tolerance: number): void {
  assert.equal(actual.length, expected.length);
  for (let i = 0; i < expected.length; i++) {
    assert.ok(
      Math.abs(actual[i] - expected[i]) <= tolerance,
      `token ${i}: frequency ${actual[i].toFixed(4)}, expected ${expected[i].toFixed(4)} ± ${tolerance}`,
    );
  }
}

const FOUR_PROBS = [0.1, 0.2, 0.3, 0.4];
const FOUR_LOGITS = Float32Array.from(FOUR_PROBS, Math.log);
// 20k draws: one standard deviation of a frequency is at most 0.0035, so 0.015 is over four of them.
const DRAWS = 20_000;
const TOLERANCE = 0.015;

test('createRng: reproducible uniform numbers in [0, 1), distinct across seeds', () => {
  const a = createRng(42);
  const b = createRng(42);
  const first = Array.from({ length: 1000 }, () => a());
  assert.deepEqual(Array.from({ length: 1000 }, () => b()), first);
  assert.ok(first.every((x) => x >= 0 && x < 1));

  const otherLow = createRng(43);
  const otherHigh = createRng(42 + 2 ** 32);
  assert.notDeepEqual(Array.from({ length: 10 }, () => otherLow()), first.slice(0, 10));
  assert.notDeepEqual(Array.from({ length: 10 }, () => otherHigh()), first.slice(0, 10));

  const rng = createRng(7);
  const buckets = new Array<number>(10).fill(0);
  for (let i = 0; i < 100_000; i++) buckets[Math.floor(rng() * 10)]++;
  for (const count of buckets) assert.ok(Math.abs(count - 10_000) < 500, `bucket count ${count}`);

  assert.throws(() => createRng(Number.NaN), /finite/);
});

test('randomNormal: mean 0 and variance 1', () => {
  const rng = createRng(3);
  const n = 50_000;
  const xs = Array.from({ length: n }, () => randomNormal(rng));
  const mean = xs.reduce((s, x) => s + x, 0) / n;
  const variance = xs.reduce((s, x) => s + (x - mean) ** 2, 0) / n;
  assert.ok(Math.abs(mean) < 0.02, `mean ${mean}`);
  assert.ok(Math.abs(variance - 1) < 0.03, `variance ${variance}`);
  assert.ok(xs.every(Number.isFinite));
});

test('temperature 0 picks the argmax, lowest id on ties, whatever the seed', () => {
  const logits = Float32Array.from([0.5, 2, -1, 2, 1.9]);
  for (const seed of [1, 2, 3]) {
    const s = sampler({ temperature: 0, seed }, logits.length);
    for (let i = 0; i < 20; i++) assert.equal(s.sample(logits).id, 1);
  }
  const big = randomLogits(5000, 11);
  const expected = big.indexOf(Math.max(...big));
  assert.equal(sampler({ temperature: 0 }, big.length).sample(big).id, expected);
});

test('the same seed reproduces a sequence of 200 tokens; different seeds give different ones', () => {
  const logits = randomLogits(512, 5, 1);
  const run = (seed: number) => {
    const s = sampler({ temperature: 0.9, topP: 0.95, topK: 100, seed }, logits.length);
    return Array.from({ length: 200 }, () => s.sample(logits).id);
  };
  const first = run(1234);
  assert.deepEqual(run(1234), first);
  assert.notDeepEqual(run(1235), first);

  const unseeded = () => {
    const s = sampler({}, logits.length);
    return Array.from({ length: 200 }, () => s.sample(logits).id);
  };
  assert.notDeepEqual(unseeded(), unseeded());
});

test('top_k = 1 always returns the argmax, even at high temperature', () => {
  const logits = randomLogits(1000, 8, 0.5);
  const argmax = logits.indexOf(Math.max(...logits));
  const s = sampler({ temperature: 5, topK: 1, seed: 1 }, logits.length);
  for (let i = 0; i < 200; i++) assert.equal(s.sample(logits).id, argmax);
});

test('a tiny top_p keeps only the most likely token', () => {
  const logits = randomLogits(1000, 9, 0.5);
  const argmax = logits.indexOf(Math.max(...logits));
  const s = sampler({ temperature: 1.5, topP: 1e-6, seed: 2 }, logits.length);
  for (let i = 0; i < 200; i++) assert.equal(s.sample(logits).id, argmax);
});

test('at temperature 1 draws follow the softmax probabilities', () => {
  const s = sampler({ seed: 99 }, 4);
  assertFrequencies(drawFrequencies(s, FOUR_LOGITS, DRAWS), FOUR_PROBS, TOLERANCE);
});

test('temperature sharpens below 1 and flattens above 1', () => {
  for (const temperature of [0.5, 2]) {
    const expected = logSoftmax(FOUR_LOGITS.map((x) => x / temperature)).map(Math.exp);
    const s = sampler({ temperature, seed: 17 }, 4);
    assertFrequencies(drawFrequencies(s, FOUR_LOGITS, DRAWS), expected, TOLERANCE);
  }
  // p^2 renormalised: 0.16 / 0.30 for the most likely token, against 0.4 at temperature 1.
  const cold = drawFrequencies(sampler({ temperature: 0.5, seed: 4 }, 4), FOUR_LOGITS, DRAWS);
  assert.ok(cold[3] > 0.5);
});

test('top_k renormalises over the k most likely tokens', () => {
  const s = sampler({ topK: 2, seed: 21 }, 4);
  assertFrequencies(drawFrequencies(s, FOUR_LOGITS, DRAWS), [0, 0, 3 / 7, 4 / 7], TOLERANCE);
});

test('top_p keeps the smallest most-likely set reaching the mass', () => {
  // 0.4 alone is below 0.5, so 0.3 joins; 0.4 + 0.3 reaches it, so 0.2 does not.
  const s = sampler({ topP: 0.5, seed: 22 }, 4);
  assertFrequencies(drawFrequencies(s, FOUR_LOGITS, DRAWS), [0, 0, 3 / 7, 4 / 7], TOLERANCE);
  const withTopK = sampler({ topP: 0.5, topK: 3, seed: 23 }, 4);
  // Within the top 3 (0.2, 0.3, 0.4 → 2/9, 3/9, 4/9) the top two already pass 0.5.
  assertFrequencies(drawFrequencies(withTopK, FOUR_LOGITS, DRAWS), [0, 0, 3 / 7, 4 / 7], TOLERANCE);

  // Ten equally likely tokens rank by id: the nucleus is the four whose predecessors hold less than 0.35.
  const flat = new Float32Array(10);
  const quarter = [0.25, 0.25, 0.25, 0.25, 0, 0, 0, 0, 0, 0];
  assertFrequencies(drawFrequencies(sampler({ topP: 0.35, seed: 25 }, 10), flat, DRAWS), quarter, TOLERANCE);
  // Top-k 5 keeps ids 0..4; 0.7 of those five is again the first four.
  assertFrequencies(drawFrequencies(sampler({ topK: 5, topP: 0.7, seed: 26 }, 10), flat, DRAWS), quarter, TOLERANCE);
});

test('min_p drops tokens below a fraction of the most likely one', () => {
  // Relative to 0.4: 0.3 → 0.75 and 0.2 → 0.5, so min_p 0.6 keeps only the top two.
  const s = sampler({ minP: 0.6, seed: 24 }, 4);
  assertFrequencies(drawFrequencies(s, FOUR_LOGITS, DRAWS), [0, 0, 3 / 7, 4 / 7], TOLERANCE);
});

test('top_p over a large vocabulary draws only from the exact nucleus', () => {
  const vocabSize = 32_000;
  const logits = randomLogits(vocabSize, 31, 2);
  const probs = logSoftmax(logits).map(Math.exp);
  const order = Array.from(probs.keys()).sort((a, b) => probs[b] - probs[a]);
  const nucleus = new Set<number>();
  let mass = 0;
  for (const id of order) {
    if (mass >= 0.3) break;
    nucleus.add(id);
    mass += probs[id];
  }
  assert.ok(nucleus.size > 50, 'the test needs a nucleus with many tokens');

  const s = sampler({ topP: 0.3, seed: 5 }, vocabSize);
  const seen = new Set<number>();
  for (let i = 0; i < 300; i++) {
    const { id } = s.sample(logits);
    assert.ok(nucleus.has(id), `token ${id} is outside the nucleus`);
    seen.add(id);
  }
  assert.ok(seen.size > 20, 'draws should spread over the nucleus');
});

test('logprob and top logprobs are the log-softmax of the logits before temperature and truncation', () => {
  const vocabSize = 150_000;
  const logits = randomLogits(vocabSize, 41, 2);
  const reference = logSoftmax(logits);
  const ranked = Array.from(reference.keys()).sort((a, b) => reference[b] - reference[a] || a - b);

  const s = sampler({ temperature: 0.7, topK: 40, topP: 0.9, logprobs: 20, seed: 6 }, vocabSize);
  const token = s.sample(logits);
  assert.ok(Math.abs(token.logprob! - reference[token.id]) < 1e-4);
  assert.equal(token.topLogprobs?.length, 20);
  assert.deepEqual(
    token.topLogprobs?.map((t) => t.id),
    ranked.slice(0, 20),
  );
  for (const alternative of token.topLogprobs ?? []) {
    assert.ok(Math.abs(alternative.logprob - reference[alternative.id]) < 1e-4);
  }
});

test('top logprobs: sorted, ties by lowest id, empty for 0 and absent when not asked', () => {
  const logits = Float32Array.from([1, 3, 2, 3, 0]);
  const three = sampler({ temperature: 0, logprobs: 3 }, 5).sample(logits).topLogprobs;
  assert.deepEqual(three?.map((t) => t.id), [1, 3, 2]);
  assert.ok(three && three[0].logprob === three[1].logprob && three[1].logprob > three[2].logprob);
  assert.deepEqual(sampler({ temperature: 0, logprobs: 0 }, 5).sample(logits).topLogprobs, []);
  assert.equal(sampler({ temperature: 0 }, 5).sample(logits).topLogprobs, undefined);
});

test('presence and frequency penalties lower generated tokens by count * frequency + presence', () => {
  const logits = Float32Array.from([3, 2.9, 0, -1]);
  const presence = 0.5;
  const frequency = 0.25;
  const s = sampler({ temperature: 0, presencePenalty: presence, frequencyPenalty: frequency, logprobs: 4 }, 4);
  const penalty = (count: number) => (count > 0 ? count * frequency + presence : 0);
  const counts = [0, 0, 0, 0];

  for (let step = 0; step < 6; step++) {
    const token = s.sample(logits);
    const expected = logSoftmax(Array.from(logits, (x, id) => x - penalty(counts[id])));
    const expectedId = expected.indexOf(Math.max(...expected));
    assert.equal(token.id, expectedId, `step ${step}`);
    for (const { id, logprob } of token.topLogprobs ?? []) {
      assert.ok(Math.abs(logprob - expected[id]) < 1e-5, `step ${step} token ${id}: ${logprob} vs ${expected[id]}`);
    }
    counts[token.id]++;
  }
  // The penalties made the sampler alternate instead of repeating token 0.
  assert.ok(counts[0] > 0 && counts[1] > 0);
});

test('repetition penalty divides positive and multiplies negative logits of generated tokens', () => {
  const logits = Float32Array.from([2, -1, 1.5]);
  const s = sampler({ temperature: 0, repetitionPenalty: 2, logprobs: 3 }, 3);
  assert.equal(s.sample(logits).id, 0);
  const second = s.sample(logits);
  // Token 0 falls from 2 to 1, below token 2.
  assert.equal(second.id, 2);
  const expected = logSoftmax([1, -1, 1.5]);
  for (const { id, logprob } of second.topLogprobs ?? []) assert.ok(Math.abs(logprob - expected[id]) < 1e-6);

  const negative = sampler({ temperature: 0, topK: 0, repetitionPenalty: 2, logprobs: 3 }, 2);
  const flat = Float32Array.from([-1, -1.5]);
  assert.equal(negative.sample(flat).id, 0);
  // Token 0 falls from -1 to -2, below token 1.
  assert.equal(negative.sample(flat).id, 1);
});

test("the caller's logits are never written, even as a view into a shared buffer", () => {
  const shared = randomLogits(3 * 1000, 51);
  const before = shared.slice();
  const row = shared.subarray(1000, 2000);
  const s = sampler(
    { temperature: 0.8, topP: 0.9, presencePenalty: 1, frequencyPenalty: 1, repetitionPenalty: 1.3, seed: 1 },
    1000,
  );
  for (let i = 0; i < 50; i++) s.sample(row);
  assert.deepEqual(shared, before);
});

test('rejects unusable parameters and logits with a clear message', () => {
  assert.throws(() => sampler({ temperature: -1 }, 4), /temperature/);
  assert.throws(() => sampler({ topP: 0 }, 4), /topP/);
  assert.throws(() => sampler({ topK: 1.5 }, 4), /topK/);
  assert.throws(() => sampler({ minP: 2 }, 4), /minP/);
  assert.throws(() => sampler({ logprobs: 21 }, 4), /logprobs/);
  assert.throws(() => sampler({ repetitionPenalty: 0 }, 4), /repetitionPenalty/);
  assert.throws(() => sampler({}, 0), /vocabSize/);
  const s = sampler({}, 4);
  assert.throws(() => s.sample(new Float32Array(5)), /vocabulary of 4/);
  assert.throws(() => s.sample(Float32Array.from([0, Number.NaN, 1, 2])), /NaN/);
  assert.throws(() => s.sample(new Float32Array(4).fill(-Infinity)), /-Infinity/);
});

test('tokens masked with -Infinity are never drawn', () => {
  const logits = Float32Array.from([0, -Infinity, 0, -Infinity]);
  for (const params of [{}, { topK: 3 }, { topP: 0.99 }, { minP: 0.1 }]) {
    const frequencies = drawFrequencies(sampler({ ...params, seed: 8 }, 4), logits, 2000);
    assert.equal(frequencies[1] + frequencies[3], 0);
    assert.ok(frequencies[0] > 0.4 && frequencies[2] > 0.4);
  }
});

test('greedy decoding without logprobs reports no logprob, and with logprobs reports the exact one', () => {
  const logits = randomLogits(1000, 43, 2);
  const plain = sampler({ temperature: 0 }, 1000).sample(logits);
  const withLogprobs = sampler({ temperature: 0, logprobs: 0 }, 1000).sample(logits);
  assert.equal(plain.logprob, undefined);
  assert.equal(plain.id, withLogprobs.id);
  assert.ok(Math.abs(withLogprobs.logprob! - logSoftmax(logits)[plain.id]) < 1e-4);
});

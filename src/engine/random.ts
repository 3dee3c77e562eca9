/**
 * Seeded pseudo-random numbers: xoshiro128** (Blackman & Vigna), with its 128-bit state filled by a
 * splitmix-style hash of the seed. Fast, small state, good statistical quality — not for cryptography.
 */

const TWO_POW_32 = 4294967296;
const GOLDEN_RATIO_32 = 0x9e3779b9;

/** murmur3's 32-bit finaliser: a bijection that spreads every input bit over the output. */
function mix32(h: number): number {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) | 0;
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/**
 * Returns a generator of uniform numbers in [0, 1) that yields the same sequence for the same seed.
 * Integer seeds up to 2^53 are all distinct (the low and high 32 bits seed separate halves of the state);
 * a fractional seed is floored.
 */
export function createRng(seed: number): () => number {
  if (!Number.isFinite(seed)) {
    throw new RangeError(`random seed must be a finite number, got ${seed}`);
  }
  const whole = Math.floor(seed);
  const low = whole >>> 0;
  const high = Math.floor(whole / TWO_POW_32) >>> 0;
  // Each half of the state comes from its own Weyl sequence through a bijective hash, so no seed can
  // produce the all-zero state xoshiro never leaves.
  let s0 = mix32(low + GOLDEN_RATIO_32);
  let s1 = mix32(low + 2 * GOLDEN_RATIO_32);
  let s2 = mix32(high + 3 * GOLDEN_RATIO_32);
  let s3 = mix32(high + 4 * GOLDEN_RATIO_32);

  return () => {
    const result = Math.imul(rotl(Math.imul(s1, 5), 7), 9);
    const t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = rotl(s3, 11);
    return (result >>> 0) / TWO_POW_32;
  };
}

/** One standard normal draw (mean 0, variance 1) by the Box–Muller transform. */
export function randomNormal(rng: () => number): number {
  // 1 - u lies in (0, 1], keeping the logarithm finite.
  const radius = Math.sqrt(-2 * Math.log(1 - rng()));
  return radius * Math.cos(2 * Math.PI * rng());
}

/**
 * Zipf-distributed ranks, the usual model of adapter popularity: a few adapters take most of the traffic and a
 * long tail is asked for rarely, which is what exercises the adapter cache tiers.
 */

/**
 * Returns a sampler of ranks 0..n-1 where rank k is drawn with probability proportional to 1/(k+1)^exponent
 * (exponent 0 is uniform). `random` yields uniform numbers in [0, 1); a seeded one makes the sequence repeatable.
 */
export function zipfSampler(n: number, exponent: number, random: () => number): () => number {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`a Zipf distribution needs at least one rank, got ${n}`);
  if (!Number.isFinite(exponent) || exponent < 0) throw new RangeError(`the Zipf exponent must be 0 or more, got ${exponent}`);
  const cumulative = new Float64Array(n);
  let total = 0;
  for (let k = 0; k < n; k++) cumulative[k] = total += (k + 1) ** -exponent;
  return () => {
    const target = random() * total;
    // The first rank whose cumulative weight exceeds the target.
    let low = 0;
    let high = n - 1;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (cumulative[middle] > target) high = middle;
      else low = middle + 1;
    }
    return low;
  };
}

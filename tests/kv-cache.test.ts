import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CACHE_BUCKET, KvCache } from '../src/runtime/kv-cache.ts';
import { SMOLLM2_135M_SHAPE } from '../src/model/random-model.ts';

const config = { ...SMOLLM2_135M_SHAPE, numLayers: 2, numKvHeads: 2, headDim: 4 };
const kvPerToken = config.numLayers * 2 * config.numKvHeads * config.headDim;

/** Writes tokens with recognisable values: value = row*1e6 + position*100 + channel. */
function writeTokens(cache: KvCache, row: number, start: number, count: number): void {
  const step = new Float32Array(kvPerToken * count);
  for (let lh = 0; lh < config.numLayers * 2 * config.numKvHeads; lh++) {
    for (let t = 0; t < count; t++) {
      for (let d = 0; d < config.headDim; d++) step[(lh * count + t) * config.headDim + d] = row * 1e6 + (start + t) * 100 + lh * 10 + d;
    }
  }
  cache.writeStep(step, row, 1, count, [start], [count]);
}

function readToken(cache: KvCache, row: number, position: number): number[] {
  const out: number[] = [];
  const { numKvHeads, headDim } = config;
  for (let l = 0; l < config.numLayers; l++) {
    for (let h = 0; h < numKvHeads; h++) {
      const head = row * numKvHeads + h;
      for (let d = 0; d < headDim; d++) out.push(cache.keys[l][(head * headDim + d) * cache.width + position]);
      for (let d = 0; d < headDim; d++) out.push(cache.values[l][(head * cache.width + position) * headDim + d]);
    }
  }
  return out;
}

test('the cache keeps every written token through growing, moving rows and shrinking', () => {
  const cache = new KvCache(config, 5, 4096);
  assert.equal(cache.rows, 1, 'rows are allocated as sequences arrive');
  writeTokens(cache, 0, 0, 10);
  const before = readToken(cache, 0, 9);
  cache.ensure(3, 700);
  assert.equal(cache.width, 6 * CACHE_BUCKET);
  assert.equal(cache.rows, 4, 'rows grow in powers of two');
  cache.ensure(5, 700);
  assert.equal(cache.rows, 5, 'capped at the batch limit');
  assert.deepEqual(readToken(cache, 0, 9), before);
  writeTokens(cache, 2, 0, 600);
  const far = readToken(cache, 2, 599);
  cache.moveRow(2, 1);
  assert.deepEqual(readToken(cache, 1, 599), far);
  // Only short sequences left: the bucket shrinks, and what they hold is intact.
  cache.shrinkToFit(3, 11);
  assert.equal(cache.width, CACHE_BUCKET);
  assert.equal(cache.rows, 5, 'rows shrink only when a quarter of them would do');
  assert.deepEqual(readToken(cache, 0, 9), before);
  // One sequence left: the rows shrink to twice what it needs, keeping what the first rows hold.
  cache.shrinkToFit(1, 11);
  assert.equal(cache.rows, 2);
  assert.deepEqual(readToken(cache, 0, 9), before);
  // Not worth a copy unless a quarter of the width would do: a sequence crossing a bucket edge while another
  // leaves does not copy the cache back and forth.
  cache.ensure(1, CACHE_BUCKET + 1);
  cache.shrinkToFit(1, CACHE_BUCKET);
  assert.equal(cache.width, 2 * CACHE_BUCKET);
  cache.ensure(1, 3 * CACHE_BUCKET);
  cache.shrinkToFit(1, CACHE_BUCKET);
  assert.equal(cache.width, 3 * CACHE_BUCKET);
  cache.ensure(1, 4 * CACHE_BUCKET);
  cache.shrinkToFit(1, CACHE_BUCKET);
  assert.equal(cache.width, CACHE_BUCKET);
  assert.throws(() => cache.ensure(1, 5000), /exceeds the context limit of 4096/);
  assert.throws(() => cache.ensure(6, 10), /6 rows exceed the cache's 5/);
});

test('a row copied into a cache of another width keeps every token', () => {
  const short = new KvCache(config, 2, 256);
  const long = new KvCache(config, 2, 4096);
  long.ensure(1, 1000);
  short.ensure(2, 200);
  writeTokens(short, 1, 0, 200);
  const tokens = [0, 99, 199].map((position) => readToken(short, 1, position));
  long.copyRowFrom(short, 1, 0, 200);
  assert.deepEqual([0, 99, 199].map((position) => readToken(long, 0, position)), tokens);
  assert.equal(long.width, 8 * CACHE_BUCKET, 'the wider cache keeps its width');
});

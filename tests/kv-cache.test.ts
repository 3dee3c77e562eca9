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
  cache.moveRow(2, 1, 600);
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

/** Every token of a cache's first `rows` rows up to `positions`, as readToken reads them. */
function contents(cache: KvCache, rows: number, positions: number): number[][] {
  return Array.from({ length: rows * positions }, (_, i) => readToken(cache, Math.floor(i / positions), i % positions));
}

/** A prefix-tuning prefix of `tokens` tokens with recognisable values, in writePrefix's layout. */
function prefix(tokens: number, seed: number): Float32Array {
  return Float32Array.from({ length: tokens * kvPerToken }, (_, i) => seed * 1e7 + i);
}

/** Two caches that take the same writes: one grows a layer a step as planned, the other at once when needed. */
function pair(maxRows: number) {
  const spread = new KvCache(config, maxRows, 4096);
  const atOnce = new KvCache(config, maxRows, 4096);
  return { spread, atOnce, both: (act: (cache: KvCache) => void) => [spread, atOnce].forEach(act) };
}

test('writes, moves and copies during a growth spread over steps land as they do when the cache grows at once', () => {
  const otherLane = new KvCache(config, 2, 4096);
  otherLane.ensure(2, 120);
  writeTokens(otherLane, 1, 0, 120);
  const { spread, atOnce, both } = pair(4);
  both((cache) => {
    cache.ensure(3, 100);
    writeTokens(cache, 0, 0, 100);
    writeTokens(cache, 1, 0, 90);
    writeTokens(cache, 2, 0, 50);
  });
  spread.planGrowth(3, 200);
  assert.deepEqual(spread.plannedGrowth, { rows: 4, width: 2 * CACHE_BUCKET });
  spread.continueGrowth(1);
  assert.equal(spread.width, CACHE_BUCKET, 'with one of two layers migrated, passes still read the current buffers');
  // Every kind of write, while layer 0 has its larger buffers and layer 1 not yet.
  both((cache) => {
    writeTokens(cache, 0, 100, 20);
    cache.moveRow(2, 1, 50);
    cache.writePrefix(2, prefix(6, 3), 6);
    cache.copyRowFrom(otherLane, 1, 3, 120);
  });
  spread.continueGrowth(1);
  assert.equal(spread.plannedGrowth, null);
  assert.deepEqual([spread.rows, spread.width], [4, 2 * CACHE_BUCKET], 'the last layer migrated: the cache switched');
  atOnce.ensure(3, 200);
  assert.deepEqual(contents(spread, 4, 2 * CACHE_BUCKET), contents(atOnce, 4, 2 * CACHE_BUCKET));
  assert.deepEqual(readToken(spread, 3, 119), readToken(otherLane, 1, 119));
  // A cache in the middle of a growth is read from its current buffers when a row is copied out of it.
  spread.planGrowth(4, 300);
  spread.continueGrowth(1);
  otherLane.copyRowFrom(spread, 0, 0, 120);
  assert.deepEqual(readToken(otherLane, 0, 119), readToken(atOnce, 0, 119));
});

test('a step needing the planned shape before it has migrated completes the growth; another shape starts it again', () => {
  const { spread, atOnce, both } = pair(4);
  both((cache) => writeTokens(cache, 0, 0, 100));
  spread.planGrowth(1, 200);
  spread.continueGrowth(1);
  both((cache) => writeTokens(cache, 0, 100, 28));
  // The next token needs position 128: the remaining layer migrates now.
  both((cache) => cache.ensure(1, 129));
  assert.equal(spread.plannedGrowth, null);
  assert.equal(spread.width, 2 * CACHE_BUCKET);
  both((cache) => writeTokens(cache, 0, 128, 1));
  assert.deepEqual(contents(spread, 1, 2 * CACHE_BUCKET), contents(atOnce, 1, 2 * CACHE_BUCKET));

  spread.planGrowth(4, 300);
  spread.continueGrowth(1);
  both((cache) => writeTokens(cache, 0, 129, 10));
  // A newcomer's row is needed now, at the current width: that much is copied at once, the rest planned again.
  both((cache) => cache.ensure(2, 1));
  assert.deepEqual([spread.rows, spread.width], [2, 2 * CACHE_BUCKET]);
  assert.deepEqual(spread.plannedGrowth, { rows: 4, width: 3 * CACHE_BUCKET });
  both((cache) => writeTokens(cache, 1, 0, 40));
  spread.continueGrowth(1);
  both((cache) => cache.moveRow(1, 0, 40));
  spread.continueGrowth(1);
  assert.deepEqual([spread.rows, spread.width], [4, 3 * CACHE_BUCKET]);
  atOnce.ensure(4, 300);
  assert.deepEqual(contents(spread, 2, 3 * CACHE_BUCKET), contents(atOnce, 2, 3 * CACHE_BUCKET));
});

test('a planned growth is dropped once no sequence needs it, or when the cache shrinks', () => {
  const { spread, atOnce, both } = pair(4);
  both((cache) => {
    cache.ensure(4, 600);
    writeTokens(cache, 0, 0, 12);
    writeTokens(cache, 3, 0, 600);
  });
  spread.planGrowth(4, 700);
  spread.continueGrowth(1);
  // The long sequence left: the cache shrinks to what the short one needs, and the growth is gone.
  both((cache) => cache.shrinkToFit(1, 12));
  assert.equal(spread.plannedGrowth, null);
  assert.deepEqual([spread.rows, spread.width], [2, CACHE_BUCKET]);
  both((cache) => writeTokens(cache, 0, 12, 4));
  spread.continueGrowth();
  assert.deepEqual([spread.rows, spread.width], [2, CACHE_BUCKET]);
  assert.deepEqual(contents(spread, 2, CACHE_BUCKET), contents(atOnce, 2, CACHE_BUCKET));

  // Planned for a sequence that then finished early: the next plan asks for no more, and nothing is migrated.
  spread.planGrowth(1, 200);
  spread.continueGrowth(1);
  spread.planGrowth(1, 16);
  assert.equal(spread.plannedGrowth, null);
  both((cache) => writeTokens(cache, 0, 16, 4));
  spread.continueGrowth();
  assert.equal(spread.width, CACHE_BUCKET);
  assert.deepEqual(contents(spread, 2, CACHE_BUCKET), contents(atOnce, 2, CACHE_BUCKET));
  // Plans are clamped to the cache's limits: it is ensure that refuses a sequence.
  spread.planGrowth(9, 5000);
  assert.deepEqual(spread.plannedGrowth, { rows: 4, width: 4096 });
});

/**
 * The KV cache, owned by JavaScript and fed to the graph zero-copy. Rows are batch positions: the running
 * batch always occupies rows [0, n), so every step's inputs are contiguous prefixes of these buffers.
 * Keys are stored transposed ([rows, kv_heads, head_dim, S]) so attention is one plain MatMul.
 * The width S grows in buckets; attention runs over the whole bucket with a mask, which costs less than
 * returning or re-concatenating the cache every step. The rows allocated grow in powers of two up to
 * `maxRows`, so memory follows the sequences running, not the batch limit times the longest one.
 */
import type { LlamaConfig } from '../model/types.ts';

export const CACHE_BUCKET = 128;

/** Per-layer key and value buffers and the width their rows are laid out for. */
interface CacheBuffers {
  keys: Float32Array[];
  values: Float32Array[];
  width: number;
}

export class KvCache {
  keys: Float32Array[] = [];
  values: Float32Array[] = [];
  /** Current bucket width (positions per row). */
  width = 0;
  /** Rows allocated. */
  rows = 0;

  constructor(
    private readonly config: LlamaConfig,
    readonly maxRows: number,
    readonly maxPositions: number,
  ) {
    this.allocate(1, CACHE_BUCKET);
  }

  /** Floats one row occupies in one layer's key (or value) buffer. */
  get rowStride(): number {
    return this.config.numKvHeads * this.config.headDim * this.width;
  }

  /** Makes room for `rows` rows of `positions` tokens, copying the cache into larger buffers when needed. */
  ensure(rows: number, positions: number): void {
    if (positions > this.maxPositions) {
      throw new Error(`sequence of ${positions} tokens exceeds the context limit of ${this.maxPositions}`);
    }
    if (rows > this.maxRows) throw new Error(`${rows} rows exceed the cache's ${this.maxRows}`);
    if (positions > this.width || rows > this.rows) {
      this.resize(Math.max(this.rows, roundUpPowerOfTwo(rows, this.maxRows)), Math.max(this.width, roundUpBucket(positions)));
    }
  }

  /**
   * Gives memory and attention work back once long sequences or many of them have left: every step attends
   * over the whole bucket, so a width kept from one long request would slow every later step. The width
   * shrinks only once a quarter of it would do, and the rows only to twice what is needed once a quarter would
   * do, so a load that rises and falls around an edge does not copy the cache back and forth: with "half", a
   * burst of 128-token prompts grew the width to 256 as each one started decoding and shrank it back as each
   * finished, a copy of the whole cache (100 ms and more) every few steps.
   */
  shrinkToFit(rows: number, positions: number): void {
    const width = roundUpBucket(Math.max(positions, 1));
    const narrower = width <= this.width / 4;
    const needed = roundUpPowerOfTwo(rows, this.maxRows);
    const fewer = needed <= this.rows / 4;
    if (narrower || fewer) this.resize(fewer ? 2 * needed : this.rows, narrower ? width : this.width);
  }

  private resize(rows: number, width: number): void {
    const old: CacheBuffers = { keys: this.keys, values: this.values, width: this.width };
    const kept = Math.min(this.width, width);
    const keptRows = Math.min(this.rows, rows);
    this.allocate(rows, width);
    for (let row = 0; row < keptRows; row++) this.copyRow(old, row, row, kept);
  }

  /**
   * Writes one step's new keys/values (`[B, layers*2*kv_heads, T, head_dim]`, k then v per layer) for batch
   * rows starting at `firstRow`; row b's first counts[b] tokens go to positions start[b].. (the rest is padding).
   */
  writeStep(
    newKeyValues: Float32Array,
    firstRow: number,
    batch: number,
    tokens: number,
    starts: ArrayLike<number>,
    counts: ArrayLike<number>,
  ): void {
    const { numLayers, numKvHeads, headDim } = this.config;
    const width = this.width;
    for (let b = 0; b < batch; b++) {
      const row = firstRow + b;
      const start = starts[b];
      for (let l = 0; l < numLayers; l++) {
        const keys = this.keys[l];
        const values = this.values[l];
        for (let h = 0; h < numKvHeads; h++) {
          const kBase = (((b * numLayers + l) * 2 * numKvHeads + h) * tokens) * headDim;
          const vBase = kBase + numKvHeads * tokens * headDim;
          const keyRow = (row * numKvHeads + h) * headDim * width;
          const valueRow = (row * numKvHeads + h) * width * headDim;
          for (let t = 0; t < counts[b]; t++) {
            const pos = start + t;
            const k = kBase + t * headDim;
            for (let d = 0; d < headDim; d++) keys[keyRow + d * width + pos] = newKeyValues[k + d];
            values.set(newKeyValues.subarray(vBase + t * headDim, vBase + (t + 1) * headDim), valueRow + pos * headDim);
          }
        }
      }
    }
  }

  /**
   * Writes a prefix-tuning prefix into a row's first positions: `keyValues` is `[tokens, layers·2·kv_heads·head_dim]`,
   * per token each layer's keys then values (PEFT's layout). The keys go in as they are, never rotated: they are
   * what attention compares queries with, exactly as PEFT passes them to the model as past keys.
   */
  writePrefix(row: number, keyValues: Float32Array, tokens: number): void {
    const { numLayers, numKvHeads, headDim } = this.config;
    this.ensure(row + 1, tokens);
    const width = this.width;
    const tokenStride = numLayers * 2 * numKvHeads * headDim;
    for (let t = 0; t < tokens; t++) {
      for (let l = 0; l < numLayers; l++) {
        for (let h = 0; h < numKvHeads; h++) {
          const key = t * tokenStride + (2 * l * numKvHeads + h) * headDim;
          const value = key + numKvHeads * headDim;
          const keyRow = (row * numKvHeads + h) * headDim * width;
          for (let d = 0; d < headDim; d++) this.keys[l][keyRow + d * width + t] = keyValues[key + d];
          this.values[l].set(keyValues.subarray(value, value + headDim), ((row * numKvHeads + h) * width + t) * headDim);
        }
      }
    }
  }

  /** Copies the first `positions` tokens of another cache's row (of any width) into `row`. */
  copyRowFrom(source: KvCache, sourceRow: number, row: number, positions: number): void {
    this.ensure(row + 1, positions);
    this.copyRow(source, sourceRow, row, positions);
  }

  /** Copies a row's first `positions` tokens from buffers of any width into this cache's `row`. */
  private copyRow(source: CacheBuffers, sourceRow: number, row: number, positions: number): void {
    const { numLayers, numKvHeads, headDim } = this.config;
    for (let l = 0; l < numLayers; l++) {
      for (let h = 0; h < numKvHeads; h++) {
        const fromHead = sourceRow * numKvHeads + h;
        const toHead = row * numKvHeads + h;
        for (let d = 0; d < headDim; d++) {
          const from = (fromHead * headDim + d) * source.width;
          this.keys[l].set(source.keys[l].subarray(from, from + positions), (toHead * headDim + d) * this.width);
        }
        const from = fromHead * source.width * headDim;
        this.values[l].set(source.values[l].subarray(from, from + positions * headDim), toHead * this.width * headDim);
      }
    }
  }

  /** Moves a row (used to keep the running batch contiguous when a sequence leaves). */
  moveRow(from: number, to: number): void {
    if (from === to) return;
    const stride = this.rowStride;
    for (let l = 0; l < this.config.numLayers; l++) {
      this.keys[l].copyWithin(to * stride, from * stride, (from + 1) * stride);
      this.values[l].copyWithin(to * stride, from * stride, (from + 1) * stride);
    }
  }

  private allocate(rows: number, width: number): void {
    this.rows = rows;
    this.width = width;
    const size = rows * this.config.numKvHeads * this.config.headDim * width;
    this.keys = Array.from({ length: this.config.numLayers }, () => new Float32Array(size));
    this.values = Array.from({ length: this.config.numLayers }, () => new Float32Array(size));
  }
}

function roundUpBucket(positions: number): number {
  return Math.ceil(positions / CACHE_BUCKET) * CACHE_BUCKET;
}

function roundUpPowerOfTwo(rows: number, limit: number): number {
  return Math.min(limit, 2 ** Math.ceil(Math.log2(Math.max(rows, 1))));
}

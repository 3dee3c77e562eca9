/**
 * The KV cache, owned by JavaScript and fed to the graph zero-copy. Rows are batch positions: the running
 * batch always occupies rows [0, n), so every step's inputs are contiguous prefixes of these buffers.
 * Keys are stored transposed ([rows, kv_heads, head_dim, S]) so attention is one plain MatMul.
 * The width S grows in buckets; attention runs over the whole bucket with a mask, which costs less than
 * returning or re-concatenating the cache every step. The rows allocated grow in powers of two up to
 * `maxRows`, so memory follows the sequences running, not the batch limit times the longest one.
 * A growth the engine sees coming (planGrowth) is copied a few layers a step (cache-growth.ts), every write
 * meanwhile going to both the current and the migrated layers' buffers; ensure still grows at once what a step
 * needs before then.
 */
import type { LlamaConfig } from '../model/types.ts';
import { CacheGrowth, GROWTH_LAYERS_PER_STEP, type LayerBuffers } from './cache-growth.ts';

export const CACHE_BUCKET = 128;

export class KvCache {
  keys: Float32Array[] = [];
  values: Float32Array[] = [];
  /** Current bucket width (positions per row). */
  width = 0;
  /** Rows allocated. */
  rows = 0;
  /** A larger shape being migrated to, a few layers a step (planGrowth); null when none is planned. */
  private growth: CacheGrowth | null = null;

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

  /** Steps (continueGrowth calls) a growth planned now takes to complete. */
  get growthSteps(): number {
    return Math.ceil(this.config.numLayers / GROWTH_LAYERS_PER_STEP);
  }

  /** The shape a growth is migrating to, if one is planned. */
  get plannedGrowth(): { rows: number; width: number } | null {
    return this.growth && { rows: this.growth.rows, width: this.growth.width };
  }

  /**
   * Makes room for `rows` rows of `positions` tokens now. A planned growth to exactly that shape completes here;
   * any other shape is copied into at once, and a planned growth larger than it starts again from there.
   */
  ensure(rows: number, positions: number): void {
    if (positions > this.maxPositions) {
      throw new Error(`sequence of ${positions} tokens exceeds the context limit of ${this.maxPositions}`);
    }
    if (rows > this.maxRows) throw new Error(`${rows} rows exceed the cache's ${this.maxRows}`);
    if (positions <= this.width && rows <= this.rows) return;
    const needed = this.shapeFor(rows, positions);
    const planned = this.growth;
    if (planned?.leadsTo(needed.rows, needed.width)) {
      this.continueGrowth(this.config.numLayers);
      return;
    }
    this.resize(needed.rows, needed.width);
    if (planned) this.planGrowth(planned.rows, planned.width);
  }

  /**
   * Plans the shape the rows will need within the next `growthSteps` steps: when it is larger than the current
   * one, continueGrowth migrates to it a few layers a step; when it is not, a planned growth is dropped.
   * Beyond the cache's limits the plan is clamped to them (ensure is what refuses a sequence).
   */
  planGrowth(rows: number, positions: number): void {
    const target = this.shapeFor(Math.min(rows, this.maxRows), Math.min(positions, this.maxPositions));
    if (target.rows === this.rows && target.width === this.width) this.growth = null;
    else if (!this.growth?.leadsTo(target.rows, target.width)) {
      const layerSize = target.rows * this.config.numKvHeads * this.config.headDim * target.width;
      this.growth = new CacheGrowth(target.rows, target.width, this.config.numLayers, layerSize);
    }
  }

  /**
   * Layers to migrate per step so that a planned growth completes within `steps` steps (this one included): at
   * least the usual few, more when a sequence needs the larger shape sooner than that pace allows.
   */
  layersToCompleteWithin(steps: number): number {
    const left = this.growth ? this.config.numLayers - this.growth.nextLayer : 0;
    return Math.max(GROWTH_LAYERS_PER_STEP, Math.ceil(left / Math.max(steps, 1)));
  }

  /**
   * Migrates the next `layers` layers of a planned growth into buffers of the larger shape, touched only now so
   * that their page faults are spread over the steps too; after the last layer the cache switches to them.
   */
  continueGrowth(layers = GROWTH_LAYERS_PER_STEP): void {
    const growth = this.growth;
    if (!growth) return;
    for (let i = 0; i < layers && !growth.done; i++) {
      const larger = growth.nextLayerBuffers();
      const current = this.layer(growth.nextLayer);
      for (let row = 0; row < this.rows; row++) copyLayerRow(this.config, current, row, larger, row, this.width);
      growth.add(larger);
    }
    if (!growth.done) return;
    this.keys = growth.keys;
    this.values = growth.values;
    this.rows = growth.rows;
    this.width = growth.width;
    this.growth = null;
  }

  /**
   * Gives memory and attention work back once long sequences or many of them have left: every step attends
   * over the whole bucket, so a width kept from one long request would slow every later step. The width
   * shrinks only once a quarter of it would do, and the rows only to twice what is needed once a quarter would
   * do, so a load that rises and falls around an edge does not copy the cache back and forth: with "half", a
   * burst of 128-token prompts grew the width to 256 as each one started decoding and shrank it back as each
   * finished, a copy of the whole cache (100 ms and more) every few steps. Shrinking drops a planned growth.
   */
  shrinkToFit(rows: number, positions: number): void {
    const width = roundUpBucket(Math.max(positions, 1));
    const narrower = width <= this.width / 4;
    const needed = roundUpPowerOfTwo(rows, this.maxRows);
    const fewer = needed <= this.rows / 4;
    if (narrower || fewer) this.resize(fewer ? 2 * needed : this.rows, narrower ? width : this.width);
  }

  /** Copies the cache into buffers of another shape at once, dropping a planned growth. */
  private resize(rows: number, width: number): void {
    this.growth = null;
    const old = Array.from({ length: this.config.numLayers }, (_, l) => this.layer(l));
    const kept = Math.min(this.width, width);
    const keptRows = Math.min(this.rows, rows);
    this.allocate(rows, width);
    old.forEach((from, l) => {
      for (let row = 0; row < keptRows; row++) copyLayerRow(this.config, from, row, this.layer(l), row, kept);
    });
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
    for (let l = 0; l < numLayers; l++) {
      for (const { keys, values, width } of this.writeTargets(l)) {
        for (let b = 0; b < batch; b++) {
          const row = firstRow + b;
          const start = starts[b];
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
  }

  /**
   * Writes a prefix-tuning prefix into a row's first positions: `keyValues` is `[tokens, layers·2·kv_heads·head_dim]`,
   * per token each layer's keys then values (PEFT's layout). The keys go in as they are, never rotated: they are
   * what attention compares queries with, exactly as PEFT passes them to the model as past keys.
   */
  writePrefix(row: number, keyValues: Float32Array, tokens: number): void {
    const { numLayers, numKvHeads, headDim } = this.config;
    this.ensure(row + 1, tokens);
    const tokenStride = numLayers * 2 * numKvHeads * headDim;
    for (let l = 0; l < numLayers; l++) {
      for (const { keys, values, width } of this.writeTargets(l)) {
        for (let t = 0; t < tokens; t++) {
          for (let h = 0; h < numKvHeads; h++) {
            const key = t * tokenStride + (2 * l * numKvHeads + h) * headDim;
            const value = key + numKvHeads * headDim;
            const keyRow = (row * numKvHeads + h) * headDim * width;
            for (let d = 0; d < headDim; d++) keys[keyRow + d * width + t] = keyValues[key + d];
            values.set(keyValues.subarray(value, value + headDim), ((row * numKvHeads + h) * width + t) * headDim);
          }
        }
      }
    }
  }

  /** Copies the first `positions` tokens of another cache's row (of any width) into `row`. */
  copyRowFrom(source: KvCache, sourceRow: number, row: number, positions: number): void {
    this.ensure(row + 1, positions);
    for (let l = 0; l < this.config.numLayers; l++) {
      for (const target of this.writeTargets(l)) copyLayerRow(this.config, source.layer(l), sourceRow, target, row, positions);
    }
  }

  /**
   * Moves a row's first `positions` tokens, all it holds (used to keep the running batch contiguous when a
   * sequence leaves); what lies past them is masked until overwritten. Whole rows at 16 rows × 256 positions:
   * a sequence leaving ahead of 7 prefilling rows moved 94 MB, 50–100 ms in one step.
   */
  moveRow(from: number, to: number, positions: number): void {
    if (from === to) return;
    for (let l = 0; l < this.config.numLayers; l++) {
      for (const target of this.writeTargets(l)) copyLayerRow(this.config, target, from, target, to, positions);
    }
  }

  /** Layer `l`'s current buffers, which the passes read. */
  private layer(l: number): LayerBuffers {
    return { keys: this.keys[l], values: this.values[l], width: this.width };
  }

  /** Where a write to layer `l` goes: its current buffers and, once it has migrated, its larger ones too. */
  private writeTargets(l: number): LayerBuffers[] {
    const migrated = this.growth?.layer(l);
    return migrated ? [this.layer(l), migrated] : [this.layer(l)];
  }

  private shapeFor(rows: number, positions: number): { rows: number; width: number } {
    return { rows: Math.max(this.rows, roundUpPowerOfTwo(rows, this.maxRows)), width: Math.max(this.width, roundUpBucket(positions)) };
  }

  private allocate(rows: number, width: number): void {
    this.rows = rows;
    this.width = width;
    const size = rows * this.config.numKvHeads * this.config.headDim * width;
    this.keys = Array.from({ length: this.config.numLayers }, () => new Float32Array(size));
    this.values = Array.from({ length: this.config.numLayers }, () => new Float32Array(size));
  }
}

/** Copies a row's first `positions` tokens of one layer between buffers of any widths. */
function copyLayerRow(
  { numKvHeads, headDim }: LlamaConfig,
  from: LayerBuffers,
  fromRow: number,
  to: LayerBuffers,
  toRow: number,
  positions: number,
): void {
  for (let h = 0; h < numKvHeads; h++) {
    const fromHead = fromRow * numKvHeads + h;
    const toHead = toRow * numKvHeads + h;
    for (let d = 0; d < headDim; d++) {
      const source = (fromHead * headDim + d) * from.width;
      to.keys.set(from.keys.subarray(source, source + positions), (toHead * headDim + d) * to.width);
    }
    const source = fromHead * from.width * headDim;
    to.values.set(from.values.subarray(source, source + positions * headDim), toHead * to.width * headDim);
  }
}

function roundUpBucket(positions: number): number {
  return Math.ceil(positions / CACHE_BUCKET) * CACHE_BUCKET;
}

function roundUpPowerOfTwo(rows: number, limit: number): number {
  return Math.min(limit, 2 ** Math.ceil(Math.log2(Math.max(rows, 1))));
}

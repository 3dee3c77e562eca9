/**
 * The LoRA weights each batch row uses, in the layout the decoder graph reads (one block per row of every
 * LORA_INPUTS input). A row gets a copy of its slot's weights when the slot it uses changes — when a sequence
 * joins or moves — so a decode step feeds contiguous, zero-copy views and copies nothing.
 *
 * Rows are laid out for the highest adapter rank among them, not for the slot rank: decoding reads every row's
 * weights each step, so adapters of rank 8 in rank-64 slots would otherwise read eight times the bytes they need.
 */
import { elementCount } from '../formats/tensor-shape.ts';
import type { AdapterSlots, LoraBuffer } from './adapter-slots.ts';

interface RowSource {
  slot: number;
  /** The slot's write generation at copy time: a slot reused for another adapter makes the copy stale. */
  generation: number;
}

/** A row whose weights must be copied before use. */
const UNSET: RowSource = { slot: -1, generation: -1 };

export class RowAdapterWeights {
  /** Per graph input name: the rows' weights at `rank`, row 0 first. Empty until a row uses an adapter. */
  readonly buffers = new Map<string, LoraBuffer>();
  /** The rank the rows are laid out for (0 before any adapter). */
  rank = 0;
  private readonly sources: RowSource[];

  constructor(
    private readonly slots: AdapterSlots,
    readonly maxRows: number,
  ) {
    this.sources = new Array<RowSource>(maxRows).fill(UNSET);
  }

  /**
   * Makes rows [firstRow, firstRow + slots.length) hold their slots' weights and returns the rank to feed the
   * graph: 0 when none of these rows uses an adapter. The layout grows to a higher rank at once; it shrinks
   * only on a call that covers every row (firstRow 0: rows stay contiguous from 0) and at least halves it,
   * since changing it re-copies every row.
   */
  prepare(firstRow: number, slots: number[]): number {
    const needed = Math.max(0, ...slots.map((slot) => this.slots.rankOf(slot)));
    if (needed === 0) return 0;
    if (needed > this.rank || (firstRow === 0 && needed <= this.rank / 2)) this.layOut(needed);
    slots.forEach((slot, i) => this.sync(firstRow + i, slot));
    return this.rank;
  }

  /** Moves a row's weights (used when the batch is compacted after a sequence leaves). */
  move(from: number, to: number): void {
    if (from === to) return;
    for (const { data, size } of this.buffers.values()) {
      data.copyWithin(to * size, from * size, (from + 1) * size);
    }
    this.sources[to] = this.sources[from];
  }

  private layOut(rank: number): void {
    this.rank = rank;
    for (const name of this.slots.buffers.keys()) {
      const shape = this.slots.shapeAt(name, rank);
      const size = elementCount(shape);
      this.buffers.set(name, { data: new Float32Array(this.maxRows * size), shape, size });
    }
    this.sources.fill(UNSET);
  }

  /** Makes `row` hold the weights of `slot` (0 = zeros), copying only when they differ from what it holds. */
  private sync(row: number, slot: number): void {
    const generation = this.slots.generation(slot);
    const source = this.sources[row];
    if (source.slot === slot && source.generation === generation) return;
    for (const [name, { data, size }] of this.buffers) this.slots.copyAtRank(name, slot, this.rank, data, row * size);
    this.sources[row] = { slot, generation };
  }
}

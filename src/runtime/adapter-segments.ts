/**
 * The adapters of one forward pass as the decoder graph reads them (see src/graph/lora-delta.ts): one stacked
 * copy of each distinct adapter the pass's rows use, and which rows use which. A stack position keeps its
 * adapter from pass to pass, so a decode step copies nothing unless an adapter joins the batch; rows that join
 * an adapter already in the batch copy nothing at all.
 *
 * The stacks are laid out for the highest adapter rank among them, not for the slot rank: a pass reads every
 * stacked adapter, so adapters of rank 8 in rank-64 slots would otherwise read eight times the bytes they need.
 * Every layout lies in one memory block sized for the slot rank, so a change of rank reuses pages already faulted
 * in, and the block can be faulted in before the first passes (prefault.ts).
 */
import { elementCount } from '../formats/tensor-shape.ts';
import type { AdapterSlots, LoraBuffer } from './adapter-slots.ts';
import { Prefault } from './prefault.ts';

interface StackedAdapter {
  slot: number;
  /** The slot's write generation at copy time: a slot reused for another adapter makes the copy stale. */
  generation: number;
}

/** A stack position whose weights must be copied before use. */
const EMPTY: StackedAdapter = { slot: -1, generation: -1 };

/** How one pass's rows map onto its adapter segments (the `LORA_SEGMENT_INPUTS` of the graph). */
export interface SegmentPlan {
  /** Distinct adapters (segments) of the pass: stack positions [0, adapters) are fed. */
  adapters: number;
  /** Rows of the largest segment; every segment is padded to it. */
  segmentRows: number;
  /** `[adapters, segmentRows]`: the rows of each segment, padding repeating the segment's first row. */
  rows: BigInt64Array;
  /** `[batch, tokens]`: per row and token, its delta's index among the segments' `[adapters·segmentRows·tokens]`. */
  resultIndex: BigInt64Array;
  /** `[batch]`: 1 for rows on an adapter, 0 for rows on the base model. */
  rowMask: Float32Array;
}

export class AdapterSegments {
  /** Per graph input name: the stacked adapters' weights at `rank`, position 0 first. Empty until an adapter is used. */
  readonly buffers = new Map<string, LoraBuffer>();
  /** The rank the stacks are laid out for (0 before any adapter). */
  rank = 0;
  private readonly stacked: StackedAdapter[];
  /** The memory every layout's stacks lie in (stackMemory), allocated at the first layout or prefault. */
  private memory: ArrayBuffer | null = null;
  private pagesFaulted: Prefault | null = null;

  constructor(
    private readonly slots: AdapterSlots,
    /** The most distinct adapters one pass can use: its rows, or the slots if there are fewer. */
    readonly capacity: number,
  ) {
    this.stacked = new Array<StackedAdapter>(capacity).fill(EMPTY);
  }

  /**
   * Faults in the next `maxBytes` of the stacks' memory (allocating it first), so that stacking adapters later
   * writes to pages already there; false once all of it is (prefault.ts).
   */
  prefault(maxBytes: number): boolean {
    this.pagesFaulted ??= new Prefault(new Uint8Array(this.stackMemory()));
    return this.pagesFaulted.step(maxBytes);
  }

  /** The stacks' memory: `capacity` adapters of every graph input at the slot rank, the most any layout needs. */
  private stackMemory(): ArrayBuffer {
    if (this.memory) return this.memory;
    let bytes = 0;
    for (const name of this.slots.loraInputs.keys()) bytes += this.regionBytes(name);
    return (this.memory = new ArrayBuffer(bytes));
  }

  /** Bytes of a graph input's region of the stacks' memory: `capacity` adapters at the slot rank. */
  private regionBytes(name: string): number {
    return this.capacity * elementCount(this.slots.shapeAt(name, this.slots.rank)) * Float32Array.BYTES_PER_ELEMENT;
  }

  /**
   * Stacks the distinct adapters of `slots` (one per row of the pass, 0 = base model) and plans the segments
   * for `tokens` tokens per row; the plan's rank is 0 when no row uses an adapter. The layout grows to a higher
   * rank at once; it shrinks only when `mayShrink` (a pass over every row of the lane, so the next pass does not
   * grow it straight back) and the rank at least halves, since changing it re-copies every adapter.
   */
  prepare(slots: number[], tokens: number, mayShrink: boolean): SegmentPlan & { rank: number } {
    const distinct = [...new Set(slots.filter((slot) => slot !== 0))];
    const needed = Math.max(0, ...distinct.map((slot) => this.slots.rankOf(slot)));
    if (needed > this.rank || (mayShrink && needed > 0 && needed <= this.rank / 2)) this.layOut(needed);
    const positions = this.place(distinct);
    const rowsOf = distinct.map((slot) => slots.flatMap((s, row) => (s === slot ? [row] : [])));
    const segmentRows = Math.max(1, ...rowsOf.map((rows) => rows.length));
    const adapters = Math.max(1, distinct.length);
    const rows = new BigInt64Array(adapters * segmentRows);
    const resultIndex = new BigInt64Array(slots.length * tokens);
    const rowMask = new Float32Array(slots.length);
    positions.forEach((position, i) => {
      rowsOf[i].forEach((row, k) => {
        rowMask[row] = 1;
        for (let t = 0; t < tokens; t++) resultIndex[row * tokens + t] = BigInt(((position * segmentRows + k) * tokens) + t);
      });
      for (let k = 0; k < segmentRows; k++) rows[position * segmentRows + k] = BigInt(rowsOf[i][k] ?? rowsOf[i][0]);
    });
    return { rank: distinct.length ? this.rank : 0, adapters, segmentRows, rows, resultIndex, rowMask };
  }

  /** Lays the stacks out for `rank`: each graph input's region of the memory holds `capacity` adapters at the slot rank. */
  private layOut(rank: number): void {
    this.rank = rank;
    const memory = this.stackMemory();
    let offset = 0;
    for (const name of this.slots.loraInputs.keys()) {
      const shape = this.slots.shapeAt(name, rank);
      const size = elementCount(shape);
      this.buffers.set(name, { data: new Float32Array(memory, offset, this.capacity * size), shape, size });
      offset += this.regionBytes(name);
    }
    this.stacked.fill(EMPTY);
  }

  /**
   * Gives each adapter a stack position in [0, adapters.length), keeping those already stacked there (with
   * current weights) where they are, and copies in the rest. Returns the positions, in the order of `adapters`.
   */
  private place(adapters: number[]): number[] {
    const n = adapters.length;
    const current = (position: number, slot: number) =>
      this.stacked[position].slot === slot && this.stacked[position].generation === this.slots.generation(slot);
    const positions = adapters.map((slot) => this.stacked.findIndex((_, position) => position < n && current(position, slot)));
    const taken = new Set(positions.filter((position) => position >= 0));
    const free = Array.from({ length: n }, (_, position) => position).filter((position) => !taken.has(position));
    return positions.map((position, i) => {
      if (position >= 0) return position;
      const to = free.shift()!;
      this.copy(adapters[i], to);
      return to;
    });
  }

  private copy(slot: number, position: number): void {
    for (const [name, { data, size }] of this.buffers) this.slots.copyAtRank(name, slot, this.rank, data, position * size);
    this.stacked[position] = { slot, generation: this.slots.generation(slot) };
  }
}

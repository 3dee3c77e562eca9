/**
 * The adapter weights each batch row uses, in the layout the decoder graph reads (one block per row of every
 * per-row input). A row gets a copy of its slot's weights when the slot it uses changes — when a sequence
 * joins or moves — so a decode step feeds contiguous, zero-copy views and copies nothing.
 *
 * The LoRA and bottleneck inputs are laid out for the highest rank (width) among the rows, not for the slot
 * width: decoding reads every row's weights each step, so adapters of rank 8 in rank-64 slots would otherwise
 * read eight times the bytes they need, and LoRA-only batches carry no bottleneck weights at all. The fixed-width
 * inputs (scales, biases) are fed only when some row of the step uses them.
 */
import { elementCount } from '../formats/tensor-shape.ts';
import { RANK_GROUPS, type AdapterSlots, type LoraBuffer, type RankGroup } from './adapter-slots.ts';

interface RowSource {
  slot: number;
  /** The slot's write generation at copy time: a slot reused for another adapter makes the copy stale. */
  generation: number;
}

/** A row whose weights must be copied before use. */
const UNSET: RowSource = { slot: -1, generation: -1 };

/** What a step's rows need fed: the width of each rank group (0: none of them uses it), and the fixed inputs. */
export interface RowLayout {
  widths: Record<RankGroup, number>;
  fixed: boolean;
}

export class RowAdapterWeights {
  /** Per graph input name: the rows' weights, row 0 first. Rank groups are empty while laid out at width 0. */
  readonly buffers = new Map<string, LoraBuffer>();
  /** The width each rank group's rows are laid out for (0 before any adapter of that group). */
  readonly widths: Record<RankGroup, number> = { lora: 0, bottleneck: 0 };
  private readonly sources: RowSource[];

  constructor(
    private readonly slots: AdapterSlots,
    readonly maxRows: number,
  ) {
    this.sources = new Array<RowSource>(maxRows).fill(UNSET);
    for (const [name, { group, identity }] of slots.groups) {
      if (group !== 'fixed') continue;
      const { shape, size } = slots.buffers.get(name)!;
      this.buffers.set(name, { data: new Float32Array(maxRows * size).fill(identity), shape, size });
    }
  }

  /** The LoRA rank the rows are laid out for. */
  get rank(): number {
    return this.widths.lora;
  }

  /**
   * Makes rows [firstRow, firstRow + slots.length) hold their slots' weights and returns what to feed. A group's
   * layout grows at once; it shrinks only on a call that covers every row (firstRow 0: rows stay contiguous from
   * 0) and at least halves it, since changing it re-copies every row.
   */
  prepare(firstRow: number, slots: number[]): RowLayout {
    const layout: RowLayout = { widths: { lora: 0, bottleneck: 0 }, fixed: slots.some((slot) => this.slots.usesFixedInputs(slot)) };
    for (const group of RANK_GROUPS) {
      const needed = Math.max(0, ...slots.map((slot) => this.slots.widthOf(slot, group)));
      if (needed === 0) continue;
      const current = this.widths[group];
      if (needed > current || (firstRow === 0 && needed <= current / 2)) this.layOut(group, needed);
      layout.widths[group] = this.widths[group];
    }
    if (layout.fixed || layout.widths.lora > 0 || layout.widths.bottleneck > 0) {
      slots.forEach((slot, i) => this.sync(firstRow + i, slot));
    }
    return layout;
  }

  /** Moves a row's weights (used when the batch is compacted after a sequence leaves). */
  move(from: number, to: number): void {
    if (from === to) return;
    for (const { data, size } of this.buffers.values()) {
      data.copyWithin(to * size, from * size, (from + 1) * size);
    }
    this.sources[to] = this.sources[from];
  }

  private layOut(group: RankGroup, width: number): void {
    this.widths[group] = width;
    for (const [name, info] of this.slots.groups) {
      if (info.group !== group) continue;
      const shape = this.slots.shapeAt(name, width);
      const size = elementCount(shape);
      this.buffers.set(name, { data: new Float32Array(this.maxRows * size), shape, size });
    }
    this.sources.fill(UNSET);
  }

  /** Makes `row` hold the weights of `slot` (0 = identity), copying only when they differ from what it holds. */
  private sync(row: number, slot: number): void {
    const generation = this.slots.generation(slot);
    const source = this.sources[row];
    if (source.slot === slot && source.generation === generation) return;
    for (const [name, { data, size }] of this.buffers) {
      const { group } = this.slots.groups.get(name)!;
      const width = group === 'fixed' ? this.slots.rank : this.widths[group];
      this.slots.copyAtRank(name, slot, width, data, row * size);
    }
    this.sources[row] = { slot, generation };
  }
}

/**
 * The per-row inputs of the PEFT families beside LoRA (scales, biases, bottleneck matrices), in the layout the
 * decoder graph reads: one block per batch row, holding every layer's block of that kind in layer order (one
 * graph input per kind, see familyGraphInput). A row gets a copy of its slot's values when the slot it uses
 * changes — when a sequence joins or moves — so a step feeds contiguous, zero-copy views and copies nothing.
 *
 * Bottleneck matrices are laid out for the widest bottleneck among the rows, not the slot width, and the whole
 * group is fed empty when no row of a step uses one; scales and biases are fed only when some row of the step
 * uses them (otherwise one broadcast identity element per layer).
 */
import { elementCount } from '../formats/tensor-shape.ts';
import { familyGraphInput } from '../graph/peft-blocks.ts';
import type { AdapterSlots, LoraBuffer } from './adapter-slots.ts';
import type { FamilyInput } from './slot-layout.ts';

/** A graph input of the families: the slot blocks it stacks (one per layer, or a single one), how it is read. */
export interface FamilyGraphInput extends FamilyInput {
  blocks: string[];
}

interface RowSource {
  slot: number;
  /** The slot's write generation at copy time: a slot reused for another adapter makes the copy stale. */
  generation: number;
}

/** A row whose values must be copied before use. */
const UNSET: RowSource = { slot: -1, generation: -1 };

/** What a step's rows need fed: the bottleneck width (0: none uses one), and whether any uses scales or biases. */
export interface FamilyLayout {
  bottleneckWidth: number;
  fixed: boolean;
}

export class RowFamilyWeights {
  /** Per graph input name: the rows' values, row 0 first (bottleneck inputs absent until a row uses one). */
  readonly buffers = new Map<string, LoraBuffer>();
  /** The graph inputs, in the order their first blocks come in the slots. */
  readonly inputs = new Map<string, FamilyGraphInput>();
  /** The width the rows' bottleneck inputs are laid out for. */
  bottleneckWidth = 0;
  private readonly sources: RowSource[];
  private readonly identities = new Map<string, { data: Float32Array; dims: number[] }>();

  constructor(
    private readonly slots: AdapterSlots,
    readonly maxRows: number,
  ) {
    this.sources = new Array<RowSource>(maxRows).fill(UNSET);
    for (const [block, { group, identity, axis }] of slots.familyInputs) {
      const { input } = familyGraphInput(block);
      if (!this.inputs.has(input)) this.inputs.set(input, { group, identity, axis, blocks: [] });
      this.inputs.get(input)!.blocks.push(block);
    }
    for (const [name, { group, identity, blocks }] of this.inputs) {
      if (group !== 'fixed') continue;
      const shape = this.shapeAt(name, 0);
      const size = elementCount(shape);
      this.buffers.set(name, { data: new Float32Array(maxRows * size).fill(identity), shape, size });
      this.identities.set(name, { data: new Float32Array(blocks.length).fill(identity), dims: [1, blocks.length, ...shape.slice(1).map(() => 1)] });
    }
  }

  /**
   * The stand-in fed for a fixed input that no row of a step uses: one identity element per block, broadcast over
   * the rows and each block's values.
   */
  broadcastIdentity(name: string): { data: Float32Array; dims: number[] } {
    return this.identities.get(name)!;
  }

  /** One row's shape of a graph input, bottleneck inputs at `width`: its blocks stacked on their first axis. */
  shapeAt(name: string, width: number): number[] {
    const { blocks } = this.inputs.get(name)!;
    const [first, ...rest] = this.slots.familyShapeAt(blocks[0], width);
    return [blocks.length * first, ...rest];
  }

  /**
   * Makes rows [firstRow, firstRow + slots.length) hold their slots' values and returns what to feed. The
   * bottleneck layout grows at once; it shrinks only on a call that covers every row (firstRow 0) and at least
   * halves it, since changing it re-copies every row.
   */
  prepare(firstRow: number, slots: number[]): FamilyLayout {
    const fixed = slots.some((slot) => this.slots.usesFixedInputs(slot));
    const needed = Math.max(0, ...slots.map((slot) => this.slots.bottleneckWidthOf(slot)));
    if (needed > this.bottleneckWidth || (needed > 0 && firstRow === 0 && needed <= this.bottleneckWidth / 2)) this.layOut(needed);
    if (fixed || needed > 0) slots.forEach((slot, i) => this.sync(firstRow + i, slot));
    return { bottleneckWidth: needed > 0 ? this.bottleneckWidth : 0, fixed };
  }

  /** Moves a row's values (used when the batch is compacted after a sequence leaves). */
  move(from: number, to: number): void {
    if (from === to) return;
    for (const { data, size } of this.buffers.values()) data.copyWithin(to * size, from * size, (from + 1) * size);
    this.sources[to] = this.sources[from];
  }

  private layOut(width: number): void {
    this.bottleneckWidth = width;
    for (const [name, { group }] of this.inputs) {
      if (group !== 'bottleneck') continue;
      const shape = this.shapeAt(name, width);
      const size = elementCount(shape);
      this.buffers.set(name, { data: new Float32Array(this.maxRows * size), shape, size });
    }
    this.sources.fill(UNSET);
  }

  /** Makes `row` hold the values of `slot` (0 = identity), copying only when they differ from what it holds. */
  private sync(row: number, slot: number): void {
    const generation = this.slots.generation(slot);
    const source = this.sources[row];
    if (source.slot === slot && source.generation === generation) return;
    for (const [name, { data, size }] of this.buffers) {
      const { blocks } = this.inputs.get(name)!;
      const blockSize = size / blocks.length;
      blocks.forEach((block, i) => this.slots.copyFamilyInput(block, slot, this.bottleneckWidth, data, row * size + i * blockSize));
    }
    this.sources[row] = { slot, generation };
  }
}

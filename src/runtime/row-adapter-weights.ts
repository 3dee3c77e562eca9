/**
 * The LoRA weights each batch row uses, in the layout the decoder graph reads (one block per row of every
 * LORA_INPUTS input). A row gets a copy of its slot's weights when the slot it uses changes — when a sequence
 * joins or moves — so a decode step feeds contiguous, zero-copy views and copies nothing.
 */
import type { AdapterSlots, LoraBuffer } from './adapter-slots.ts';

interface RowSource {
  slot: number;
  /** The slot's write generation at copy time: a slot reused for another adapter makes the copy stale. */
  generation: number;
}

export class RowAdapterWeights {
  /**
   * Per graph input name: the rows' weights, row 0 first. Empty until a row first uses an adapter, so rows
   * that only ever run the base model (a whole lane of them, say) cost no memory.
   */
  readonly buffers = new Map<string, LoraBuffer>();
  private readonly sources: RowSource[];

  constructor(
    private readonly slots: AdapterSlots,
    readonly maxRows: number,
  ) {
    // Absent or fresh buffers are zeros, which is exactly slot 0 ("no adapter").
    this.sources = Array.from({ length: maxRows }, () => ({ slot: 0, generation: slots.generation(0) }));
  }

  /** Makes `row` hold the weights of `slot` (0 = zeros), copying only when they differ from what it holds. */
  sync(row: number, slot: number): void {
    const generation = this.slots.generation(slot);
    const source = this.sources[row];
    if (source.slot === slot && source.generation === generation) return;
    if (this.buffers.size === 0) {
      for (const [name, { shape, size }] of this.slots.buffers) this.buffers.set(name, { data: new Float32Array(this.maxRows * size), shape, size });
    }
    for (const [name, rows] of this.buffers) {
      const { data, size } = this.slots.buffers.get(name)!;
      rows.data.set(data.subarray(slot * size, (slot + 1) * size), row * size);
    }
    this.sources[row] = { slot, generation };
  }

  /** Moves a row's weights (used when the batch is compacted after a sequence leaves). */
  move(from: number, to: number): void {
    if (from === to) return;
    for (const { data, size } of this.buffers.values()) {
      data.copyWithin(to * size, from * size, (from + 1) * size);
    }
    this.sources[to] = this.sources[from];
  }
}

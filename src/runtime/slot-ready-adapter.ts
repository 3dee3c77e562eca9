/**
 * An adapter already in the layout of one runtime slot (A transposed into its group's block, B transposed
 * with the scale folded in, rank padded to the slot rank), so that placing it in a slot is a plain copy per graph
 * input. Built away from the engine's step loop (the adapter loader thread) and kept in this form by the host
 * cache; every buffer is its own ArrayBuffer, so it moves between threads without a copy.
 */
import type { LoraAdapter } from '../adapters/lora.ts';
import { elementCount } from '../formats/tensor-shape.ts';
import { LORA_INPUTS } from '../graph/lora-delta.ts';
import type { LlamaConfig } from '../model/types.ts';
import { loraInputShapes, slotLayouts } from './adapter-slots.ts';

export interface SlotReadyAdapter {
  /** The adapter's own (highest) rank; the blocks are laid out for the slot rank. */
  rank: number;
  /** Per LoRA graph input name (e.g. `lora_a_qkv.3`), the slot's block; inputs the adapter leaves at zero are absent. */
  blocks: Map<string, Float32Array>;
  /** Bytes held by the blocks, for caches bounded in bytes. */
  byteSize: number;
}

export function layOutForSlot(config: LlamaConfig, slotRank: number, adapter: LoraAdapter): SlotReadyAdapter {
  if (adapter.rank > slotRank) {
    throw new Error(`adapter rank ${adapter.rank} exceeds the slot rank ${slotRank}; raise MAX_LORA_RANK`);
  }
  const layouts = slotLayouts(config);
  const shapes = loraInputShapes(config, slotRank);
  const blocks = new Map<string, Float32Array>();
  const block = (key: keyof typeof LORA_INPUTS, layer: number): Float32Array => {
    const name = LORA_INPUTS[key](layer);
    let data = blocks.get(name);
    if (!data) blocks.set(name, (data = new Float32Array(elementCount(shapes[key]))));
    return data;
  };
  const R = slotRank;
  for (const m of adapter.modules) {
    const layout = layouts[m.module];
    const a = block(layout.a, m.layer);
    const b = block(layout.b, m.layer);
    const aBase = layout.aGroup * layout.inDim * R;
    for (let j = 0; j < m.rank; j++) {
      for (let i = 0; i < layout.inDim; i++) a[aBase + i * R + j] = m.A[j * layout.inDim + i];
    }
    const bBase = layout.bBlock * R * layout.bWidth;
    for (let j = 0; j < m.rank; j++) {
      for (let o = 0; o < layout.outDim; o++) {
        const bBlock = Math.floor(o / layout.bWidth);
        b[bBase + (bBlock * R + j) * layout.bWidth + (o % layout.bWidth)] = m.B[o * m.rank + j] * m.scale;
      }
    }
  }
  let byteSize = 0;
  for (const data of blocks.values()) byteSize += data.byteLength;
  return { rank: adapter.rank, blocks, byteSize };
}

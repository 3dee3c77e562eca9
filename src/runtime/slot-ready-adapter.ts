/**
 * An adapter already in the layout of one runtime slot: per graph input, the block the slot holds (LoRA's A
 * transposed into its group, B transposed with the scale folded in, rank padded to the slot rank; the other
 * families' inputs as slot-writer.ts lays them out), plus what the runner reads from a slot beside them. Placing
 * it in a slot is then one copy per graph input. It is built away from the engine's step loop (on the adapter
 * loader thread) and kept in this form by the host cache; its arrays' buffers belong to it alone (one buffer for
 * them all when it was read back from disk: slot-layout-file.ts), so it moves between threads without a copy.
 */
import { virtualTokensOf, type Adapter, type AdapterFamily } from '../adapters/adapter.ts';
import type { LoraAdapter } from '../adapters/lora.ts';
import { elementCount } from '../formats/tensor-shape.ts';
import { LORA_INPUTS } from '../graph/lora-delta.ts';
import type { LlamaConfig } from '../model/types.ts';
import { familyInputShapes, loraInputShapes, slotLayouts } from './slot-layout.ts';
import { writeDoraScales, writeFamilyInputs } from './slot-writer.ts';

/** What the runner feeds at prefill or writes into the cache for a slot's adapter, besides its per-row inputs. */
export interface SlotPrompt {
  family: AdapterFamily | null;
  /** Positions taken before the prompt's tokens. */
  virtualTokens: number;
  /** Prompt and p-tuning: [virtualTokens, hidden]. */
  softPrompt?: Float32Array;
  /** Prefix tuning: [virtualTokens, layers·2·kv_dim], PEFT's layout. */
  prefix?: Float32Array;
}

export interface SlotReadyAdapter {
  family: AdapterFamily;
  /** LoRA and DoRA: the adapter's own (highest) rank; 0 for the other families. */
  loraRank: number;
  /** Bottleneck adapters: their width; 0 for the other families. */
  bottleneckWidth: number;
  /** Whether it sets any fixed-width input (IA3, DoRA, bottleneck adapters). */
  usesFixedInputs: boolean;
  prompt: SlotPrompt;
  /** Per graph input name (e.g. `lora_a_qkv.3`): the slot's block; inputs the adapter leaves at identity are absent. */
  blocks: Map<string, Float32Array>;
  /** Bytes held, for caches bounded in bytes. */
  byteSize: number;
  /**
   * DoRA whose row scales are not computed yet (they need the base model's session, so the engine thread
   * completes them: ModelRunner.completeAdapter): the parsed adapter, dropped once they are.
   */
  doraPending?: LoraAdapter;
}

/** Lays out a parsed, validated adapter for a slot of rank `slotRank` (DoRA's scales only if already computed). */
export function layOutForSlot(c: LlamaConfig, slotRank: number, adapter: Adapter): SlotReadyAdapter {
  if (adapter.rank > slotRank) {
    throw new Error(`adapter rank (or bottleneck width) ${adapter.rank} exceeds the slot rank ${slotRank}; raise MAX_LORA_RANK (the CLI's --max-rank)`);
  }
  const blocks = new Map<string, Float32Array>();
  const familyShapes = familyInputShapes(c, slotRank);
  const familyBlock = (name: string) => {
    let data = blocks.get(name);
    if (!data) {
      const input = familyShapes.get(name)!;
      blocks.set(name, (data = new Float32Array(elementCount(input.shape)).fill(input.identity)));
    }
    return { data, offset: 0 };
  };
  const isLora = adapter.family === 'lora' || adapter.family === 'dora';
  const doraPending = adapter.family === 'dora' && !adapter.outputScales;
  if (!doraPending) writeFamilyInputs(c, adapter, familyBlock, slotRank);
  if (isLora) layOutLora(c, slotRank, adapter, blocks);
  const isBottleneck = adapter.family === 'seq_bn' || adapter.family === 'double_seq_bn' || adapter.family === 'par_bn';
  const ready: SlotReadyAdapter = {
    family: adapter.family,
    loraRank: isLora ? adapter.rank : 0,
    bottleneckWidth: isBottleneck ? adapter.rank : 0,
    usesFixedInputs: adapter.family === 'dora' || adapter.family === 'ia3' || isBottleneck,
    prompt: {
      family: adapter.family,
      virtualTokens: virtualTokensOf(adapter),
      // Copies: the parsed arrays may share buffers that must not move with this layout.
      ...(adapter.family === 'prompt_tuning' || adapter.family === 'p_tuning' ? { softPrompt: adapter.embeddings.slice() } : {}),
      ...(adapter.family === 'prefix_tuning' ? { prefix: adapter.keyValues.slice() } : {}),
    },
    blocks,
    byteSize: 0,
    ...(doraPending ? { doraPending: withOwnBuffers(adapter) } : {}),
  };
  ready.byteSize = byteSizeOf(ready);
  return ready;
}

/** The DoRA layout completed with its row scales (`scaled`: the parsed adapter with `outputScales`). */
export function completeDoraLayout(c: LlamaConfig, ready: SlotReadyAdapter, scaled: LoraAdapter): SlotReadyAdapter {
  const blocks = new Map(ready.blocks);
  const familyShapes = familyInputShapes(c, 0);
  writeDoraScales(c, scaled, (name) => {
    let data = blocks.get(name);
    if (!data) blocks.set(name, (data = new Float32Array(elementCount(familyShapes.get(name)!.shape)).fill(1)));
    return { data, offset: 0 };
  });
  const { family, loraRank, bottleneckWidth, usesFixedInputs, prompt } = ready;
  const complete: SlotReadyAdapter = { family, loraRank, bottleneckWidth, usesFixedInputs, prompt, blocks, byteSize: 0 };
  complete.byteSize = byteSizeOf(complete);
  return complete;
}

/**
 * The DoRA adapter with each matrix and magnitude in a buffer of its own: parsed weights may be views of the file's
 * buffer, which must not move to another thread with them.
 */
function withOwnBuffers(adapter: LoraAdapter): LoraAdapter {
  const modules = adapter.modules.map((m) => ({ ...m, A: m.A.slice(), B: m.B.slice(), ...(m.magnitude ? { magnitude: m.magnitude.slice() } : {}) }));
  return { ...adapter, modules };
}

/** The buffers to transfer when the layout moves to another thread (each owned by one of its arrays). */
export function transferList(ready: SlotReadyAdapter): ArrayBuffer[] {
  const arrays = [...ready.blocks.values(), ready.prompt.softPrompt, ready.prompt.prefix];
  for (const m of ready.doraPending?.modules ?? []) arrays.push(m.A, m.B, m.magnitude);
  return [...new Set(arrays.flatMap((array) => (array ? [array.buffer as ArrayBuffer] : [])))];
}

function byteSizeOf(ready: SlotReadyAdapter): number {
  let bytes = (ready.prompt.softPrompt?.byteLength ?? 0) + (ready.prompt.prefix?.byteLength ?? 0);
  for (const data of ready.blocks.values()) bytes += data.byteLength;
  return bytes + (ready.doraPending?.byteSize ?? 0);
}

/** LoRA's A transposed into its group's block, B transposed with the scale folded in, both padded to the slot rank. */
function layOutLora(c: LlamaConfig, R: number, adapter: LoraAdapter, blocks: Map<string, Float32Array>): void {
  const layouts = slotLayouts(c);
  const shapes = loraInputShapes(c, R);
  const block = (key: keyof typeof LORA_INPUTS, layer: number): Float32Array => {
    const name = LORA_INPUTS[key](layer);
    let data = blocks.get(name);
    if (!data) blocks.set(name, (data = new Float32Array(elementCount(shapes[key]))));
    return data;
  };
  // Locals and plain index arithmetic in the inner loops: with property reads and Math.floor there, laying out an
  // r=16 adapter of SmolLM2-135M's shape took 95 ms instead of 17.
  for (const { module, layer, rank, scale, A, B } of adapter.modules) {
    const { inDim, outDim, bWidth, aGroup, bBlock } = layouts[module];
    const a = block(layouts[module].a, layer);
    const b = block(layouts[module].b, layer);
    // A [rank, in] → [in, R]: row i of the block holds column i of A.
    const aBase = aGroup * inDim * R;
    for (let i = 0; i < inDim; i++) {
      const to = aBase + i * R;
      for (let j = 0; j < rank; j++) a[to + j] = A[j * inDim + i];
    }
    // B [out, rank] → [blocks, R, bWidth], scaled: output o lies in block ⌊o/bWidth⌋, column o mod bWidth.
    for (let first = 0, blockIndex = bBlock; first < outDim; first += bWidth, blockIndex++) {
      const columns = Math.min(bWidth, outDim - first);
      for (let j = 0; j < rank; j++) {
        const to = (blockIndex * R + j) * bWidth;
        for (let o = 0; o < columns; o++) b[to + o] = B[(first + o) * rank + j] * scale;
      }
    }
  }
}

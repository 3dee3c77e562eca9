/**
 * A slot-ready adapter (slot-ready-adapter.ts) as a file, so a layout made once can be read back instead of being
 * made again: a safetensors file whose tensors are the slot's blocks (and the soft prompt or prefix), F32, with
 * what the runner reads beside them in its metadata. Reading it is one read and a header check; the blocks come
 * back as views of that one buffer. Nothing in it is trusted beyond what the check proves: every block must be a
 * graph input of this model at this slot rank, with exactly that input's size, so a damaged or foreign file is
 * refused instead of being copied into a slot.
 */
import { isAdapterFamily } from '../adapters/adapter.ts';
import { entryAsFloat32, parseSafetensors, serializeSafetensors, type SafetensorsTensorInput } from '../formats/safetensors.ts';
import { elementCount } from '../formats/tensor-shape.ts';
import { LORA_INPUTS } from '../graph/lora-delta.ts';
import type { LlamaConfig } from '../model/types.ts';
import { familyInputShapes, loraInputShapes, type LoraInputName } from './slot-layout.ts';
import type { SlotReadyAdapter } from './slot-ready-adapter.ts';

const FORMAT = 'slot-layout/1';
const SOFT_PROMPT = 'prompt:soft_prompt';
const PREFIX = 'prompt:prefix';

/** The file's bytes. `label` names what the layout was made from; reading checks it (see readSlotLayout). */
export function serializeSlotLayout(ready: SlotReadyAdapter, label: string): Uint8Array {
  if (ready.doraPending) throw new Error('a DoRA layout without its row scales is not complete, so it is not written');
  const tensors: Record<string, SafetensorsTensorInput> = {};
  for (const [name, data] of ready.blocks) tensors[name] = { dtype: 'F32', shape: [data.length], data };
  if (ready.prompt.softPrompt) tensors[SOFT_PROMPT] = { dtype: 'F32', shape: [ready.prompt.softPrompt.length], data: ready.prompt.softPrompt };
  if (ready.prompt.prefix) tensors[PREFIX] = { dtype: 'F32', shape: [ready.prompt.prefix.length], data: ready.prompt.prefix };
  return serializeSafetensors(tensors, {
    format: FORMAT,
    label,
    family: ready.family,
    lora_rank: String(ready.loraRank),
    bottleneck_width: String(ready.bottleneckWidth),
    uses_fixed_inputs: String(ready.usesFixedInputs),
    virtual_tokens: String(ready.prompt.virtualTokens),
  });
}

/**
 * The layout in `bytes`, checked against this model and slot rank and against `label`; throws, saying why, when
 * the file is not such a layout. `bytes` must start a buffer of their own, which they may not fill (a buffer read
 * into ahead of time, read-buffers.ts): the blocks become views of it, and the buffer moves to the engine thread
 * with them.
 */
export function readSlotLayout(bytes: Uint8Array, label: string, c: LlamaConfig, slotRank: number): SlotReadyAdapter {
  if (bytes.byteOffset !== 0) throw new Error('the bytes must start their buffer');
  const file = parseSafetensors(bytes, 'slot layout');
  const meta = file.metadata;
  if (meta.format !== FORMAT) throw new Error(`not a ${FORMAT} file (format ${JSON.stringify(meta.format)})`);
  if (meta.label !== label) throw new Error('made from something else');
  const family = meta.family;
  if (!isAdapterFamily(family)) throw new Error(`unknown family ${JSON.stringify(family)}`);
  const count = (key: string, max: number) => {
    const value = Number(meta[key]);
    if (!Number.isSafeInteger(value) || value < 0 || value > max) throw new Error(`${key} ${JSON.stringify(meta[key])} is not an integer in 0..${max}`);
    return value;
  };
  const loraRank = count('lora_rank', slotRank);
  const bottleneckWidth = count('bottleneck_width', slotRank);
  const virtualTokens = count('virtual_tokens', c.maxPositions);
  if (meta.uses_fixed_inputs !== 'true' && meta.uses_fixed_inputs !== 'false') throw new Error('uses_fixed_inputs is not a boolean');

  const sizes = blockSizes(c, slotRank);
  sizes.set(SOFT_PROMPT, virtualTokens * c.hiddenSize);
  sizes.set(PREFIX, virtualTokens * c.numLayers * 2 * c.numKvHeads * c.headDim);
  const blocks = new Map<string, Float32Array>();
  const prompt: SlotReadyAdapter['prompt'] = { family, virtualTokens };
  let byteSize = 0;
  for (const [name, entry] of file.tensors) {
    const expected = sizes.get(name);
    if (expected === undefined) throw new Error(`tensor "${name}" is no input of this model`);
    const data = entry.dtype === 'F32' ? entryAsFloat32(entry) : undefined;
    if (!data || data.length !== expected) throw new Error(`tensor "${name}" is not ${expected} F32 values`);
    byteSize += data.byteLength;
    if (name === SOFT_PROMPT) prompt.softPrompt = data;
    else if (name === PREFIX) prompt.prefix = data;
    else blocks.set(name, data);
  }
  return { family, loraRank, bottleneckWidth, usesFixedInputs: meta.uses_fixed_inputs === 'true', prompt, blocks, byteSize };
}

/** Every per-slot graph input of the model at this slot rank, with its size in values. */
function blockSizes(c: LlamaConfig, slotRank: number): Map<string, number> {
  const sizes = new Map<string, number>();
  const lora = loraInputShapes(c, slotRank);
  for (const key of Object.keys(LORA_INPUTS) as LoraInputName[]) {
    for (let layer = 0; layer < c.numLayers; layer++) sizes.set(LORA_INPUTS[key](layer), elementCount(lora[key]));
  }
  for (const [name, { shape }] of familyInputShapes(c, slotRank)) sizes.set(name, elementCount(shape));
  return sizes;
}

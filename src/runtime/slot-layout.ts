/**
 * The shapes of one runtime slot: each LoRA graph input's block (A transposed, [groups, in, R]; B transposed,
 * [blocks, R, width]) and where each projection sits in it, and the other families' per-row inputs with the value
 * that means "no adapter". Shared by the slots themselves (adapter-slots.ts) and by the layout an adapter is put
 * into before it reaches a slot (slot-ready-adapter.ts).
 */
import { projectionDims } from '../adapters/lora.ts';
import { LORA_INPUTS } from '../graph/lora-delta.ts';
import { bottleneckInputShapes, peftInputShapes } from '../graph/peft-blocks.ts';
import { LORA_TARGET_MODULES, type LlamaConfig, type LoraTargetModule } from '../model/types.ts';

export type LoraInputName = keyof typeof LORA_INPUTS;

export interface SlotLayout {
  /** Graph input holding A (transposed, [aGroups, in, R]) and the block this module uses. */
  a: LoraInputName;
  aGroup: number;
  aGroups: number;
  /**
   * Graph input holding B (transposed, [bBlocks, R, bWidth]) and the first block this module's columns fill (a
   * module wider than bWidth fills consecutive blocks).
   */
  b: LoraInputName;
  bBlock: number;
  bBlocks: number;
  bWidth: number;
  inDim: number;
  outDim: number;
}

export function slotLayouts(c: LlamaConfig): Record<LoraTargetModule, SlotLayout> {
  const kvDim = c.numKvHeads * c.headDim;
  const qBlocks = c.numHeads / c.numKvHeads;
  const qkv = { a: 'aQkv', aGroups: 3, b: 'bQkv', bBlocks: qBlocks + 2, bWidth: kvDim } as const;
  const gateUp = { a: 'aGateUp', aGroups: 2, b: 'bGateUp', bBlocks: 2, bWidth: c.intermediateSize } as const;
  const groups: Record<LoraTargetModule, Omit<SlotLayout, 'inDim' | 'outDim'>> = {
    q_proj: { ...qkv, aGroup: 0, bBlock: 0 },
    k_proj: { ...qkv, aGroup: 1, bBlock: qBlocks },
    v_proj: { ...qkv, aGroup: 2, bBlock: qBlocks + 1 },
    o_proj: { a: 'aO', aGroup: 0, aGroups: 1, b: 'bO', bBlock: 0, bBlocks: 1, bWidth: c.hiddenSize },
    gate_proj: { ...gateUp, aGroup: 0, bBlock: 0 },
    up_proj: { ...gateUp, aGroup: 1, bBlock: 1 },
    down_proj: { a: 'aDown', aGroup: 0, aGroups: 1, b: 'bDown', bBlock: 0, bBlocks: 1, bWidth: c.hiddenSize },
  };
  const layouts = {} as Record<LoraTargetModule, SlotLayout>;
  for (const module of LORA_TARGET_MODULES) {
    const { inFeatures, outFeatures } = projectionDims(c, module);
    layouts[module] = { ...groups[module], inDim: inFeatures, outDim: outFeatures };
  }
  return layouts;
}

/** Shape of one adapter's part of each LoRA graph input, at rank R: `[blocks, rows, columns]`. */
export function loraInputShapes(c: LlamaConfig, rank: number): Record<LoraInputName, number[]> {
  const shapes = {} as Record<LoraInputName, number[]>;
  for (const layout of Object.values(slotLayouts(c))) {
    shapes[layout.a] = [layout.aGroups, layout.inDim, rank];
    shapes[layout.b] = [layout.bBlocks, rank, layout.bWidth];
  }
  return shapes;
}

/**
 * The other families' per-row inputs: bottleneck matrices on their own width axis (`bottleneck`), and
 * fixed-width scales and biases (`fixed`), each with the value that means "no adapter" (0, or 1 for scales).
 */
export interface FamilyInput {
  group: 'bottleneck' | 'fixed';
  identity: 0 | 1;
  /** Bottleneck inputs: the index of the width axis. */
  axis?: number;
}

/** Every family input of a slot whose bottleneck width is `width`: its shape and how it is read. */
export function familyInputShapes(c: LlamaConfig, width: number): Map<string, FamilyInput & { shape: number[] }> {
  const inputs = new Map<string, FamilyInput & { shape: number[] }>();
  for (const [name, { shape, axis }] of bottleneckInputShapes(c, width)) {
    inputs.set(name, { shape, group: 'bottleneck', identity: 0, axis: axis === 'columns' ? shape.length - 1 : shape.length - 2 });
  }
  for (const [name, { shape, identity }] of peftInputShapes(c)) inputs.set(name, { shape, group: 'fixed', identity });
  return inputs;
}

/**
 * How each adapter family is laid out in a slot's blocks of the decoder graph's per-row inputs: LoRA's A
 * transposed into its group's column block and B transposed with the scale folded in; DoRA as LoRA plus an output
 * scale per row; IA3 vectors as input or output scales; bottleneck layers as down/up matrices on their own width
 * axis with the scaling folded into up. Prompt and prefix tuning have no per-row graph input: the runner feeds
 * them at prefill (soft prompts) or writes them into the KV cache (prefixes).
 */
import type { Adapter } from '../adapters/adapter.ts';
import type { BottleneckAdapter } from '../adapters/bottleneck.ts';
import type { Ia3Adapter } from '../adapters/ia3.ts';
import { projectionDims, type LoraAdapter } from '../adapters/lora.ts';
import { LORA_INPUTS } from '../graph/decoder-graph.ts';
import { BLENDED_ACTIVATIONS, PEFT_INPUTS, type ScaledOutput } from '../graph/peft-blocks.ts';
import { LORA_TARGET_MODULES, type LlamaConfig, type LoraTargetModule } from '../model/types.ts';

export type LoraInputName = keyof typeof LORA_INPUTS;

interface LoraLayout {
  /** Graph input holding A (transposed, [in, aGroups*R]) and the column block this module uses. */
  a: LoraInputName;
  aGroup: number;
  aGroups: number;
  /**
   * Graph input holding B (transposed: [R, out], or [1, bBlocks, R, bWidth] when grouped) and the first block
   * this module's columns fill (a module wider than bWidth fills consecutive blocks).
   */
  b: LoraInputName;
  bBlock: number;
  bBlocks: number;
  bWidth: number;
  inDim: number;
  outDim: number;
  /** The projection group whose output scale covers this module, and where its columns start in it. */
  scaled: ScaledOutput;
  scaledOffset: number;
}

export function loraLayouts(c: LlamaConfig): Record<LoraTargetModule, LoraLayout> {
  const qDim = c.numHeads * c.headDim;
  const kvDim = c.numKvHeads * c.headDim;
  const qBlocks = c.numHeads / c.numKvHeads;
  const qkv = { a: 'aQkv', aGroups: 3, b: 'bQkv', bBlocks: qBlocks + 2, bWidth: kvDim, scaled: 'qkv' } as const;
  const gateUp = { a: 'aGateUp', aGroups: 2, b: 'bGateUp', bBlocks: 2, bWidth: c.intermediateSize, scaled: 'gate_up' } as const;
  const groups: Record<LoraTargetModule, Omit<LoraLayout, 'inDim' | 'outDim'>> = {
    q_proj: { ...qkv, aGroup: 0, bBlock: 0, scaledOffset: 0 },
    k_proj: { ...qkv, aGroup: 1, bBlock: qBlocks, scaledOffset: qDim },
    v_proj: { ...qkv, aGroup: 2, bBlock: qBlocks + 1, scaledOffset: qDim + kvDim },
    o_proj: { a: 'aO', aGroup: 0, aGroups: 1, b: 'bO', bBlock: 0, bBlocks: 1, bWidth: c.hiddenSize, scaled: 'o', scaledOffset: 0 },
    gate_proj: { ...gateUp, aGroup: 0, bBlock: 0, scaledOffset: 0 },
    up_proj: { ...gateUp, aGroup: 1, bBlock: 1, scaledOffset: c.intermediateSize },
    down_proj: { a: 'aDown', aGroup: 0, aGroups: 1, b: 'bDown', bBlock: 0, bBlocks: 1, bWidth: c.hiddenSize, scaled: 'down', scaledOffset: 0 },
  };
  const layouts = {} as Record<LoraTargetModule, LoraLayout>;
  for (const module of LORA_TARGET_MODULES) {
    const { inFeatures, outFeatures } = projectionDims(c, module);
    layouts[module] = { ...groups[module], inDim: inFeatures, outDim: outFeatures };
  }
  return layouts;
}

/** Shape of one slot (one batch row) of each LoRA graph input, for rank R. */
export function loraInputShapes(c: LlamaConfig, rank: number): Record<LoraInputName, number[]> {
  const shapes = {} as Record<LoraInputName, number[]>;
  for (const layout of Object.values(loraLayouts(c))) {
    shapes[layout.a] = [layout.inDim, layout.aGroups * rank];
    shapes[layout.b] = layout.bBlocks === 1 ? [rank, layout.outDim] : [1, layout.bBlocks, rank, layout.bWidth];
  }
  return shapes;
}

/** One slot's block of a graph input. */
export type SlotBlock = (name: string) => { data: Float32Array; offset: number };

/** Writes an adapter into a cleared slot. `R` is the slot width of the rank axes (LoRA ranks, bottleneck widths). */
export function writeAdapter(c: LlamaConfig, adapter: Adapter, block: SlotBlock, R: number): void {
  switch (adapter.family) {
    case 'lora':
    case 'dora':
      return writeLora(c, adapter, block, R);
    case 'ia3':
      return writeIa3(c, adapter, block);
    case 'seq_bn':
    case 'double_seq_bn':
    case 'par_bn':
      return writeBottleneck(c, adapter, block, R);
    case 'prompt_tuning':
    case 'p_tuning':
    case 'prefix_tuning':
      return;
  }
}

function writeLora(c: LlamaConfig, adapter: LoraAdapter, block: SlotBlock, R: number): void {
  const layouts = loraLayouts(c);
  if (adapter.family === 'dora' && !adapter.outputScales) throw new Error('a DoRA adapter needs its output scales computed before it takes a slot');
  adapter.modules.forEach((m, index) => {
    const layout = layouts[m.module];
    const a = block(LORA_INPUTS[layout.a](m.layer));
    const b = block(LORA_INPUTS[layout.b](m.layer));
    const aCols = layout.aGroups * R;
    const aBase = a.offset + layout.aGroup * R;
    for (let j = 0; j < m.rank; j++) {
      for (let i = 0; i < layout.inDim; i++) a.data[aBase + i * aCols + j] = m.A[j * layout.inDim + i];
    }
    const bBase = b.offset + layout.bBlock * R * layout.bWidth;
    for (let j = 0; j < m.rank; j++) {
      for (let o = 0; o < layout.outDim; o++) {
        const blockIndex = Math.floor(o / layout.bWidth);
        b.data[bBase + (blockIndex * R + j) * layout.bWidth + (o % layout.bWidth)] = m.B[o * m.rank + j] * m.scale;
      }
    }
    const scales = adapter.outputScales?.[index];
    if (scales) {
      const target = block(PEFT_INPUTS.scaleOut(layout.scaled, m.layer));
      target.data.set(scales, target.offset + layout.scaledOffset);
    }
  });
}

function writeIa3(c: LlamaConfig, adapter: Ia3Adapter, block: SlotBlock): void {
  const layouts = loraLayouts(c);
  for (const { layer, module, kind, values } of adapter.vectors) {
    if (kind === 'input') {
      const target = block(PEFT_INPUTS.scaleIn(module === 'o_proj' ? 'o' : 'down', layer));
      target.data.set(values, target.offset);
    } else {
      const layout = layouts[module];
      const target = block(PEFT_INPUTS.scaleOut(layout.scaled, layer));
      target.data.set(values, target.offset + layout.scaledOffset);
    }
  }
}

function writeBottleneck(c: LlamaConfig, adapter: BottleneckAdapter, block: SlotBlock, R: number): void {
  const hidden = c.hiddenSize;
  for (const layer of adapter.layers) {
    const down = block(PEFT_INPUTS.bnDown(layer.location, layer.layer));
    const downBias = block(PEFT_INPUTS.bnDownBias(layer.location, layer.layer));
    const up = block(PEFT_INPUTS.bnUp(layer.location, layer.layer));
    const upBias = block(PEFT_INPUTS.bnUpBias(layer.location, layer.layer));
    for (let j = 0; j < layer.size; j++) {
      for (let i = 0; i < hidden; i++) down.data[down.offset + i * R + j] = layer.downWeight[j * hidden + i];
      downBias.data[downBias.offset + j] = layer.downBias[j];
      for (let o = 0; o < hidden; o++) up.data[up.offset + j * hidden + o] = layer.upWeight[o * layer.size + j] * adapter.scaling;
    }
    for (let o = 0; o < hidden; o++) upBias.data[upBias.offset + o] = layer.upBias[o] * adapter.scaling;
  }
  const fromSublayer = block(PEFT_INPUTS.bnFromSublayer);
  fromSublayer.data[fromSublayer.offset] = adapter.input.sublayer;
  const fromResidual = block(PEFT_INPUTS.bnFromResidual);
  fromResidual.data[fromResidual.offset] = adapter.input.residual;
  const activation = block(PEFT_INPUTS.bnActivation);
  activation.data[activation.offset + BLENDED_ACTIVATIONS.indexOf(adapter.nonLinearity)] = 1;
}

/**
 * How the families beside LoRA are laid out in a slot's blocks of the decoder graph's per-row inputs: DoRA as
 * its LoRA (AdapterSlots' own) plus an output scale per row; IA3 vectors as input or output scales; bottleneck
 * layers as down/up matrices on their own width axis with the scaling folded into up. Prompt and prefix tuning have no per-row graph input: the runner feeds
 * them at prefill (soft prompts) or writes them into the KV cache (prefixes).
 */
import type { Adapter } from '../adapters/adapter.ts';
import type { BottleneckAdapter } from '../adapters/bottleneck.ts';
import type { Ia3Adapter } from '../adapters/ia3.ts';
import { projectionDims, type LoraAdapter } from '../adapters/lora.ts';
import { BLENDED_ACTIVATIONS, PEFT_INPUTS, type ScaledOutput } from '../graph/peft-blocks.ts';
import { LORA_TARGET_MODULES, type LlamaConfig, type LoraTargetModule } from '../model/types.ts';

/** Where a projection's output columns sit in the output scale of its group (q|k|v, o, gate|up, down). */
export interface ScaledLayout {
  scaled: ScaledOutput;
  offset: number;
  inDim: number;
  outDim: number;
}

export function scaledLayouts(c: LlamaConfig): Record<LoraTargetModule, ScaledLayout> {
  const qDim = c.numHeads * c.headDim;
  const kvDim = c.numKvHeads * c.headDim;
  const placement: Record<LoraTargetModule, [ScaledOutput, number]> = {
    q_proj: ['qkv', 0],
    k_proj: ['qkv', qDim],
    v_proj: ['qkv', qDim + kvDim],
    o_proj: ['o', 0],
    gate_proj: ['gate_up', 0],
    up_proj: ['gate_up', c.intermediateSize],
    down_proj: ['down', 0],
  };
  const layouts = {} as Record<LoraTargetModule, ScaledLayout>;
  for (const module of LORA_TARGET_MODULES) {
    const { inFeatures, outFeatures } = projectionDims(c, module);
    layouts[module] = { scaled: placement[module][0], offset: placement[module][1], inDim: inFeatures, outDim: outFeatures };
  }
  return layouts;
}

/** One slot's block of a graph input. */
export type SlotBlock = (name: string) => { data: Float32Array; offset: number };

/**
 * Writes an adapter's family inputs into a cleared slot (LoRA's matrices are AdapterSlots' own). `R` is the slot
 * width of the bottleneck axis.
 */
export function writeFamilyInputs(c: LlamaConfig, adapter: Adapter, block: SlotBlock, R: number): void {
  switch (adapter.family) {
    case 'lora':
      return;
    case 'dora':
      return writeDoraScales(c, adapter, block);
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

/** DoRA's row scales into the output-scale blocks (once computed: ModelRunner.prepareAdapter). */
export function writeDoraScales(c: LlamaConfig, adapter: LoraAdapter, block: SlotBlock): void {
  if (!adapter.outputScales) throw new Error('a DoRA adapter needs its output scales computed before it takes a slot');
  const layouts = scaledLayouts(c);
  adapter.modules.forEach((m, index) => {
    const layout = layouts[m.module];
    const target = block(PEFT_INPUTS.scaleOut(layout.scaled, m.layer));
    target.data.set(adapter.outputScales![index], target.offset + layout.offset);
  });
}

function writeIa3(c: LlamaConfig, adapter: Ia3Adapter, block: SlotBlock): void {
  const layouts = scaledLayouts(c);
  for (const { layer, module, kind, values } of adapter.vectors) {
    if (kind === 'input') {
      const target = block(PEFT_INPUTS.scaleIn(module === 'o_proj' ? 'o' : 'down', layer));
      target.data.set(values, target.offset);
    } else {
      const layout = layouts[module];
      const target = block(PEFT_INPUTS.scaleOut(layout.scaled, layer));
      target.data.set(values, target.offset + layout.offset);
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

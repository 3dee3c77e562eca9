/**
 * Writes AdapterHub bottleneck adapters as the `adapters` library's save_adapter does for a Llama model: the
 * full config (`config` with every bottleneck option, `version`, `name`, `model_type`, `hidden_size`) and the
 * weights in adapter.safetensors under the model's parameter names.
 */
import { serializeSafetensors, type SafetensorsTensorInput } from '../formats/safetensors.ts';
import { createRng, randomNormal } from '../engine/random.ts';
import type { LlamaConfig } from '../model/types.ts';
import { BOTTLENECK_WEIGHTS_FILE, bottleneckTensorKey, type BottleneckLayerWeights } from './bottleneck.ts';
import { ADAPTER_CONFIG_FILE } from './peft-config.ts';

export type BottleneckKind = 'seq_bn' | 'double_seq_bn' | 'par_bn';

/** The library's defaults for the three configurations (SeqBnConfig, DoubleSeqBnConfig, ParBnConfig). */
const DEFAULTS: Record<BottleneckKind, Record<string, unknown>> = {
  seq_bn: { mh_adapter: false, output_adapter: true, reduction_factor: 16, non_linearity: 'relu', original_ln_before: true, original_ln_after: true, residual_before_ln: true, is_parallel: false, scaling: 1.0, init_weights: 'bert' },
  double_seq_bn: { mh_adapter: true, output_adapter: true, reduction_factor: 16, non_linearity: 'swish', original_ln_before: false, original_ln_after: true, residual_before_ln: true, is_parallel: false, scaling: 1.0, init_weights: 'bert' },
  par_bn: { mh_adapter: false, output_adapter: true, reduction_factor: 2, non_linearity: 'relu', original_ln_before: false, original_ln_after: true, residual_before_ln: false, is_parallel: true, scaling: 4.0, init_weights: 'mam_adapter' },
};

export interface BottleneckAdapterSpec {
  kind: BottleneckKind;
  name: string;
  /** Options over the kind's defaults (reduction_factor, non_linearity, scaling, ...). */
  options?: Record<string, unknown>;
  layers: Omit<BottleneckLayerWeights, 'size'>[];
}

export function bottleneckConfig(spec: Pick<BottleneckAdapterSpec, 'kind' | 'options'>): Record<string, unknown> {
  return {
    architecture: 'bottleneck',
    ln_before: false,
    ln_after: false,
    adapter_residual_before_ln: false,
    use_gating: false,
    phm_layer: false,
    inv_adapter: null,
    cross_adapter: false,
    leave_out: [],
    dropout: 0.0,
    stochastic_depth: 0.0,
    ...DEFAULTS[spec.kind],
    ...spec.options,
  };
}

export function bottleneckAdapterFiles(spec: BottleneckAdapterSpec, base: LlamaConfig): Map<string, Uint8Array> {
  const tensors: Record<string, SafetensorsTensorInput> = {};
  for (const l of spec.layers) {
    const size = l.downBias.length;
    const key = (part: 'adapter_down.0' | 'adapter_up', kind: 'weight' | 'bias') => bottleneckTensorKey(spec.name, l.layer, l.location, part, kind);
    tensors[key('adapter_down.0', 'weight')] = { dtype: 'F32', shape: [size, base.hiddenSize], data: l.downWeight };
    tensors[key('adapter_down.0', 'bias')] = { dtype: 'F32', shape: [size], data: l.downBias };
    tensors[key('adapter_up', 'weight')] = { dtype: 'F32', shape: [base.hiddenSize, size], data: l.upWeight };
    tensors[key('adapter_up', 'bias')] = { dtype: 'F32', shape: [base.hiddenSize], data: l.upBias };
  }
  const config = {
    config: bottleneckConfig(spec),
    hidden_size: base.hiddenSize,
    model_class: 'LlamaForCausalLM',
    model_name: null,
    model_type: 'llama',
    name: spec.name,
    version: 'adapters.1.1.0',
  };
  return new Map([
    [ADAPTER_CONFIG_FILE, new TextEncoder().encode(`${JSON.stringify(config, null, 2)}\n`)],
    [BOTTLENECK_WEIGHTS_FILE, serializeSafetensors(tensors, { format: 'pt' })],
  ]);
}

/** Seeded normal weights and biases (std `std`) at every placement the kind (and options) call for. */
export function randomBottleneckAdapter(
  base: LlamaConfig,
  opts: { kind: BottleneckKind; seed: number; options?: Record<string, unknown>; std?: number },
): BottleneckAdapterSpec {
  const config = bottleneckConfig(opts);
  const rng = createRng(opts.seed);
  const std = opts.std ?? 0.1;
  const normals = (count: number) => Float32Array.from({ length: count }, () => std * randomNormal(rng));
  const size = Math.max(1, Math.floor(base.hiddenSize / (config.reduction_factor as number)));
  const locations = (['attention', 'output'] as const).filter((location) => config[location === 'attention' ? 'mh_adapter' : 'output_adapter']);
  const layers: BottleneckAdapterSpec['layers'] = [];
  for (let layer = 0; layer < base.numLayers; layer++) {
    for (const location of locations) {
      layers.push({
        layer,
        location,
        downWeight: normals(size * base.hiddenSize),
        downBias: normals(size),
        upWeight: normals(base.hiddenSize * size),
        upBias: normals(base.hiddenSize),
      });
    }
  }
  return { kind: opts.kind, name: `${opts.kind}_${opts.seed}`, options: opts.options, layers };
}

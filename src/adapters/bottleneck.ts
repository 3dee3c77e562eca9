/**
 * Bottleneck adapters from the AdapterHub `adapters` library (`adapter_config.json` holding `config` and
 * `version`, weights in `adapter.safetensors`): sequential (`seq_bn`, Pfeiffer), double sequential
 * (`double_seq_bn`, Houlsby) and parallel (`par_bn`) configurations.
 *
 * Placement in a Llama decoder layer, as that library's Llama layer computes it (its sub-layers have no layer norm
 * of their own to hand the adapter): after attention (`mh_adapter`) and after the MLP (`output_adapter`), with x the
 * layer's residual stream and h the sub-layer's output (o_proj's or down_proj's),
 *
 *   x ← x + h + up(f(down(u)))·scaling,   u = h + x (sequential, original_ln_before), h (sequential), x (parallel)
 *
 * where down and up are linear layers with bias and f the non-linearity. Options that would change the base's own
 * residual or normalisation, or add modules this computation lacks, are refused with the option named.
 */
import type { SafetensorsEntry, SafetensorsFile } from '../formats/safetensors.ts';
import type { LlamaConfig } from '../model/types.ts';
import { isJsonObject, type JsonObject } from '../storage/json-files.ts';
import { readFloatTensor, tensorError } from './adapter-files.ts';
import { AdapterError } from './adapter-error.ts';
import { ADAPTER_CONFIG_FILE, describe, isEmpty, isUnset } from './peft-config.ts';

export const BOTTLENECK_WEIGHTS_FILE = 'adapter.safetensors';

/** The non-linearities served, by their names in the library (transformers' activation names). */
export const BOTTLENECK_NON_LINEARITIES = ['relu', 'gelu', 'gelu_new', 'silu', 'tanh'] as const;
export type BottleneckNonLinearity = (typeof BOTTLENECK_NON_LINEARITIES)[number];
/** Other spellings the library maps to the same functions. */
const NON_LINEARITY_ALIASES: Record<string, BottleneckNonLinearity> = { swish: 'silu', gelu_pytorch_tanh: 'gelu_new' };

export type BottleneckLocation = 'attention' | 'output';

export interface BottleneckLayerWeights {
  layer: number;
  location: BottleneckLocation;
  /** Bottleneck width: hidden // reduction_factor (at least 1). */
  size: number;
  /** [size, hidden] and [size]. */
  downWeight: Float32Array;
  downBias: Float32Array;
  /** [hidden, size] and [hidden]. */
  upWeight: Float32Array;
  upBias: Float32Array;
}

export interface BottleneckAdapter {
  family: 'seq_bn' | 'double_seq_bn' | 'par_bn';
  /** The widest bottleneck: batch rows hold bottlenecks on the same axis as LoRA ranks. */
  rank: number;
  nonLinearity: BottleneckNonLinearity;
  scaling: number;
  /** The adapter's input u = sublayer·h + residual·x (see the module comment). */
  input: { sublayer: 0 | 1; residual: 0 | 1 };
  layers: BottleneckLayerWeights[];
  byteSize: number;
}

const LOCATION_MODULES: Record<BottleneckLocation, string> = { attention: 'attention_adapters', output: 'output_adapters' };
const TENSOR_KEY = /^(?:[A-Za-z_]\w*\.)*layers\.(\d+)\.(attention_adapters|output_adapters)\.adapters\.([^.]+)\.(adapter_down\.0|adapter_up)\.(weight|bias)$/;

/** The key the library saves a bottleneck tensor under in a Llama model. */
export function bottleneckTensorKey(name: string, layer: number, location: BottleneckLocation, part: 'adapter_down.0' | 'adapter_up', kind: 'weight' | 'bias'): string {
  return `model.layers.${layer}.${LOCATION_MODULES[location]}.adapters.${name}.${part}.${kind}`;
}

function invalid(message: string): never {
  throw new AdapterError('invalid_config', `${ADAPTER_CONFIG_FILE}: ${message}`);
}

function unsupported(field: string, value: unknown, why: string): never {
  throw new AdapterError('unsupported_feature', `${ADAPTER_CONFIG_FILE}: "config.${field}": ${describe(value)} is not supported (${why})`);
}

function flag(config: JsonObject, field: string, fallback: boolean): boolean {
  const value = config[field];
  if (isUnset(value)) return fallback;
  if (typeof value !== 'boolean') invalid(`"config.${field}" must be true or false, got ${describe(value)}`);
  return value;
}

/** Options whose effect this computation does not include: each must keep its inert value. */
const REFUSED_OPTIONS: { field: string; inert: (value: unknown) => boolean; why: string }[] = [
  { field: 'original_ln_after', inert: (v) => isUnset(v) || v === true, why: "without it the layer drops its own residual connection, changing the base's computation" },
  { field: 'ln_before', inert: (v) => isUnset(v) || v === false, why: 'a layer norm inside the adapter is not served' },
  { field: 'ln_after', inert: (v) => isUnset(v) || v === false, why: 'a layer norm inside the adapter is not served' },
  { field: 'use_gating', inert: (v) => isUnset(v) || v === false, why: 'gated adapters are not served' },
  { field: 'phm_layer', inert: (v) => isUnset(v) || v === false, why: 'Compacter PHM layers are not served' },
  { field: 'inv_adapter', inert: isUnset, why: 'invertible adapters change the embeddings' },
  { field: 'cross_adapter', inert: (v) => isUnset(v) || v === false, why: 'a causal language model has no cross-attention' },
];

function reductionFactor(value: unknown, layer: number): number {
  let factor = value;
  if (isJsonObject(value)) {
    factor = value[String(layer)] ?? value.default;
    if (factor === undefined) invalid(`"config.reduction_factor" gives no value for layer ${layer} and no "default"`);
  }
  if (typeof factor !== 'number' || !Number.isFinite(factor) || factor <= 0) {
    invalid(`"config.reduction_factor" must be a positive number or a mapping of layers to numbers, got ${describe(value)}`);
  }
  return factor;
}

/** Validates an AdapterHub bottleneck adapter against `base`; throws AdapterError naming the option or tensor. */
export function parseBottleneckAdapter(json: JsonObject, weights: SafetensorsFile, base: LlamaConfig): BottleneckAdapter {
  const config = json.config;
  if (!isJsonObject(config)) invalid(`"config" must be the adapter's configuration object, got ${describe(config)}`);
  if (!isUnset(config.architecture) && config.architecture !== 'bottleneck') {
    throw new AdapterError(
      'unsupported_format',
      `${ADAPTER_CONFIG_FILE}: "config.architecture": ${describe(config.architecture)} is not supported; from the adapters library only bottleneck adapters are served (use PEFT for LoRA, prompt and prefix tuning)`,
    );
  }
  if (!isUnset(json.hidden_size) && json.hidden_size !== base.hiddenSize) {
    throw new AdapterError('incompatible_base', `${ADAPTER_CONFIG_FILE}: "hidden_size": ${describe(json.hidden_size)} does not match the base model's hidden size ${base.hiddenSize}`);
  }
  for (const { field, inert, why } of REFUSED_OPTIONS) if (!inert(config[field])) unsupported(field, config[field], why);
  const residualBeforeLn = config.residual_before_ln ?? true;
  if (typeof residualBeforeLn !== 'boolean') unsupported('residual_before_ln', residualBeforeLn, 'only true or false, as a Llama layer has no layer norm to add before');
  const parallel = flag(config, 'is_parallel', false);
  const lnBefore = flag(config, 'original_ln_before', false);
  if (!parallel && lnBefore && !residualBeforeLn) {
    unsupported('residual_before_ln', false, 'with "original_ln_before": true it adds the layer input to the residual stream a second time');
  }
  const attention = flag(config, 'mh_adapter', false);
  const output = flag(config, 'output_adapter', false);
  if (!attention && !output) invalid('"config.mh_adapter" and "config.output_adapter" are both false: the adapter adds nothing');

  const rawNonLinearity = typeof config.non_linearity === 'string' ? config.non_linearity.toLowerCase() : config.non_linearity;
  const nonLinearity =
    typeof rawNonLinearity === 'string'
      ? (NON_LINEARITY_ALIASES[rawNonLinearity] ?? BOTTLENECK_NON_LINEARITIES.find((name) => name === rawNonLinearity))
      : undefined;
  if (!nonLinearity) {
    unsupported('non_linearity', config.non_linearity, `served non-linearities: ${[...BOTTLENECK_NON_LINEARITIES, ...Object.keys(NON_LINEARITY_ALIASES)].join(', ')}`);
  }
  const scaling = config.scaling ?? 1;
  if (typeof scaling !== 'number' || !Number.isFinite(scaling)) unsupported('scaling', scaling, 'only a fixed number; learned scalings are not served');
  const leaveOut = isEmpty(config.leave_out) ? [] : config.leave_out;
  if (!Array.isArray(leaveOut) || !leaveOut.every((layer) => Number.isInteger(layer))) invalid(`"config.leave_out" must be a list of layer indices, got ${describe(config.leave_out)}`);

  const name = typeof json.name === 'string' ? json.name : null;
  const entries = new Map<string, SafetensorsEntry>();
  for (const [key, entry] of weights.tensors) {
    const match = TENSOR_KEY.exec(key);
    if (!match) {
      tensorError(BOTTLENECK_WEIGHTS_FILE, 'invalid_tensor', `unexpected tensor "${key}"; a bottleneck adapter holds only tensors named like "${bottleneckTensorKey(name ?? '<name>', 0, 'output', 'adapter_up', 'weight')}"`);
    }
    const [, layerText, module, adapterName, part, kind] = match;
    if (name !== null && adapterName !== name) {
      tensorError(BOTTLENECK_WEIGHTS_FILE, 'invalid_tensor', `tensor "${key}" belongs to adapter "${adapterName}", but ${ADAPTER_CONFIG_FILE} names the adapter "${name}"`);
    }
    if (Number(layerText) >= base.numLayers) {
      tensorError(BOTTLENECK_WEIGHTS_FILE, 'incompatible_base', `tensor "${key}" is for layer ${layerText}, but the base model has ${base.numLayers} layers (0-${base.numLayers - 1})`);
    }
    entries.set(`${Number(layerText)}.${module}.${part}.${kind}`, entry);
  }

  const locations = (['attention', 'output'] as const).filter((location) => (location === 'attention' ? attention : output));
  const layers: BottleneckLayerWeights[] = [];
  for (let layer = 0; layer < base.numLayers; layer++) {
    if (leaveOut.includes(layer)) continue;
    for (const location of locations) {
      const size = Math.max(1, Math.floor(base.hiddenSize / reductionFactor(config.reduction_factor, layer)));
      const read = (part: 'adapter_down.0' | 'adapter_up', kind: 'weight' | 'bias', shape: number[], explanation: string) => {
        const key = bottleneckTensorKey(name ?? '<name>', layer, location, part, kind);
        const entry = entries.get(`${layer}.${LOCATION_MODULES[location]}.${part}.${kind}`);
        entries.delete(`${layer}.${LOCATION_MODULES[location]}.${part}.${kind}`);
        if (!entry) tensorError(BOTTLENECK_WEIGHTS_FILE, 'missing_tensor', `"${key}" is missing; ${ADAPTER_CONFIG_FILE} places an adapter there`);
        return readFloatTensor(BOTTLENECK_WEIGHTS_FILE, entry, shape, explanation);
      };
      const sizeNote = `bottleneck width ${size} = hidden size ${base.hiddenSize} // reduction_factor`;
      layers.push({
        layer,
        location,
        size,
        downWeight: read('adapter_down.0', 'weight', [size, base.hiddenSize], `down projection [width, hidden]: ${sizeNote}`),
        downBias: read('adapter_down.0', 'bias', [size], sizeNote),
        upWeight: read('adapter_up', 'weight', [base.hiddenSize, size], `up projection [hidden, width]: ${sizeNote}`),
        upBias: read('adapter_up', 'bias', [base.hiddenSize], 'one bias per hidden feature'),
      });
    }
  }
  const leftover = [...entries.keys()][0];
  if (leftover !== undefined) {
    tensorError(BOTTLENECK_WEIGHTS_FILE, 'invalid_tensor', `a tensor for ${leftover} is present, but ${ADAPTER_CONFIG_FILE} places no adapter there (check "mh_adapter", "output_adapter" and "leave_out")`);
  }
  if (layers.length === 0) throw new AdapterError('incompatible_base', `${ADAPTER_CONFIG_FILE}: "config.leave_out" leaves out every layer of the base model`);
  return {
    family: parallel ? 'par_bn' : attention && output ? 'double_seq_bn' : 'seq_bn',
    rank: Math.max(...layers.map(({ size }) => size)),
    nonLinearity,
    scaling,
    input: parallel ? { sublayer: 0, residual: 1 } : { sublayer: 1, residual: lnBefore ? 1 : 0 },
    layers,
    byteSize: layers.reduce((total, l) => total + l.downWeight.byteLength + l.downBias.byteLength + l.upWeight.byteLength + l.upBias.byteLength, 0),
  };
}

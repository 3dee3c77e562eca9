/**
 * Hugging Face PEFT IA3 adapters: one learned vector `ia3_l` per adapted projection. A projection listed in
 * `feedforward_modules` scales its input (x ⊙ l)·Wᵀ, any other its output (x·Wᵀ) ⊙ l, as PEFT's IA3 layer does.
 *
 * Input scaling is served only where the projection reads an input of its own (o_proj, down_proj): q|k|v and
 * gate|up each share one input, which a per-projection input scale would split apart.
 */
import type { SafetensorsEntry, SafetensorsFile } from '../formats/safetensors.ts';
import { LORA_TARGET_MODULES, type LlamaConfig, type LoraTargetModule } from '../model/types.ts';
import type { JsonObject } from '../storage/json-files.ts';
import { readFloatTensor, tensorError } from './adapter-files.ts';
import { AdapterError } from './adapter-error.ts';
import { ADAPTER_WEIGHTS_FILE as PEFT_WEIGHTS_FILE, projectionDims } from './lora.ts';
import {
  ADAPTER_CONFIG_FILE,
  checkTaskType,
  describe,
  isEmpty,
  isLoraTargetModule,
  isUnset,
  loraModuleName,
  moduleSelector,
  parseTargetModules,
  planTargetedModules,
} from './peft-config.ts';

/** Projections whose input is theirs alone, so an input scale can be applied per projection. */
const INPUT_SCALABLE: readonly LoraTargetModule[] = ['o_proj', 'down_proj'];

export interface Ia3Vector {
  layer: number;
  module: LoraTargetModule;
  /** `input`: the projection's input is scaled (feedforward module); `output`: its output. */
  kind: 'input' | 'output';
  /** [in_features] or [out_features]. */
  values: Float32Array;
}

export interface Ia3Adapter {
  family: 'ia3';
  /** IA3 has no low-rank matrices. */
  rank: 0;
  targetModules: LoraTargetModule[];
  /** In layer order, then LORA_TARGET_MODULES order. */
  vectors: Ia3Vector[];
  byteSize: number;
}

/** The key PEFT saves an IA3 vector under, e.g. `base_model.model.model.layers.0.self_attn.k_proj.ia3_l`. */
export function ia3TensorKey(layer: number, module: LoraTargetModule): string {
  return `base_model.model.${loraModuleName(layer, module)}.ia3_l`;
}

const TENSOR_KEY = /^base_model\.model\.(model\.layers\.\d+\.[^.]+\.([^.]+))\.ia3_l(?:\.default)?$/;

function refuseOption(json: JsonObject, field: string, expected: string, why: string): void {
  throw new AdapterError(
    'unsupported_feature',
    `${ADAPTER_CONFIG_FILE}: "${field}": ${describe(json[field])} is not supported (${why}); only IA3 adapters with "${field}": ${expected} can be served`,
  );
}

/** Validates an IA3 adapter against `base`; throws AdapterError naming the field or tensor at fault. */
export function parseIa3Adapter(json: JsonObject, weights: SafetensorsFile, base: LlamaConfig): Ia3Adapter {
  checkTaskType(json);
  if (!isEmpty(json.modules_to_save)) refuseOption(json, 'modules_to_save', 'null', 'it replaces whole base modules with trained copies');
  if (!isUnset(json.fan_in_fan_out) && json.fan_in_fan_out !== false) {
    refuseOption(json, 'fan_in_fan_out', 'false', 'it is for transposed Conv1D weights, which Llama does not have');
  }
  const selection = {
    targetModules: parseTargetModules(json.target_modules),
    excludeModules: isEmpty(json.exclude_modules) ? null : moduleSelector(json.exclude_modules, 'exclude_modules'),
    layersToTransform: null,
    layersPattern: null,
  };
  const feedforward = isUnset(json.feedforward_modules)
    ? { kind: 'names' as const, names: [] }
    : moduleSelector(json.feedforward_modules, 'feedforward_modules');
  const isFeedforward = (name: string) =>
    feedforward.kind === 'regex'
      ? new RegExp(`^(?:${feedforward.pattern})$`).test(name)
      : feedforward.names.some((entry) => name === entry || name.endsWith(`.${entry}`));
  const targets = planTargetedModules(selection, base);

  const entries = new Map<string, SafetensorsEntry>();
  for (const [key, entry] of weights.tensors) {
    const match = TENSOR_KEY.exec(key);
    if (!match || !isLoraTargetModule(match[2])) {
      tensorError(PEFT_WEIGHTS_FILE, 'invalid_tensor', `unexpected tensor "${key}"; an IA3 adapter holds only vectors named like "${ia3TensorKey(0, 'k_proj')}"`);
    }
    if (!targets.some(({ name }) => name === match[1])) {
      tensorError(PEFT_WEIGHTS_FILE, 'invalid_tensor', `tensor "${key}" adapts ${match[1]}, which ${ADAPTER_CONFIG_FILE} does not target (check "target_modules")`);
    }
    if (entries.has(match[1])) tensorError(PEFT_WEIGHTS_FILE, 'invalid_tensor', `two tensors hold the IA3 vector of ${match[1]}; keep one`);
    entries.set(match[1], entry);
  }

  const vectors = targets.map(({ layer, module, name }): Ia3Vector => {
    const kind = isFeedforward(name) ? 'input' : 'output';
    if (kind === 'input' && !INPUT_SCALABLE.includes(module)) {
      throw new AdapterError(
        'unsupported_feature',
        `${ADAPTER_CONFIG_FILE}: "feedforward_modules" includes ${name}; input scaling is supported on ${INPUT_SCALABLE.join(' and ')} only (${module} shares its input with other projections), so list ${module} as an output-scaled module or leave it out`,
      );
    }
    const entry =
      entries.get(name) ??
      tensorError(PEFT_WEIGHTS_FILE, 'missing_tensor', `"${ia3TensorKey(layer, module)}" is missing; ${ADAPTER_CONFIG_FILE} targets ${name}`);
    const { inFeatures, outFeatures } = projectionDims(base, module);
    const values = readFloatTensor(
      PEFT_WEIGHTS_FILE,
      entry,
      kind === 'input' ? [1, inFeatures] : [outFeatures, 1],
      kind === 'input' ? `${module} is a feedforward module: one scale per input feature` : `one scale per output feature of ${module}`,
    );
    return { layer, module, kind, values };
  });
  return {
    family: 'ia3',
    rank: 0,
    targetModules: LORA_TARGET_MODULES.filter((target) => vectors.some(({ module }) => module === target)),
    vectors,
    byteSize: vectors.reduce((total, { values }) => total + values.byteLength, 0),
  };
}

/**
 * LoRA adapters in Hugging Face PEFT layout (`adapter_config.json` + `adapter_model.safetensors`), checked
 * against the base model so that an adapter that loads is one the runtime can apply: every tensor understood,
 * every targeted projection present with the shapes the base and the configured rank require, every value finite.
 *
 * With `use_dora`, each projection also carries `lora_magnitude_vector` (DoRA): the output rows of W + scale·B·A
 * are renormalised to those magnitudes.
 *
 * q_proj/k_proj B rows (and DoRA magnitudes, indexed by the same rows) stay in Hugging Face order: the base model
 * is canonicalised to Hugging Face's rotate-half q/k row order at load, which is the order PEFT adapters are
 * trained against, so no permutation is needed here.
 */
import { LORA_TARGET_MODULES, type LlamaConfig, type LoraTargetModule } from '../model/types.ts';
import type { SafetensorsEntry, SafetensorsFile } from '../formats/safetensors.ts';
import { readAdapterDirectory, readFloatTensor, tensorError as weightsError } from './adapter-files.ts';
import {
  ADAPTER_CONFIG_FILE,
  isLoraTargetModule,
  loraModuleName,
  parsePeftConfig,
  planLoraModules,
  type LoraModulePlan,
  type ParsedPeftConfig,
} from './peft-config.ts';

export const ADAPTER_WEIGHTS_FILE = 'adapter_model.safetensors';

export type LoraMatrix = 'A' | 'B';
/** What a tensor of a LoRA module is: one of its two matrices, or DoRA's magnitude vector. */
type LoraTensor = LoraMatrix | 'magnitude';

export interface LoraModuleWeights {
  layer: number;
  module: LoraTargetModule;
  rank: number;
  /** alpha/rank, or alpha/sqrt(rank) with rsLoRA, from this module's own rank and alpha. */
  scale: number;
  /** [rank, in_features], row-major. */
  A: Float32Array;
  /** [out_features, rank], row-major. */
  B: Float32Array;
  /** DoRA only: the learned norm of each output row, [out_features]. */
  magnitude?: Float32Array;
}

export interface LoraAdapter {
  /** `dora` when the config sets use_dora: each output row is rescaled by magnitude / ‖W + scale·B·A‖. */
  family: 'lora' | 'dora';
  /** The largest rank over the modules. */
  rank: number;
  /** The projections adapted in at least one layer, in LORA_TARGET_MODULES order. */
  targetModules: LoraTargetModule[];
  /** In layer order, then LORA_TARGET_MODULES order. */
  modules: LoraModuleWeights[];
  /** Bytes held by the A, B and magnitude arrays (float32), for caches bounded in bytes. */
  byteSize: number;
  config: ParsedPeftConfig;
  /**
   * DoRA only, filled once in the engine (the norms need the base weights): per module, in `modules` order, the
   * factor each output row is multiplied by.
   */
  outputScales?: Float32Array[];
}

/** Input and output sizes of one projection of `base`, i.e. a weight of shape [outFeatures, inFeatures]. */
export function projectionDims(base: LlamaConfig, module: LoraTargetModule): { inFeatures: number; outFeatures: number } {
  const queryWidth = base.numHeads * base.headDim;
  const keyValueWidth = base.numKvHeads * base.headDim;
  switch (module) {
    case 'q_proj':
      return { inFeatures: base.hiddenSize, outFeatures: queryWidth };
    case 'k_proj':
    case 'v_proj':
      return { inFeatures: base.hiddenSize, outFeatures: keyValueWidth };
    case 'o_proj':
      return { inFeatures: queryWidth, outFeatures: base.hiddenSize };
    case 'gate_proj':
    case 'up_proj':
      return { inFeatures: base.hiddenSize, outFeatures: base.intermediateSize };
    case 'down_proj':
      return { inFeatures: base.intermediateSize, outFeatures: base.hiddenSize };
  }
}

/** The key PEFT saves a LoRA matrix under, e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`. */
export function loraTensorKey(layer: number, module: LoraTargetModule, matrix: LoraMatrix): string {
  return `base_model.model.${loraModuleName(layer, module)}.lora_${matrix}.weight`;
}

// `.default` is the adapter name older PEFT versions (and unmerged multi-adapter saves) leave in the key.
const TENSOR_KEY = /^base_model\.model\.model\.layers\.(\d+)\.[^.]+\.([^.]+)\.(lora_A|lora_B|lora_magnitude_vector)(?:\.default)?(\.weight)?$/;

/** The key PEFT saves a DoRA magnitude vector under (without `.weight`, unlike the matrices). */
export function magnitudeTensorKey(layer: number, module: LoraTargetModule): string {
  return `base_model.model.${loraModuleName(layer, module)}.lora_magnitude_vector`;
}

interface TensorKey {
  layer: number;
  module: LoraTargetModule;
  tensor: LoraTensor;
}

/** Only the exact PEFT spelling counts: a module under the wrong parent or a zero-padded index is not understood. */
function parseTensorKey(key: string): TensorKey | null {
  const match = TENSOR_KEY.exec(key);
  if (!match) return null;
  const [, layerText, module, kind, weightSuffix] = match;
  if (!isLoraTargetModule(module)) return null;
  const isMagnitude = kind === 'lora_magnitude_vector';
  // Matrices always end in `.weight`; PEFT saves magnitude vectors without it.
  if (isMagnitude === Boolean(weightSuffix)) return null;
  const layer = Number(layerText);
  const canonical = `${loraModuleName(layer, module)}.${kind}`;
  if (!key.startsWith(`base_model.model.${canonical}`)) return null;
  return { layer, module, tensor: isMagnitude ? 'magnitude' : (kind.slice(-1) as LoraMatrix) };
}

function tensorError(code: Parameters<typeof weightsError>[1], message: string): never {
  return weightsError(ADAPTER_WEIGHTS_FILE, code, message);
}

/** Groups the file's tensors by module, refusing any tensor that is not a LoRA matrix of a planned module. */
function tensorsByModule(weights: SafetensorsFile, plans: LoraModulePlan[], base: LlamaConfig, useDora: boolean): Map<string, Partial<Record<LoraTensor, SafetensorsEntry>>> {
  const planned = new Set(plans.map((plan) => plan.name));
  const grouped = new Map<string, Partial<Record<LoraTensor, SafetensorsEntry>>>();
  for (const [key, entry] of weights.tensors) {
    const parsed = parseTensorKey(key);
    if (!parsed) {
      tensorError(
        'invalid_tensor',
        `unexpected tensor "${key}"; only LoRA matrices named like "${loraTensorKey(0, 'q_proj', 'A')}" and DoRA magnitude vectors are supported (embedding adapters and modules_to_save copies are not)`,
      );
    }
    if (parsed.tensor === 'magnitude' && !useDora) {
      tensorError('invalid_tensor', `tensor "${key}" is a DoRA magnitude vector, but ${ADAPTER_CONFIG_FILE} does not set "use_dora": true`);
    }
    if (parsed.layer >= base.numLayers) {
      tensorError('incompatible_base', `tensor "${key}" is for layer ${parsed.layer}, but the base model has ${base.numLayers} layers (0-${base.numLayers - 1})`);
    }
    const name = loraModuleName(parsed.layer, parsed.module);
    if (!planned.has(name)) {
      tensorError('invalid_tensor', `tensor "${key}" adapts ${name}, which ${ADAPTER_CONFIG_FILE} does not target (check "target_modules" and "layers_to_transform")`);
    }
    const pair = grouped.get(name) ?? {};
    const previous = pair[parsed.tensor];
    if (previous) tensorError('invalid_tensor', `tensors "${previous.name}" and "${key}" are both the ${parsed.tensor} of ${name}; keep one`);
    pair[parsed.tensor] = entry;
    grouped.set(name, pair);
  }
  return grouped;
}

function readMatrix(entry: SafetensorsEntry, expectedShape: [number, number], explanation: string): Float32Array {
  return readFloatTensor(ADAPTER_WEIGHTS_FILE, entry, expectedShape, explanation);
}

function loadModule(plan: LoraModulePlan, pair: Partial<Record<LoraTensor, SafetensorsEntry>> | undefined, base: LlamaConfig, useDora: boolean): LoraModuleWeights {
  const { layer, module, name, rank, scale } = plan;
  const required = (matrix: LoraMatrix): SafetensorsEntry =>
    pair?.[matrix] ??
    tensorError('missing_tensor', `"${loraTensorKey(layer, module, matrix)}" is missing; ${ADAPTER_CONFIG_FILE} targets ${name}, so both its lora_A and lora_B are required`);
  const magnitude = (): Float32Array => {
    const entry =
      pair?.magnitude ??
      tensorError('missing_tensor', `"${magnitudeTensorKey(layer, module)}" is missing; ${ADAPTER_CONFIG_FILE} sets "use_dora": true, so every adapted projection needs its magnitude vector`);
    return readFloatTensor(ADAPTER_WEIGHTS_FILE, entry, [projectionDims(base, module).outFeatures], `one magnitude per output row of ${module}`);
  };
  const { inFeatures, outFeatures } = projectionDims(base, module);
  const rankNote = `rank ${rank} is what ${ADAPTER_CONFIG_FILE} gives ${name} through "r" or "rank_pattern"`;
  return {
    layer,
    module,
    rank,
    scale,
    A: readMatrix(required('A'), [rank, inFeatures], `lora_A is [rank, in_features]: ${rankNote}; ${module} of the base model reads ${inFeatures} features`),
    B: readMatrix(required('B'), [outFeatures, rank], `lora_B is [out_features, rank]: ${module} of the base model writes ${outFeatures} features; ${rankNote}`),
    ...(useDora ? { magnitude: magnitude() } : {}),
  };
}

/** Validates a LoRA (or DoRA) adapter against `base`; throws AdapterError naming the field or tensor at fault. */
export function parseLoraAdapter(configJson: unknown, weights: SafetensorsFile, base: LlamaConfig): LoraAdapter {
  const config = parsePeftConfig(configJson);
  const plans = planLoraModules(config, base);
  const grouped = tensorsByModule(weights, plans, base, config.useDora);
  const modules = plans.map((plan) => loadModule(plan, grouped.get(plan.name), base, config.useDora));
  return {
    family: config.useDora ? 'dora' : 'lora',
    rank: Math.max(...modules.map((module) => module.rank)),
    targetModules: LORA_TARGET_MODULES.filter((target) => modules.some(({ module }) => module === target)),
    modules,
    byteSize: modules.reduce((total, { A, B, magnitude }) => total + A.byteLength + B.byteLength + (magnitude?.byteLength ?? 0), 0),
    config,
  };
}

/** Loads a PEFT LoRA (or DoRA) directory and validates it against `base`; other families are refused. */
export async function loadLoraAdapter(dir: string, base: LlamaConfig): Promise<LoraAdapter> {
  const weightsFor = () => ({ file: ADAPTER_WEIGHTS_FILE, kind: 'a PEFT LoRA adapter' });
  const { json, weights } = await readAdapterDirectory(dir, weightsFor, ADAPTER_WEIGHTS_FILE);
  return parseLoraAdapter(json, weights, base);
}

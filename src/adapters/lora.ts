/**
 * LoRA adapters in Hugging Face PEFT layout (`adapter_config.json` + `adapter_model.safetensors`), checked
 * against the base model so that an adapter that loads is one the runtime can apply: every tensor understood,
 * every targeted projection present with the shapes the base and the configured rank require, every value finite.
 *
 * q_proj/k_proj B rows stay in Hugging Face order: the base model is canonicalised to Hugging Face's rotate-half
 * q/k row order at load, which is the order PEFT adapters are trained against, so no permutation is needed here.
 */
import { readdir, readFile } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { LORA_TARGET_MODULES, type LlamaConfig, type LoraTargetModule } from '../model/types.ts';
import { entryToFloat32, parseSafetensors, SafetensorsError, type SafetensorsEntry, type SafetensorsFile } from '../formats/safetensors.ts';
import { AdapterError } from './adapter-error.ts';
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

/** Extensions of PyTorch pickle checkpoints: loading one runs arbitrary code, so their mere presence is refused. */
const PICKLE_EXTENSIONS = ['.bin', '.pt', '.pth', '.pkl', '.ckpt'];

export type LoraMatrix = 'A' | 'B';

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
}

export interface LoraAdapter {
  /** The largest rank over the modules. */
  rank: number;
  /** The projections adapted in at least one layer, in LORA_TARGET_MODULES order. */
  targetModules: LoraTargetModule[];
  /** In layer order, then LORA_TARGET_MODULES order. */
  modules: LoraModuleWeights[];
  /** Bytes held by the A and B arrays (float32), for caches bounded in bytes. */
  byteSize: number;
  config: ParsedPeftConfig;
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
const TENSOR_KEY = /^base_model\.model\.model\.layers\.(\d+)\.[^.]+\.([^.]+)\.lora_([AB])(?:\.default)?\.weight$/;

interface TensorKey {
  layer: number;
  module: LoraTargetModule;
  matrix: LoraMatrix;
}

/** Only the exact PEFT spelling counts: a module under the wrong parent or a zero-padded index is not understood. */
function parseTensorKey(key: string): TensorKey | null {
  const match = TENSOR_KEY.exec(key);
  if (!match) return null;
  const [, layerText, module, matrix] = match;
  if (!isLoraTargetModule(module)) return null;
  const layer = Number(layerText);
  const canonical = `${loraModuleName(layer, module)}.lora_${matrix}`;
  return key.startsWith(`base_model.model.${canonical}.`) ? { layer, module, matrix: matrix as LoraMatrix } : null;
}

function tensorError(code: 'invalid_tensor' | 'missing_tensor' | 'shape_mismatch' | 'non_finite' | 'incompatible_base', message: string): never {
  throw new AdapterError(code, `${ADAPTER_WEIGHTS_FILE}: ${message}`);
}

/** Groups the file's tensors by module, refusing any tensor that is not a LoRA matrix of a planned module. */
function tensorsByModule(weights: SafetensorsFile, plans: LoraModulePlan[], base: LlamaConfig): Map<string, Partial<Record<LoraMatrix, SafetensorsEntry>>> {
  const planned = new Set(plans.map((plan) => plan.name));
  const grouped = new Map<string, Partial<Record<LoraMatrix, SafetensorsEntry>>>();
  for (const [key, entry] of weights.tensors) {
    const parsed = parseTensorKey(key);
    if (!parsed) {
      tensorError(
        'invalid_tensor',
        `unexpected tensor "${key}"; only LoRA matrices named like "${loraTensorKey(0, 'q_proj', 'A')}" are supported (embedding adapters, DoRA magnitude vectors and modules_to_save copies are not)`,
      );
    }
    if (parsed.layer >= base.numLayers) {
      tensorError('incompatible_base', `tensor "${key}" is for layer ${parsed.layer}, but the base model has ${base.numLayers} layers (0-${base.numLayers - 1})`);
    }
    const name = loraModuleName(parsed.layer, parsed.module);
    if (!planned.has(name)) {
      tensorError('invalid_tensor', `tensor "${key}" adapts ${name}, which ${ADAPTER_CONFIG_FILE} does not target (check "target_modules" and "layers_to_transform")`);
    }
    const pair = grouped.get(name) ?? {};
    const previous = pair[parsed.matrix];
    if (previous) tensorError('invalid_tensor', `tensors "${previous.name}" and "${key}" are both lora_${parsed.matrix} of ${name}; keep one`);
    pair[parsed.matrix] = entry;
    grouped.set(name, pair);
  }
  return grouped;
}

function readMatrix(entry: SafetensorsEntry, expectedShape: [number, number], explanation: string): Float32Array {
  if (entry.dtype !== 'F32' && entry.dtype !== 'F16' && entry.dtype !== 'BF16') {
    tensorError('invalid_tensor', `tensor "${entry.name}" has dtype ${entry.dtype}; LoRA weights must be F32, F16 or BF16`);
  }
  const [rows, columns] = expectedShape;
  if (entry.shape.length !== 2 || entry.shape[0] !== rows || entry.shape[1] !== columns) {
    tensorError('shape_mismatch', `tensor "${entry.name}" has shape [${entry.shape.join(', ')}], expected [${rows}, ${columns}] (${explanation})`);
  }
  const values = entryToFloat32(entry);
  const bad = values.findIndex((value) => !Number.isFinite(value));
  if (bad >= 0) {
    tensorError('non_finite', `tensor "${entry.name}" holds ${values[bad]} at element ${bad} (row ${Math.floor(bad / columns)}); the adapter is corrupt or diverged in training`);
  }
  return values;
}

function loadModule(plan: LoraModulePlan, pair: Partial<Record<LoraMatrix, SafetensorsEntry>> | undefined, base: LlamaConfig): LoraModuleWeights {
  const { layer, module, name, rank, scale } = plan;
  const required = (matrix: LoraMatrix): SafetensorsEntry =>
    pair?.[matrix] ??
    tensorError('missing_tensor', `"${loraTensorKey(layer, module, matrix)}" is missing; ${ADAPTER_CONFIG_FILE} targets ${name}, so both its lora_A and lora_B are required`);
  const { inFeatures, outFeatures } = projectionDims(base, module);
  const rankNote = `rank ${rank} is what ${ADAPTER_CONFIG_FILE} gives ${name} through "r" or "rank_pattern"`;
  return {
    layer,
    module,
    rank,
    scale,
    A: readMatrix(required('A'), [rank, inFeatures], `lora_A is [rank, in_features]: ${rankNote}; ${module} of the base model reads ${inFeatures} features`),
    B: readMatrix(required('B'), [outFeatures, rank], `lora_B is [out_features, rank]: ${module} of the base model writes ${outFeatures} features; ${rankNote}`),
  };
}

/** Validates an adapter against `base`; throws AdapterError naming the field or tensor at fault. */
function parseLoraAdapter(configJson: unknown, weights: SafetensorsFile, base: LlamaConfig): LoraAdapter {
  const config = parsePeftConfig(configJson);
  const plans = planLoraModules(config, base);
  const grouped = tensorsByModule(weights, plans, base);
  const modules = plans.map((plan) => loadModule(plan, grouped.get(plan.name), base));
  return {
    rank: Math.max(...modules.map((module) => module.rank)),
    targetModules: LORA_TARGET_MODULES.filter((target) => modules.some(({ module }) => module === target)),
    modules,
    byteSize: modules.reduce((total, { A, B }) => total + A.byteLength + B.byteLength, 0),
    config,
  };
}

async function listAdapterDirectory(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      throw new AdapterError('missing_file', `adapter directory ${dir} does not exist or is not a directory`, { cause: error });
    }
    throw error;
  }
}

async function readConfigJson(path: string): Promise<unknown> {
  const text = await readFile(path, 'utf8');
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new AdapterError('invalid_config', `${ADAPTER_CONFIG_FILE} is not valid JSON (${(error as Error).message})`, { cause: error });
  }
}

async function readWeights(path: string): Promise<SafetensorsFile> {
  const file = await readFile(path);
  try {
    return parseSafetensors(new Uint8Array(file.buffer, file.byteOffset, file.byteLength), ADAPTER_WEIGHTS_FILE);
  } catch (error) {
    if (!(error instanceof SafetensorsError)) throw error;
    throw new AdapterError('corrupt_file', `cannot read the adapter weights: ${error.message}`, { cause: error });
  }
}

/** Loads a PEFT LoRA directory (`adapter_config.json` + `adapter_model.safetensors`) and validates it against `base`. */
export async function loadLoraAdapter(dir: string, base: LlamaConfig): Promise<LoraAdapter> {
  const files = await listAdapterDirectory(dir);
  const pickles = files.filter((file) => PICKLE_EXTENSIONS.includes(extname(file).toLowerCase()));
  if (pickles.length > 0) {
    throw new AdapterError(
      'unsupported_format',
      `${pickles.join(', ')}: pickled PyTorch weights are refused because loading a pickle can execute arbitrary code; convert the adapter to safetensors (${ADAPTER_WEIGHTS_FILE}) and remove ${pickles.length === 1 ? 'that file' : 'those files'}`,
    );
  }
  for (const required of [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE]) {
    if (!files.includes(required)) {
      throw new AdapterError('missing_file', `${required} is missing; a PEFT LoRA adapter needs ${ADAPTER_CONFIG_FILE} and ${ADAPTER_WEIGHTS_FILE}`);
    }
  }
  const configJson = await readConfigJson(join(dir, ADAPTER_CONFIG_FILE));
  const weights = await readWeights(join(dir, ADAPTER_WEIGHTS_FILE));
  return parseLoraAdapter(configJson, weights, base);
}

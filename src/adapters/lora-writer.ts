/**
 * Writes LoRA adapters in genuine PEFT layout, so what this project produces (test fixtures, benchmark
 * adapters, trained adapters) is loadable by PEFT itself and by `loadLoraAdapter` alike.
 */
import { mkdir } from 'node:fs/promises';
import { writeFileAtomically } from '../storage/durable-files.ts';
import { join } from 'node:path';
import { serializeSafetensors, type SafetensorsTensorInput } from '../formats/safetensors.ts';
import { createRng, randomNormal } from '../engine/random.ts';
import type { LlamaConfig, LoraTargetModule } from '../model/types.ts';
import { ADAPTER_CONFIG_FILE, loraModuleName, loraModuleSettings, parsePeftConfig } from './peft-config.ts';
import { ADAPTER_WEIGHTS_FILE, loraTensorKey, magnitudeTensorKey, projectionDims } from './lora.ts';

export interface LoraModuleTensors {
  layer: number;
  module: LoraTargetModule;
  /** [rank, in_features], row-major. */
  A: Float32Array;
  /** [out_features, rank], row-major. */
  B: Float32Array;
  /** DoRA: the magnitude of each output row, [out_features]. Given for every module or none. */
  magnitude?: Float32Array;
}

export interface LoraAdapterSpec {
  r: number;
  alpha: number;
  targetModules: LoraTargetModule[];
  modules: LoraModuleTensors[];
  /** PEFT `rank_pattern`: module-name pattern → rank, overriding `r` for the modules it matches. */
  rankPattern?: Record<string, number>;
  /** PEFT `alpha_pattern`: module-name pattern → alpha, overriding `alpha` for the modules it matches. */
  alphaPattern?: Record<string, number>;
  useRslora?: boolean;
  /** Restricts the adapter to these layers; `modules` must then cover exactly them. */
  layersToTransform?: number[];
  /** Recorded as `base_model_name_or_path`. */
  baseModel?: string;
}

function peftConfigJson(adapter: LoraAdapterSpec): Record<string, unknown> {
  return {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: adapter.baseModel ?? null,
    r: adapter.r,
    lora_alpha: adapter.alpha,
    use_rslora: adapter.useRslora ?? false,
    rank_pattern: adapter.rankPattern ?? {},
    alpha_pattern: adapter.alphaPattern ?? {},
    target_modules: adapter.targetModules,
    layers_to_transform: adapter.layersToTransform ?? null,
    layers_pattern: adapter.layersToTransform ? 'layers' : null,
    lora_dropout: 0,
    bias: 'none',
    fan_in_fan_out: false,
    init_lora_weights: true,
    use_dora: adapter.modules.some(({ magnitude }) => magnitude !== undefined),
    modules_to_save: null,
    layer_replication: null,
    inference_mode: true,
  };
}

/**
 * The adapter's two PEFT files, `adapter_config.json` and `adapter_model.safetensors` (F32), as bytes: what an
 * upload sends and what `writeLoraAdapter` puts on disk.
 */
export function loraAdapterFiles(adapter: LoraAdapterSpec): Map<string, Uint8Array> {
  const configJson = peftConfigJson(adapter);
  // Parsing our own output means rank_pattern resolves exactly as the loader will resolve it.
  const config = parsePeftConfig(configJson);
  const tensors: Record<string, SafetensorsTensorInput> = {};
  for (const { layer, module, A, B, magnitude } of adapter.modules) {
    const name = loraModuleName(layer, module);
    const { rank } = loraModuleSettings(config, name);
    const keyA = loraTensorKey(layer, module, 'A');
    if (keyA in tensors) throw new Error(`${name} appears twice in the adapter's modules`);
    if (A.length % rank !== 0 || B.length % rank !== 0) {
      throw new RangeError(`${name}: A (${A.length} values) and B (${B.length} values) must both be multiples of its rank ${rank}`);
    }
    tensors[keyA] = { dtype: 'F32', shape: [rank, A.length / rank], data: A };
    tensors[loraTensorKey(layer, module, 'B')] = { dtype: 'F32', shape: [B.length / rank, rank], data: B };
    if (magnitude) tensors[magnitudeTensorKey(layer, module)] = { dtype: 'F32', shape: [magnitude.length], data: magnitude };
  }
  return new Map([
    [ADAPTER_CONFIG_FILE, new TextEncoder().encode(`${JSON.stringify(configJson, null, 2)}\n`)],
    // PEFT writes the same metadata, which tells readers the tensors follow PyTorch conventions.
    [ADAPTER_WEIGHTS_FILE, serializeSafetensors(tensors, { format: 'pt' })],
  ]);
}

/** Writes the adapter's PEFT files into `dir`, creating it if needed. */
export async function writeLoraAdapter(dir: string, adapter: LoraAdapterSpec): Promise<void> {
  await writeAdapterFiles(dir, loraAdapterFiles(adapter));
}

/** Writes an adapter's files (name → bytes, as the *AdapterFiles functions give them) into `dir`. */
export async function writeAdapterFiles(dir: string, files: Map<string, Uint8Array>): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const [name, bytes] of files) await writeFileAtomically(join(dir, name), bytes);
}

/**
 * An adapter on every layer of `base` with seeded normal A and B (std `std`, default 0.02). B is non-zero,
 * unlike a freshly initialised PEFT adapter, so the adapter visibly changes the model. `alpha` defaults to the
 * rank, making the scale 1. With `dora`, every output row gets a seeded magnitude in [0.5, 1.5).
 */
export function randomLoraAdapter(
  base: LlamaConfig,
  opts: { rank: number; targetModules: LoraTargetModule[]; seed: number; std?: number; alpha?: number; dora?: boolean },
): LoraAdapterSpec {
  const { rank, targetModules, seed, std = 0.02, alpha = rank, dora = false } = opts;
  const rng = createRng(seed);
  const normals = (count: number) => Float32Array.from({ length: count }, () => std * randomNormal(rng));
  const modules: LoraModuleTensors[] = [];
  for (let layer = 0; layer < base.numLayers; layer++) {
    for (const module of targetModules) {
      const { inFeatures, outFeatures } = projectionDims(base, module);
      const magnitude = dora ? { magnitude: Float32Array.from({ length: outFeatures }, () => 0.5 + rng()) } : {};
      modules.push({ layer, module, A: normals(rank * inFeatures), B: normals(outFeatures * rank), ...magnitude });
    }
  }
  return { r: rank, alpha, targetModules: [...targetModules], modules };
}

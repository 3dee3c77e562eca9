/**
 * Every adapter family the gateway serves, loaded from the files the real libraries write and told apart by
 * content: a Hugging Face PEFT config names its `peft_type` (LoRA and DoRA, IA3, prompt tuning, p-tuning, prefix
 * tuning; weights in adapter_model.safetensors), an AdapterHub config holds `config` and `version` (bottleneck
 * adapters; weights in adapter.safetensors).
 */
import type { LlamaConfig } from '../model/types.ts';
import { isJsonObject } from '../storage/json-files.ts';
import { readAdapterDirectory, type ReadFiles } from './adapter-files.ts';
import { AdapterError } from './adapter-error.ts';
import { BOTTLENECK_WEIGHTS_FILE, parseBottleneckAdapter, type BottleneckAdapter } from './bottleneck.ts';
import { parseIa3Adapter, type Ia3Adapter } from './ia3.ts';
import { ADAPTER_WEIGHTS_FILE, parseLoraAdapter, type LoraAdapter } from './lora.ts';
import { ADAPTER_CONFIG_FILE, describe } from './peft-config.ts';
import { parsePromptLearningAdapter, type PrefixAdapter, type SoftPromptAdapter } from './prompt-learning.ts';

export type Adapter = LoraAdapter | Ia3Adapter | SoftPromptAdapter | PrefixAdapter | BottleneckAdapter;
export type AdapterFamily = Adapter['family'];

/** Every family, as named in summaries; a Record so that adding a family to `Adapter` without it fails to compile. */
const FAMILIES: Record<AdapterFamily, true> = {
  lora: true,
  dora: true,
  ia3: true,
  prompt_tuning: true,
  p_tuning: true,
  prefix_tuning: true,
  seq_bn: true,
  double_seq_bn: true,
  par_bn: true,
};

export function isAdapterFamily(name: unknown): name is AdapterFamily {
  return typeof name === 'string' && Object.hasOwn(FAMILIES, name);
}

/** The weights files of the two formats; a version holds the one its config calls for. */
export const ADAPTER_WEIGHTS_FILES = [ADAPTER_WEIGHTS_FILE, BOTTLENECK_WEIGHTS_FILE] as const;

const PEFT_TYPES = ['LORA', 'IA3', 'PROMPT_TUNING', 'P_TUNING', 'PREFIX_TUNING'] as const;

/** What the adapter store records about each adapter version (its manifest's summary). */
export interface AdapterSummary {
  family: AdapterFamily;
  /** LoRA or DoRA rank, bottleneck width; 0 for families without either. */
  rank: number;
  /** The projections adapted (LoRA, DoRA, IA3); empty for the other families. */
  targetModules: string[];
  /** Positions taken before the prompt (prompt and prefix tuning). */
  virtualTokens: number;
  bytes: number;
}

export function summarizeAdapter(adapter: Adapter): AdapterSummary {
  return {
    family: adapter.family,
    rank: adapter.rank,
    targetModules: 'targetModules' in adapter ? adapter.targetModules : [],
    virtualTokens: virtualTokensOf(adapter),
    bytes: adapter.byteSize,
  };
}

/** Positions an adapter's virtual tokens take before the prompt (prompt and prefix tuning), else 0. */
export function virtualTokensOf(adapter: Adapter): number {
  return 'virtualTokens' in adapter ? adapter.virtualTokens : 0;
}

/** Which format a config belongs to, and so which weights file it needs. */
function formatOf(json: unknown): { format: 'peft' | 'adapterhub'; file: string; kind: string } {
  if (isJsonObject(json) && 'peft_type' in json) return { format: 'peft', file: ADAPTER_WEIGHTS_FILE, kind: 'a PEFT adapter' };
  if (isJsonObject(json) && 'config' in json && 'version' in json) {
    return { format: 'adapterhub', file: BOTTLENECK_WEIGHTS_FILE, kind: 'an AdapterHub adapter' };
  }
  throw new AdapterError(
    'invalid_config',
    `${ADAPTER_CONFIG_FILE}: neither a Hugging Face PEFT config (with "peft_type") nor an AdapterHub adapters config (with "config" and "version")`,
  );
}

/**
 * Loads an adapter directory of either format and validates it against `base`; files in `read` (already read and
 * verified) are parsed from there instead of read again.
 */
export async function loadAdapter(dir: string, base: LlamaConfig, read?: ReadFiles): Promise<Adapter> {
  const { json, weights } = await readAdapterDirectory(dir, formatOf, ADAPTER_WEIGHTS_FILES.join(' or '), read);
  const config = json as Record<string, unknown>;
  if (formatOf(json).format === 'adapterhub') return parseBottleneckAdapter(config, weights, base);
  const peftType = config.peft_type;
  switch (peftType) {
    case 'LORA':
      return parseLoraAdapter(config, weights, base);
    case 'IA3':
      return parseIa3Adapter(config, weights, base);
    case 'PROMPT_TUNING':
    case 'P_TUNING':
    case 'PREFIX_TUNING':
      return parsePromptLearningAdapter(peftType, config, weights, base);
    default:
      throw new AdapterError(
        typeof peftType === 'string' ? 'unsupported_format' : 'invalid_config',
        `${ADAPTER_CONFIG_FILE}: "peft_type": ${describe(peftType)} is not supported; served PEFT types are ${PEFT_TYPES.join(', ')}`,
      );
  }
}

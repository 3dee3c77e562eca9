/**
 * The PEFT families' share of the engine benchmark: for each family, 16 streams on 16 different adapters of that
 * family against 16 base-model streams, interleaved pairs within one run, on the benchmark engine (SmolLM2-135M's
 * shape). Adapters are comparable in size to the LoRA reference (r=16 on all seven projections): DoRA at r=16 on
 * all seven, IA3 on PEFT's Llama defaults (k, v, down), 20 virtual tokens for prompt and prefix tuning, and
 * bottleneck adapters 16 wide (reduction_factor 36).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { bottleneckAdapterFiles, randomBottleneckAdapter, type BottleneckKind } from '../adapters/bottleneck-writer.ts';
import { loraAdapterFiles, randomLoraAdapter, writeAdapterFiles } from '../adapters/lora-writer.ts';
import { ia3AdapterFiles, promptLearningAdapterFiles, randomIa3Adapter, randomPromptLearningAdapter } from '../adapters/peft-writers.ts';
import type { AdapterRef } from '../engine/protocol.ts';
import { SMOLLM2_135M_SHAPE } from '../model/random-model.ts';
import { LORA_TARGET_MODULES } from '../model/types.ts';
import { median, round } from './bench-stats.ts';

const VIRTUAL_TOKENS = 20;
/** 576 / 36 = 16: bottlenecks as wide as the LoRA reference's rank. */
const BOTTLENECK_REDUCTION = 36;

const FAMILY_FILES: Record<string, (seed: number) => Map<string, Uint8Array>> = {
  lora: (seed) => loraAdapterFiles(randomLoraAdapter(SMOLLM2_135M_SHAPE, { rank: 16, targetModules: [...LORA_TARGET_MODULES], seed })),
  dora: (seed) => loraAdapterFiles(randomLoraAdapter(SMOLLM2_135M_SHAPE, { rank: 16, targetModules: [...LORA_TARGET_MODULES], seed, dora: true })),
  ia3: (seed) => ia3AdapterFiles(randomIa3Adapter(SMOLLM2_135M_SHAPE, { targetModules: ['k_proj', 'v_proj', 'down_proj'], feedforwardModules: ['down_proj'], seed })),
  prompt_tuning: (seed) => promptLearningAdapterFiles(randomPromptLearningAdapter(SMOLLM2_135M_SHAPE, { peftType: 'PROMPT_TUNING', virtualTokens: VIRTUAL_TOKENS, seed }), SMOLLM2_135M_SHAPE),
  prefix_tuning: (seed) => promptLearningAdapterFiles(randomPromptLearningAdapter(SMOLLM2_135M_SHAPE, { peftType: 'PREFIX_TUNING', virtualTokens: VIRTUAL_TOKENS, seed }), SMOLLM2_135M_SHAPE),
  ...Object.fromEntries(
    (['seq_bn', 'double_seq_bn', 'par_bn'] as BottleneckKind[]).map((kind) => [
      kind,
      (seed: number) => bottleneckAdapterFiles(randomBottleneckAdapter(SMOLLM2_135M_SHAPE, { kind, seed, options: { reduction_factor: BOTTLENECK_REDUCTION } }), SMOLLM2_135M_SHAPE),
    ]),
  ),
};

async function ensureFamilyAdapters(benchDir: string, family: string, streams: number): Promise<AdapterRef[]> {
  const refs: AdapterRef[] = [];
  for (let i = 0; i < streams; i++) {
    const path = join(benchDir, 'families', `${family}-${i}`);
    if (!existsSync(join(path, 'adapter_config.json'))) await writeAdapterFiles(path, FAMILY_FILES[family](1000 + i));
    refs.push({ key: `bench/${family}-${i}`, path });
  }
  return refs;
}


/**
 * Per family: the median ratio of its 16-adapter decode rate to the 16 base streams' (and the range over pairs),
 * and that ratio relative to LoRA r=16's from the same run.
 */
export async function benchFamilies(options: {
  benchDir: string;
  streams: number;
  pairs: number;
  /** Aggregate decode tokens/s of streams run concurrently (the main benchmark's measurement). */
  concurrentDecode: (adapters: (AdapterRef | null)[], tokens: number) => Promise<number>;
  log: (message: string) => void;
}): Promise<Record<string, unknown>> {
  const ratios: Record<string, number[]> = {};
  for (const family of Object.keys(FAMILY_FILES)) {
    options.log(`${options.streams} streams on ${options.streams} distinct ${family} adapters vs base, interleaved ...`);
    const adapters = await ensureFamilyAdapters(options.benchDir, family, options.streams);
    await options.concurrentDecode(adapters, 8); // loads every adapter into its slot before timing
    ratios[family] = [];
    for (let i = 0; i < options.pairs; i++) {
      const base = await options.concurrentDecode(adapters.map(() => null), 48);
      ratios[family].push((await options.concurrentDecode(adapters, 48)) / base);
    }
    options.log(`  ${family}: ${ratios[family].map((ratio) => ratio.toFixed(3)).join(', ')} of the base rate`);
  }
  const lora = median(ratios.lora);
  return Object.fromEntries(
    Object.entries(ratios).map(([family, values]) => [
      family,
      { ratio_vs_base: round(median(values), 3), range: [round(Math.min(...values), 3), round(Math.max(...values), 3)], relative_to_lora_r16: round(median(values) / lora, 3) },
    ]),
  );
}

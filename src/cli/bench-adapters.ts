/** The benchmark's LoRA adapters: random, all seven projections, on the benchmark model's shape; written once. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { randomLoraAdapter, writeLoraAdapter } from '../adapters/lora-writer.ts';
import type { AdapterRef } from '../engine/protocol.ts';
import { SMOLLM2_135M_SHAPE } from '../model/random-model.ts';
import { LORA_TARGET_MODULES } from '../model/types.ts';

export async function ensureBenchAdapters(benchDir: string, count: number, rank: number): Promise<AdapterRef[]> {
  const refs: AdapterRef[] = [];
  for (let i = 0; i < count; i++) {
    const path = join(benchDir, 'adapters', `r${rank}-${i}`);
    if (!existsSync(join(path, 'adapter_model.safetensors'))) {
      await writeLoraAdapter(path, randomLoraAdapter(SMOLLM2_135M_SHAPE, { rank, targetModules: [...LORA_TARGET_MODULES], seed: 100 + i }));
    }
    refs.push({ key: `bench/r${rank}-${i}`, path });
  }
  return refs;
}

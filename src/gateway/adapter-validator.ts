/**
 * What makes an adapter servable by this deployment: it loads against the base model's config and its rank fits
 * MAX_LORA_RANK. The gateway's store and the trainer sidecar's publisher both check with it, so the trainer can
 * never publish an adapter the gateway would refuse.
 */
import { AdapterError } from '../adapters/adapter-error.ts';
import { loadLoraAdapter } from '../adapters/lora.ts';
import type { LlamaConfig } from '../model/types.ts';
import type { AdapterSummary } from './model-resolver.ts';

export function adapterValidator(config: LlamaConfig, maxLoraRank: number): (dir: string) => Promise<AdapterSummary> {
  return async (dir) => {
    const adapter = await loadLoraAdapter(dir, config);
    if (adapter.rank > maxLoraRank) {
      throw new AdapterError(
        'invalid_config',
        `adapter rank ${adapter.rank} exceeds this server's MAX_LORA_RANK of ${maxLoraRank}; ` +
          'train the adapter with a lower rank, or raise MAX_LORA_RANK',
      );
    }
    return { peftType: 'LORA', rank: adapter.rank, targetModules: adapter.targetModules, bytes: adapter.byteSize };
  };
}

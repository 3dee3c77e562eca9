/**
 * What makes an adapter servable by this deployment: it loads against the base model's config (any PEFT family),
 * its rank or bottleneck width fits MAX_LORA_RANK, and its virtual tokens leave room for a prompt. The gateway's
 * store and the trainer sidecar's publisher both check with it, so the trainer can never publish an adapter the
 * gateway would refuse.
 */
import { loadAdapter, summarizeAdapter, virtualTokensOf } from '../adapters/adapter.ts';
import { AdapterError } from '../adapters/adapter-error.ts';
import type { LlamaConfig } from '../model/types.ts';
import type { AdapterSummary } from './model-resolver.ts';

export function adapterValidator(config: LlamaConfig, maxLoraRank: number): (dir: string) => Promise<AdapterSummary> {
  return async (dir) => {
    const adapter = await loadAdapter(dir, config);
    if (adapter.rank > maxLoraRank) {
      throw new AdapterError(
        'invalid_config',
        `adapter rank (or bottleneck width) ${adapter.rank} exceeds this server's MAX_LORA_RANK of ${maxLoraRank}; ` +
          'train the adapter with a lower rank (or a higher reduction_factor), or raise MAX_LORA_RANK',
      );
    }
    const virtualTokens = virtualTokensOf(adapter);
    if (virtualTokens >= config.maxPositions - 1) {
      throw new AdapterError(
        'invalid_config',
        `the adapter's ${virtualTokens} virtual tokens leave no room for a prompt in the model's context of ${config.maxPositions} positions; train it with fewer num_virtual_tokens`,
      );
    }
    return summarizeAdapter(adapter);
  };
}

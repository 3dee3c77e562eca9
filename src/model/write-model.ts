/**
 * Writes a model as a Hugging Face directory (config.json + model.safetensors, float32), the inverse of
 * loading one. Used to put generated benchmark models on disk where the gateway and the engine load them.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeSafetensors, type SafetensorsTensorInput } from '../formats/safetensors.ts';
import type { BaseModel, LlamaConfig } from './types.ts';

function huggingFaceConfig(c: LlamaConfig): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    num_key_value_heads: c.numKvHeads,
    head_dim: c.headDim,
    vocab_size: c.vocabSize,
    max_position_embeddings: c.maxPositions,
    rms_norm_eps: c.rmsNormEps,
    rope_theta: c.ropeTheta,
    rope_scaling: null,
    hidden_act: 'silu',
    attention_bias: false,
    mlp_bias: false,
    tie_word_embeddings: c.tieWordEmbeddings,
    bos_token_id: c.bosTokenId,
    eos_token_id: c.eosTokenIds.length === 1 ? c.eosTokenIds[0] : c.eosTokenIds,
    torch_dtype: 'float32',
  };
}

export async function writeHuggingFaceModel(dir: string, model: BaseModel): Promise<void> {
  if (model.config.ropeScaling) throw new Error('writing RoPE-scaled configs is not supported');
  await mkdir(dir, { recursive: true });
  const tensors: Record<string, SafetensorsTensorInput> = {};
  for (const [name, { shape, data }] of model.weights) tensors[name] = { dtype: 'F32', shape, data };
  await writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  await writeFile(join(dir, 'config.json'), `${JSON.stringify(huggingFaceConfig(model.config), null, 2)}\n`);
}

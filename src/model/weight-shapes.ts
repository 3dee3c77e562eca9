import type { LlamaConfig } from './types.ts';

/** Canonical weight names and shapes of a Llama-family model. */
export function llamaWeightShapes(c: LlamaConfig): Map<string, number[]> {
  const shapes = new Map<string, number[]>([['model.embed_tokens.weight', [c.vocabSize, c.hiddenSize]]]);
  const qDim = c.numHeads * c.headDim;
  const kvDim = c.numKvHeads * c.headDim;
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}`;
    shapes.set(`${p}.input_layernorm.weight`, [c.hiddenSize]);
    shapes.set(`${p}.self_attn.q_proj.weight`, [qDim, c.hiddenSize]);
    shapes.set(`${p}.self_attn.k_proj.weight`, [kvDim, c.hiddenSize]);
    shapes.set(`${p}.self_attn.v_proj.weight`, [kvDim, c.hiddenSize]);
    shapes.set(`${p}.self_attn.o_proj.weight`, [c.hiddenSize, qDim]);
    shapes.set(`${p}.post_attention_layernorm.weight`, [c.hiddenSize]);
    shapes.set(`${p}.mlp.gate_proj.weight`, [c.intermediateSize, c.hiddenSize]);
    shapes.set(`${p}.mlp.up_proj.weight`, [c.intermediateSize, c.hiddenSize]);
    shapes.set(`${p}.mlp.down_proj.weight`, [c.hiddenSize, c.intermediateSize]);
  }
  shapes.set('model.norm.weight', [c.hiddenSize]);
  if (!c.tieWordEmbeddings) shapes.set('lm_head.weight', [c.vocabSize, c.hiddenSize]);
  return shapes;
}

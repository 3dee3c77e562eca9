import type { LoraAdapter } from '../../src/adapters/lora.ts';
import type { BaseModel, WeightMap } from '../../src/model/types.ts';

/** The independent computation of LoRA: a copy of a float base with W + scale·B·A merged into each adapted projection. */
export function mergeAdapter(base: BaseModel, adapter: LoraAdapter): BaseModel {
  const weights: WeightMap = new Map(base.weights);
  for (const m of adapter.modules) {
    const group = ['q_proj', 'k_proj', 'v_proj', 'o_proj'].includes(m.module) ? 'self_attn' : 'mlp';
    const name = `model.layers.${m.layer}.${group}.${m.module}.weight`;
    const { shape, data } = weights.get(name)!;
    const [out, inDim] = shape;
    const merged = Float32Array.from(data);
    for (let o = 0; o < out; o++) {
      for (let i = 0; i < inDim; i++) {
        let delta = 0;
        for (let j = 0; j < m.rank; j++) delta += m.B[o * m.rank + j] * m.A[j * inDim + i];
        merged[o * inDim + i] += m.scale * delta;
      }
    }
    weights.set(name, { shape, data: merged });
  }
  return { ...base, weights };
}


/**
 * What each PEFT family does to the forward pass, computed independently of the runtime for the reference
 * decoder: LoRA and DoRA merged into the weights, IA3 folded into them, bottleneck layers as reference hooks.
 */
import assert from 'node:assert/strict';
import type { BottleneckAdapterSpec } from '../../src/adapters/bottleneck-writer.ts';
import { loraAdapterFiles, type LoraAdapterSpec } from '../../src/adapters/lora-writer.ts';
import { loraModuleSettings, parsePeftConfig } from '../../src/adapters/peft-config.ts';
import type { Ia3AdapterSpec } from '../../src/adapters/peft-writers.ts';
import type { BaseModel, WeightMap } from '../../src/model/types.ts';
import type { ReferenceHooks } from './reference-decoder.ts';

export function mergedLora(base: BaseModel, spec: LoraAdapterSpec): WeightMap {
  const config = parsePeftConfig(JSON.parse(new TextDecoder().decode(loraAdapterFiles(spec).get('adapter_config.json')!)));
  const weights: WeightMap = new Map(base.weights);
  for (const m of spec.modules) {
    const parent = ['q_proj', 'k_proj', 'v_proj', 'o_proj'].includes(m.module) ? 'self_attn' : 'mlp';
    const name = `model.layers.${m.layer}.${parent}.${m.module}`;
    const { rank, scale } = loraModuleSettings(config, name);
    const { shape, data } = weights.get(`${name}.weight`)!;
    const [out, inDim] = shape;
    const merged = new Float64Array(out * inDim);
    for (let o = 0; o < out; o++) {
      for (let i = 0; i < inDim; i++) {
        let delta = 0;
        for (let j = 0; j < rank; j++) delta += m.B[o * rank + j] * m.A[j * inDim + i];
        merged[o * inDim + i] = data[o * inDim + i] + scale * delta;
      }
      // DoRA: the merged row renormalised to its magnitude (PEFT's magnitude / ‖W + s·B·A‖, row-wise).
      if (m.magnitude) {
        let norm = 0;
        for (let i = 0; i < inDim; i++) norm += merged[o * inDim + i] ** 2;
        for (let i = 0; i < inDim; i++) merged[o * inDim + i] *= m.magnitude[o] / Math.sqrt(norm);
      }
    }
    weights.set(`${name}.weight`, { shape, data: Float32Array.from(merged) });
  }
  return weights;
}

export function scaledIa3(base: BaseModel, spec: Ia3AdapterSpec): WeightMap {
  const weights: WeightMap = new Map(base.weights);
  for (const { layer, module, values } of spec.vectors) {
    const parent = ['q_proj', 'k_proj', 'v_proj', 'o_proj'].includes(module) ? 'self_attn' : 'mlp';
    const name = `model.layers.${layer}.${parent}.${module}.weight`;
    const { shape, data } = weights.get(name)!;
    const [out, inDim] = shape;
    const input = spec.feedforwardModules.includes(module);
    weights.set(name, { shape, data: data.map((value, index) => value * values[input ? index % inDim : Math.floor(index / inDim)]) });
    assert.equal(values.length, input ? inDim : out);
  }
  return weights;
}

const ACTIVATIONS: Record<string, (z: number) => number> = {
  relu: (z) => Math.max(0, z),
  swish: (z) => z / (1 + Math.exp(-z)),
  gelu: (z) => 0.5 * z * (1 + erf(z / Math.SQRT2)),
  gelu_new: (z) => 0.5 * z * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (z + 0.044715 * z ** 3))),
  tanh: Math.tanh,
};

/** Abramowitz-Stegun 7.1.26 is too coarse here; a series/continued fraction to double precision instead. */
function erf(x: number): number {
  const t = Math.abs(x);
  if (t < 2.5) {
    let sum = t;
    let term = t;
    for (let n = 1; n < 60; n++) {
      term *= (-t * t) / n;
      sum += term / (2 * n + 1);
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  let fraction = 0;
  for (let n = 60; n >= 1; n--) fraction = (n / 2) / (t + fraction);
  return Math.sign(x) * (1 - Math.exp(-t * t) / Math.sqrt(Math.PI) / (t + fraction));
}

export function bottleneckHooks(spec: BottleneckAdapterSpec, nonLinearity: string, scaling: number, input: [number, number]): () => ReferenceHooks {
  return () => ({ bottleneck: { layers: spec.layers, activation: ACTIVATIONS[nonLinearity], scaling, fromSublayer: input[0], fromResidual: input[1] } });
}

/**
 * An independent Llama forward pass in plain JavaScript, written from the Hugging Face modeling code, for checking
 * the generated graph: no KV cache (every call recomputes the whole sequence), rotate-half RoPE on Hugging Face
 * ordered q/k rows, and the PEFT families applied where their libraries apply them:
 *
 * - `softPrompt`: embeddings placed before the tokens' (PEFT prompt tuning: positions start at the virtual tokens);
 * - `prefix`: past keys/values before the sequence, in PEFT's saved layout, never rotated (PEFT prefix tuning);
 * - `weights`: a changed copy of the base weights (LoRA, DoRA and IA3 merged into the projections);
 * - `bottleneck`: the adapters library's Llama layer, x ← x + h + up(f(down(u)))·scaling after attention and MLP.
 */
import type { BaseModel, WeightMap } from '../../src/model/types.ts';

export interface ReferenceBottleneck {
  /** Per layer and place ('attention' | 'output'): the adapter's weights, PyTorch layout. */
  layers: { layer: number; location: 'attention' | 'output'; downWeight: Float32Array; downBias: Float32Array; upWeight: Float32Array; upBias: Float32Array }[];
  activation: (z: number) => number;
  scaling: number;
  /** u = α·h + γ·x. */
  fromSublayer: number;
  fromResidual: number;
}

export interface ReferenceHooks {
  softPrompt?: Float32Array;
  prefix?: { tokens: number; keyValues: Float32Array };
  weights?: WeightMap;
  bottleneck?: ReferenceBottleneck;
}

function matVec(weight: Float32Array, rows: number, columns: number, x: Float64Array | Float32Array): Float64Array {
  const out = new Float64Array(rows);
  for (let o = 0; o < rows; o++) {
    let sum = 0;
    for (let i = 0; i < columns; i++) sum += weight[o * columns + i] * x[i];
    out[o] = sum;
  }
  return out;
}

function rmsNorm(x: Float64Array, weight: Float32Array, eps: number): Float64Array {
  let squares = 0;
  for (const value of x) squares += value * value;
  const scale = 1 / Math.sqrt(squares / x.length + eps);
  return x.map((value, i) => value * scale * weight[i]);
}

/** Logits of the last position of `tokens`, after the hooks' virtual tokens. */
export function referenceLogits(model: BaseModel, tokens: number[], hooks: ReferenceHooks = {}): Float64Array {
  const c = model.config;
  const w = (name: string) => (hooks.weights ?? model.weights).get(name)!.data;
  const D = c.headDim;
  const qDim = c.numHeads * D;
  const kvDim = c.numKvHeads * D;
  const group = c.numHeads / c.numKvHeads;
  const embedding = w('model.embed_tokens.weight');

  const virtual = hooks.softPrompt ? hooks.softPrompt.length / c.hiddenSize : 0;
  const prefixLength = hooks.prefix?.tokens ?? 0;
  let xs: Float64Array[] = [];
  for (let t = 0; t < virtual; t++) xs.push(Float64Array.from(hooks.softPrompt!.subarray(t * c.hiddenSize, (t + 1) * c.hiddenSize)));
  for (const token of tokens) xs.push(Float64Array.from(embedding.subarray(token * c.hiddenSize, (token + 1) * c.hiddenSize)));
  const positionOf = (t: number) => prefixLength + t;

  const rotate = (vector: Float64Array, heads: number, position: number) => {
    const out = Float64Array.from(vector);
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < D / 2; i++) {
        const angle = position / Math.pow(c.ropeTheta, (2 * i) / D);
        const a = vector[h * D + i];
        const b = vector[h * D + i + D / 2];
        out[h * D + i] = a * Math.cos(angle) - b * Math.sin(angle);
        out[h * D + i + D / 2] = b * Math.cos(angle) + a * Math.sin(angle);
      }
    }
    return out;
  };
  const bottleneck = (l: number, location: 'attention' | 'output', x: Float64Array, h: Float64Array): Float64Array => {
    const adapter = hooks.bottleneck?.layers.find((entry) => entry.layer === l && entry.location === location);
    if (!adapter) return x.map((value, i) => value + h[i]);
    const bn = hooks.bottleneck!;
    const u = x.map((value, i) => bn.fromSublayer * h[i] + bn.fromResidual * value);
    const size = adapter.downBias.length;
    const down = matVec(adapter.downWeight, size, c.hiddenSize, u).map((value, j) => bn.activation(value + adapter.downBias[j]));
    const up = matVec(adapter.upWeight, c.hiddenSize, size, down);
    return x.map((value, i) => value + h[i] + (up[i] + adapter.upBias[i]) * bn.scaling);
  };

  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}`;
    const keys: Float64Array[] = [];
    const values: Float64Array[] = [];
    if (hooks.prefix) {
      const stride = c.numLayers * 2 * kvDim;
      for (let t = 0; t < prefixLength; t++) {
        const base = t * stride + 2 * l * kvDim;
        keys.push(Float64Array.from(hooks.prefix.keyValues.subarray(base, base + kvDim)));
        values.push(Float64Array.from(hooks.prefix.keyValues.subarray(base + kvDim, base + 2 * kvDim)));
      }
    }
    const normed = xs.map((x) => rmsNorm(x, w(`${p}.input_layernorm.weight`), c.rmsNormEps));
    const queries = normed.map((h, t) => rotate(matVec(w(`${p}.self_attn.q_proj.weight`), qDim, c.hiddenSize, h), c.numHeads, positionOf(t)));
    normed.forEach((h, t) => {
      keys.push(rotate(matVec(w(`${p}.self_attn.k_proj.weight`), kvDim, c.hiddenSize, h), c.numKvHeads, positionOf(t)));
      values.push(matVec(w(`${p}.self_attn.v_proj.weight`), kvDim, c.hiddenSize, h));
    });
    xs = xs.map((x, t) => {
      const context = new Float64Array(qDim);
      const visible = prefixLength + t + 1;
      for (let head = 0; head < c.numHeads; head++) {
        const kvHead = Math.floor(head / group);
        const scores = new Float64Array(visible);
        for (let s = 0; s < visible; s++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += queries[t][head * D + d] * keys[s][kvHead * D + d];
          scores[s] = dot / Math.sqrt(D);
        }
        const max = Math.max(...scores);
        const exps = scores.map((score) => Math.exp(score - max));
        const total = exps.reduce((a, b) => a + b, 0);
        for (let s = 0; s < visible; s++) {
          for (let d = 0; d < D; d++) context[head * D + d] += (exps[s] / total) * values[s][kvHead * D + d];
        }
      }
      const attended = bottleneck(l, 'attention', x, matVec(w(`${p}.self_attn.o_proj.weight`), c.hiddenSize, qDim, context));
      const h2 = rmsNorm(attended, w(`${p}.post_attention_layernorm.weight`), c.rmsNormEps);
      const gate = matVec(w(`${p}.mlp.gate_proj.weight`), c.intermediateSize, c.hiddenSize, h2);
      const up = matVec(w(`${p}.mlp.up_proj.weight`), c.intermediateSize, c.hiddenSize, h2);
      const act = gate.map((g, i) => (g / (1 + Math.exp(-g))) * up[i]);
      return bottleneck(l, 'output', attended, matVec(w(`${p}.mlp.down_proj.weight`), c.hiddenSize, c.intermediateSize, act));
    });
  }
  const last = rmsNorm(xs[xs.length - 1], w('model.norm.weight'), c.rmsNormEps);
  const head = c.tieWordEmbeddings ? embedding : w('lm_head.weight');
  return matVec(head, c.vocabSize, c.hiddenSize, last);
}

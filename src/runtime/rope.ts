/**
 * Rotary position embedding tables for the decoder graph's `rope_cos` / `rope_sin` inputs. Computing them here
 * keeps the graph free of context-length limits and lets RoPE scaling variants change only this file.
 */
import type { LlamaConfig } from '../model/types.ts';

function ropeInverseFrequencies(config: LlamaConfig): Float64Array {
  const half = config.headDim / 2;
  const freqs = new Float64Array(half);
  for (let i = 0; i < half; i++) freqs[i] = 1 / Math.pow(config.ropeTheta, (2 * i) / config.headDim);
  const scaling = config.ropeScaling;
  if (!scaling) return freqs;
  if (scaling.type === 'linear') return freqs.map((f) => f / scaling.factor);
  // Llama 3.1: long wavelengths are divided by the factor, short ones kept, the band between interpolated.
  const lowFreqWavelen = scaling.originalMaxPositions / scaling.lowFreqFactor;
  const highFreqWavelen = scaling.originalMaxPositions / scaling.highFreqFactor;
  return freqs.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highFreqWavelen) return f;
    if (wavelen > lowFreqWavelen) return f / scaling.factor;
    const smooth =
      (scaling.originalMaxPositions / wavelen - scaling.lowFreqFactor) / (scaling.highFreqFactor - scaling.lowFreqFactor);
    return (1 - smooth) * (f / scaling.factor) + smooth * f;
  });
}

/**
 * Fills the cos/sin inputs for one token position across the fused q|k|v heads:
 * rope(x) = x * cos + swap_halves(x) * sin, with sin = [-sin, +sin] so the swap needs no negation in the graph.
 * Query heads carry the 1/sqrt(head_dim) attention scale; value heads pass through (cos 1, sin 0).
 */
export class RopeTables {
  private readonly inverseFrequencies: Float64Array;
  private readonly attentionScale: number;
  /** One position's cos and sin per frequency, shared by all heads. */
  private readonly angleCos: Float64Array;
  private readonly angleSin: Float64Array;

  constructor(private readonly config: LlamaConfig) {
    this.inverseFrequencies = ropeInverseFrequencies(config);
    this.attentionScale = 1 / Math.sqrt(config.headDim);
    this.angleCos = new Float64Array(config.headDim / 2);
    this.angleSin = new Float64Array(config.headDim / 2);
  }

  /** Row width of one token in the tables: fused heads × head_dim. */
  get tokenStride(): number {
    const c = this.config;
    return (c.numHeads + 2 * c.numKvHeads) * c.headDim;
  }

  fill(cos: Float32Array, sin: Float32Array, tokenOffset: number, position: number): void {
    const { numHeads, numKvHeads, headDim } = this.config;
    const half = headDim / 2;
    const angleCos = this.angleCos;
    const angleSin = this.angleSin;
    for (let i = 0; i < half; i++) {
      const angle = position * this.inverseFrequencies[i];
      angleCos[i] = Math.cos(angle);
      angleSin[i] = Math.sin(angle);
    }
    let at = tokenOffset * this.tokenStride;
    for (let head = 0; head < numHeads + 2 * numKvHeads; head++) {
      const isValue = head >= numHeads + numKvHeads;
      const scale = head < numHeads ? this.attentionScale : 1;
      for (let i = 0; i < half; i++) {
        const c = isValue ? 1 : angleCos[i] * scale;
        const s = isValue ? 0 : angleSin[i] * scale;
        cos[at + i] = c;
        cos[at + half + i] = c;
        sin[at + i] = -s;
        sin[at + half + i] = s;
      }
      at += headDim;
    }
  }
}

/**
 * DoRA's per-row output scale, magnitude / ‖W + s·B·A‖ for every output row of every adapted projection. The norm
 * does not depend on the input, so it is computed once, when the adapter is loaded, and DoRA then costs a row
 * scale beside its LoRA delta:
 *
 *   ‖W_o + s·(BA)_o‖² = ‖W_o‖² + 2s·Σ_j B[o,j]·(W·Aᵀ)[o,j] + s²·B_o·(A·Aᵀ)·B_oᵀ
 *
 * ‖W_o‖² is taken from the base weights when the graph is built; W·Aᵀ by pushing A's rows through the graph's
 * own base projections (ModelRunner.probeBase), so no copy of the base weights is kept for it.
 */
import type { LoraAdapter, LoraModuleWeights } from '../adapters/lora.ts';
import { loraModuleName } from '../adapters/peft-config.ts';
import { PROBE_SITES, probeSiteWidths, type ProbeSite } from '../graph/peft-blocks.ts';
import { dequantizeMatrix } from '../model/quantized-matrix.ts';
import { LORA_TARGET_MODULES, type BaseModel } from '../model/types.ts';
import type { BaseProbe, ModelRunner } from './model-runner.ts';
import { scaledLayouts } from './slot-writer.ts';

/** Per projection (`model.layers.3.self_attn.q_proj`): the squared norm of each row of its base weight. */
export type BaseRowNorms = Map<string, Float64Array>;

export function baseRowNorms(model: BaseModel): BaseRowNorms {
  const norms: BaseRowNorms = new Map();
  for (let layer = 0; layer < model.config.numLayers; layer++) {
    for (const module of LORA_TARGET_MODULES) {
      const name = loraModuleName(layer, module);
      // Quantized projections count with the values the graph computes with, as PEFT dequantizes them for DoRA.
      const float = model.weights.get(`${name}.weight`);
      const quantized = model.quantized?.get(`${name}.weight`);
      if (!float && !quantized) throw new Error(`weight ${name}.weight missing from the loaded model`);
      const [rows, columns] = (float ?? quantized!).shape;
      const data = float ? float.data : dequantizeMatrix(quantized!);
      const squares = new Float64Array(rows);
      for (let o = 0; o < rows; o++) {
        let sum = 0;
        for (let i = 0; i < columns; i++) sum += data[o * columns + i] ** 2;
        squares[o] = sum;
      }
      norms.set(name, squares);
    }
  }
  return norms;
}

/** The adapter with `outputScales` filled in (returned as a new object; the parsed adapter is not changed). */
export async function withDoraScales(adapter: LoraAdapter, runner: ModelRunner, norms: BaseRowNorms): Promise<LoraAdapter> {
  const c = runner.config;
  const layouts = scaledLayouts(c);
  // Each module's A rows go into its site's probe block of its layer, after the modules before it there.
  const placement = adapter.modules.map(() => ({ site: 'qkv' as ProbeSite, row: 0 }));
  const used = new Map<string, number>();
  adapter.modules.forEach((m, index) => {
    const site = layouts[m.module].scaled;
    const key = `${m.layer}.${site}`;
    placement[index] = { site, row: used.get(key) ?? 0 };
    used.set(key, placement[index].row + m.rank);
  });
  const rows = Math.max(1, ...used.values());
  const widths = probeSiteWidths(c);
  const inputs = Object.fromEntries(PROBE_SITES.map((site) => [site, new Float32Array(c.numLayers * rows * widths[site].in)])) as BaseProbe['inputs'];
  adapter.modules.forEach((m, index) => {
    const { site, row } = placement[index];
    inputs[site].set(m.A, (m.layer * rows + row) * widths[site].in);
  });
  const outputs = await runner.probeBase({ rows, inputs });
  const outputScales = adapter.modules.map((m, index) => {
    const { site, row } = placement[index];
    const layout = layouts[m.module];
    const projected = (j: number, o: number) => outputs[site][(m.layer * rows + row + j) * widths[site].out + layout.offset + o];
    return rowScales(m, norms.get(loraModuleName(m.layer, m.module))!, projected, layout.outDim, layout.inDim);
  });
  return { ...adapter, outputScales };
}

function rowScales(m: LoraModuleWeights, baseSquares: Float64Array, projected: (j: number, o: number) => number, outDim: number, inDim: number): Float32Array {
  const r = m.rank;
  const gram = new Float64Array(r * r);
  for (let j = 0; j < r; j++) {
    for (let k = j; k < r; k++) {
      let dot = 0;
      for (let i = 0; i < inDim; i++) dot += m.A[j * inDim + i] * m.A[k * inDim + i];
      gram[j * r + k] = gram[k * r + j] = dot;
    }
  }
  const scales = new Float32Array(outDim);
  for (let o = 0; o < outDim; o++) {
    let cross = 0;
    let delta = 0;
    for (let j = 0; j < r; j++) {
      const b = m.B[o * r + j];
      cross += b * projected(j, o);
      for (let k = 0; k < r; k++) delta += b * gram[j * r + k] * m.B[o * r + k];
    }
    const norm = Math.sqrt(Math.max(0, baseSquares[o] + 2 * m.scale * cross + m.scale * m.scale * delta));
    scales[o] = m.magnitude![o] / norm;
  }
  return scales;
}

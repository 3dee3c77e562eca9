/**
 * The base model's linear layers in the graph: `x · Wᵀ` for weights kept float32 (a MatMul over the transposed
 * weight) or block-quantized (onnxruntime's `com.microsoft.MatMulNBits`), so the decoder graph reads the same
 * whatever form its weights are served in.
 *
 * A projection applied to several inputs (the DoRA probe beside the activations) shares one copy of its weights.
 *
 * MatMulNBits runs at `accuracy_level` 4 (activations quantized to int8 per block, int8 dot products): on
 * SmolLM2-135M's shapes it measured 2.7× (8-bit) and 4.7× (4-bit) faster than float32 MatMul at one row, while
 * level 0 (float activations) measured 6× slower than float32. Its rounding of the activations is of the same
 * kind as llama.cpp's, which quantizes activations to 8 bits for its quantized dot products too.
 */
import type { F32Tensor, QuantizedMatrix } from '../model/types.ts';
import { QUANTIZED_OFFSET_BLOCK } from '../model/types.ts';
import { concatQuantizedRows, sameQuantizedLayout } from '../model/quantized-matrix.ts';
import type { OnnxGraphBuilder } from './onnx-builder.ts';

/** A projection's weight, `[out, in]`, in either form. */
export type ProjectionWeight = F32Tensor | QuantizedMatrix;

export const CONTRIB_DOMAIN = 'com.microsoft';
export const CONTRIB_OPSET = { domain: CONTRIB_DOMAIN, version: 1 };

/** int8 activations: MatMulNBits' fast path (see above). */
const FAST_ACCURACY_LEVEL = 4;

const isQuantized = (weight: ProjectionWeight): weight is QuantizedMatrix => 'codes' in weight;

export interface ProjectionOptions {
  /** Rank of `x` (the projection runs over its last axis); 3 for `[batch, tokens, features]`. */
  inputRank?: number;
  /** MatMulNBits' accuracy level; tests set 0 (float activations) to check the weights' layout exactly. */
  accuracyLevel?: number;
}

/**
 * `x · [W₁; W₂; …]ᵀ`: several projections of the same input side by side (q|k|v, gate|up), in one matmul where
 * their forms allow (all float32, or all quantized in one layout), else one per part joined on the last axis.
 * Float32 initializers are named `<name>.weight_t`.
 */
export function baseProjection(
  g: OnnxGraphBuilder,
  x: string,
  parts: readonly ProjectionWeight[],
  name: string,
  options: ProjectionOptions = {},
): string {
  if (parts.every((part) => !isQuantized(part))) {
    const weights = parts as F32Tensor[];
    const inDim = weights[0].shape[1];
    const outDims = weights.map((weight) => weight.shape[0]);
    const transposed = () => transposeConcat(weights.map((weight) => weight.data), inDim, outDims);
    return g.op('MatMul', [x, g.sharedInitializer(`${name}.weight_t`, transposed, [inDim, outDims.reduce((a, b) => a + b, 0)])]);
  }
  if (parts.every((part) => isQuantized(part) && sameQuantizedLayout(part, parts[0] as QuantizedMatrix))) {
    return quantizedMatMul(g, x, concatQuantizedRows(parts as QuantizedMatrix[]), name, options);
  }
  const outputs = parts.map((part, i) => baseProjection(g, x, [part], `${name}.part${i}`, options));
  return g.op('Concat', outputs, { axis: -1 });
}

/**
 * `x · Wᵀ` for a quantized W through MatMulNBits (codes and scales as initializers, the default zero point).
 * K-quant offsets add `blockSums(x) · offsetsᵀ`: the activations summed over each 32 columns, times the
 * per-row, per-sub-block offsets (1/32 of a float32 weight's size).
 */
export function quantizedMatMul(g: OnnxGraphBuilder, x: string, m: QuantizedMatrix, name: string, options: ProjectionOptions = {}): string {
  const [rows, columns] = m.shape;
  const blocks = columns / m.blockSize;
  const codes = g.sharedInitializer(`${name}.codes`, () => m.codes, [rows, blocks, (m.blockSize * m.bits) / 8]);
  const scales = g.sharedInitializer(`${name}.scales`, () => m.scales, [rows * blocks]);
  const product = g.domainOp(CONTRIB_DOMAIN, 'MatMulNBits', [x, codes, scales], {
    K: columns,
    N: rows,
    bits: m.bits,
    block_size: m.blockSize,
    accuracy_level: options.accuracyLevel ?? FAST_ACCURACY_LEVEL,
  });
  if (!m.offsets) return product;
  const offsetBlocks = columns / QUANTIZED_OFFSET_BLOCK;
  const leading = new Array<number>((options.inputRank ?? 3) - 1).fill(0);
  const blockView = g.op('Reshape', [x, g.constInt64([...leading, offsetBlocks, QUANTIZED_OFFSET_BLOCK])]);
  const blockSums = g.op('ReduceSum', [blockView, g.constInt64([-1])], { keepdims: 0 });
  const offsetsT = g.sharedInitializer(`${name}.offsets_t`, () => transposeConcat([m.offsets!], offsetBlocks, [rows]), [offsetBlocks, rows]);
  return g.op('Add', [product, g.op('MatMul', [blockSums, offsetsT])]);
}

/** Transposes PyTorch `[out, in]` weights to `[in, out]` and joins several along the output axis. */
function transposeConcat(weights: Float32Array[], inDim: number, outDims: number[]): Float32Array {
  const totalOut = outDims.reduce((a, b) => a + b, 0);
  const result = new Float32Array(inDim * totalOut);
  let column = 0;
  weights.forEach((weight, index) => {
    const outDim = outDims[index];
    for (let o = 0; o < outDim; o++) {
      for (let i = 0; i < inDim; i++) result[i * totalOut + column + o] = weight[o * inDim + i];
    }
    column += outDim;
  });
  return result;
}

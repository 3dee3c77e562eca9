/**
 * Operations on block-quantized weight matrices (types.ts `QuantizedMatrix`) that keep them quantized:
 * row reordering and joining for the loader and the graph, and decoding to float32 where a float copy is
 * needed (the embedding lookup, tests).
 */
import { QUANTIZED_OFFSET_BLOCK, type QuantizedMatrix } from './types.ts';

/** The parts of a matrix laid out row by row, with how many entries each row holds. */
function rowArrays(m: QuantizedMatrix): { data: Uint8Array | Float32Array; perRow: number }[] {
  const [rows, columns] = m.shape;
  const parts: { data: Uint8Array | Float32Array; perRow: number }[] = [
    { data: m.codes, perRow: m.codes.length / rows },
    { data: m.scales, perRow: columns / m.blockSize },
  ];
  if (m.offsets) parts.push({ data: m.offsets, perRow: columns / QUANTIZED_OFFSET_BLOCK });
  return parts;
}

/** Row `i` of the result is row `order[i]` of `m`. */
export function permuteQuantizedRows(m: QuantizedMatrix, order: readonly number[]): QuantizedMatrix {
  const [codes, scales, offsets] = rowArrays(m).map(({ data, perRow }) => {
    const out = new (data.constructor as typeof Uint8Array | typeof Float32Array)(data.length);
    order.forEach((from, to) => out.set(data.subarray(from * perRow, (from + 1) * perRow), to * perRow));
    return out;
  });
  return { ...m, codes: codes as Uint8Array, scales: scales as Float32Array, ...(offsets ? { offsets: offsets as Float32Array } : {}) };
}

/** Whether matrices can be stacked into one MatMulNBits weight (same code width and block size). */
export function sameQuantizedLayout(a: QuantizedMatrix, b: QuantizedMatrix): boolean {
  return a.bits === b.bits && a.blockSize === b.blockSize && a.shape[1] === b.shape[1];
}

/** Stacks matrices of one layout along rows (a fused projection); a part without offsets contributes zeros. */
export function concatQuantizedRows(parts: readonly QuantizedMatrix[]): QuantizedMatrix {
  const [first] = parts;
  if (parts.length === 1) return first;
  if (!parts.every((part) => sameQuantizedLayout(first, part))) throw new Error('only matrices of one quantized layout can be stacked');
  const rows = parts.reduce((sum, part) => sum + part.shape[0], 0);
  const columns = first.shape[1];
  const join = <T extends Uint8Array | Float32Array>(arrays: T[], out: T): T => {
    let at = 0;
    for (const array of arrays) {
      out.set(array, at);
      at += array.length;
    }
    return out;
  };
  const hasOffsets = parts.some((part) => part.offsets);
  const offsetsPerRow = columns / QUANTIZED_OFFSET_BLOCK;
  return {
    shape: [rows, columns],
    sourceType: [...new Set(parts.map((part) => part.sourceType))].join('+'),
    bits: first.bits,
    blockSize: first.blockSize,
    codes: join(parts.map((part) => part.codes), new Uint8Array((rows * columns * first.bits) / 8)),
    scales: join(parts.map((part) => part.scales), new Float32Array((rows * columns) / first.blockSize)),
    ...(hasOffsets
      ? {
          offsets: join(
            parts.map((part) => part.offsets ?? new Float32Array(part.shape[0] * offsetsPerRow)),
            new Float32Array(rows * offsetsPerRow),
          ),
        }
      : {}),
  };
}

/** The float32 values a quantized matrix represents, row-major `[rows, columns]`. */
export function dequantizeMatrix(m: QuantizedMatrix): Float32Array {
  const [rows, columns] = m.shape;
  const out = new Float32Array(rows * columns);
  const zeroPoint = 1 << (m.bits - 1);
  for (let i = 0; i < out.length; i++) {
    const code = m.bits === 8 ? m.codes[i] : (m.codes[i >> 1] >> ((i & 1) * 4)) & 0xf;
    const row = Math.floor(i / columns);
    const column = i - row * columns;
    const offset = m.offsets ? m.offsets[row * (columns / QUANTIZED_OFFSET_BLOCK) + Math.floor(column / QUANTIZED_OFFSET_BLOCK)] : 0;
    out[i] = m.scales[Math.floor(i / m.blockSize)] * (code - zeroPoint) + offset;
  }
  return out;
}

/** Bytes a quantized matrix occupies when served. */
export function quantizedBytes(m: QuantizedMatrix): number {
  return m.codes.byteLength + m.scales.byteLength + (m.offsets?.byteLength ?? 0);
}

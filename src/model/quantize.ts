/**
 * On-load quantization of float weights with llama.cpp's numerics (ggml-quants.c quantize_row_q8_0_ref and
 * quantize_row_q4_0_ref, which llama-quantize uses without an importance matrix): the same float32 weights give
 * the same blocks, byte for byte, as a file llama.cpp quantized. Arithmetic runs in float32 as in C.
 */
import { floatToHalfBits } from '../formats/float16.ts';
import { ggmlBlocksToQuantizedMatrix } from '../formats/ggml-quants.ts';
import type { LoadQuantization, QuantizedMatrix } from './types.ts';

const BLOCK = 32;
const f32 = Math.fround;

/** C's roundf: halves away from zero (Math.round takes them towards +∞). */
const roundAwayFromZero = (x: number) => Math.sign(x) * Math.round(Math.abs(x));

function writeHalf(out: Uint8Array, at: number, value: number): void {
  const bits = floatToHalfBits(value);
  out[at] = bits & 0xff;
  out[at + 1] = bits >> 8;
}

/** Q8_0 blocks of `values` (length a multiple of 32): d = max|x|/127, q = round(x/d). */
export function quantizeQ8_0(values: Float32Array): Uint8Array {
  const out = new Uint8Array((values.length / BLOCK) * 34);
  for (let block = 0; block < values.length / BLOCK; block++) {
    const x = values.subarray(block * BLOCK, (block + 1) * BLOCK);
    let amax = 0;
    for (const v of x) amax = Math.max(amax, Math.abs(v));
    const d = f32(amax / 127);
    const id = d ? f32(1 / d) : 0;
    writeHalf(out, block * 34, d);
    for (let j = 0; j < BLOCK; j++) out[block * 34 + 2 + j] = roundAwayFromZero(f32(x[j] * id)) & 0xff;
  }
  return out;
}

/** Q4_0 blocks: d = (the value of largest magnitude)/−8, q = min(15, trunc(x/d + 8.5)). */
export function quantizeQ4_0(values: Float32Array): Uint8Array {
  const out = new Uint8Array((values.length / BLOCK) * 18);
  for (let block = 0; block < values.length / BLOCK; block++) {
    const x = values.subarray(block * BLOCK, (block + 1) * BLOCK);
    let amax = 0;
    let max = 0;
    for (const v of x) {
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = f32(max / -8);
    const id = d ? f32(1 / d) : 0;
    writeHalf(out, block * 18, d);
    for (let j = 0; j < BLOCK / 2; j++) {
      const low = Math.min(15, Math.trunc(f32(f32(x[j] * id) + 8.5)));
      const high = Math.min(15, Math.trunc(f32(f32(x[j + BLOCK / 2] * id) + 8.5)));
      out[block * 18 + 2 + j] = low | (high << 4);
    }
  }
  return out;
}

const LOAD_QUANTIZATIONS: Record<LoadQuantization, { type: string; quantize: (values: Float32Array) => Uint8Array }> = {
  q8: { type: 'Q8_0', quantize: quantizeQ8_0 },
  q4: { type: 'Q4_0', quantize: quantizeQ4_0 },
};

/** A float `[rows, columns]` weight quantized as `kind` asks; columns must be a multiple of 32. */
export function quantizeMatrix(values: Float32Array, shape: readonly number[], kind: LoadQuantization): QuantizedMatrix {
  const [rows, columns] = shape;
  const { type, quantize } = LOAD_QUANTIZATIONS[kind];
  if (columns % BLOCK !== 0) throw new Error(`cannot quantize rows of ${columns} values to ${type}: rows must be a multiple of ${BLOCK}`);
  return ggmlBlocksToQuantizedMatrix(type, rows, columns, quantize(values));
}

/**
 * ggml's block-quantized tensor types, re-laid for onnxruntime's MatMulNBits without expanding them to float.
 * Every value of these formats is `scale · q` with a small integer q (plus, for Q4_K and Q5_K, a sub-block
 * offset), so it maps onto a MatMulNBits code `q + 2^(bits−1)` under the operator's default zero point:
 *
 * | type | GGUF block                                                     | served as                     | exact |
 * |------|----------------------------------------------------------------|-------------------------------|-------|
 * | Q4_0 | 32 × 4-bit, f16 d: d·(q−8)                                     | 4-bit, block 32               | yes   |
 * | Q5_0 | 32 × 5-bit, f16 d: d·(q−16)                                    | 8-bit, block 32 (no 5-bit op) | yes   |
 * | Q8_0 | 32 × int8, f16 d: d·q                                          | 8-bit, block 32               | yes   |
 * | Q4_K | 256 = 8 × 32 × 4-bit, 6-bit scales and mins: d·sc·q − dmin·m   | 4-bit, block 32, + offsets    | yes ¹ |
 * | Q5_K | 256 = 8 × 32 × 5-bit, 6-bit scales and mins: d·sc·q − dmin·m   | 8-bit, block 32, + offsets    | yes ¹ |
 * | Q6_K | 256 = 16 × 16 × 6-bit, int8 scales: d·sc·(q−32)                | 8-bit, block 16               | yes   |
 *
 * ¹ A minimum is not a multiple of its sub-block's scale, so no integer zero point expresses it: the codes are
 * centred (q−8, q−16) and each sub-block's `scale·centre − dmin·m` becomes an additive offset, applied in the
 * graph as the activations' 32-column sums times an `[columns/32, rows]` matrix. The represented values equal
 * llama.cpp's; the offset is rounded to float32 once.
 * Layouts follow ggml-common.h (block_q4_0 ... block_q6_K) and the dequantize_row_* functions of ggml-quants.c.
 */
import { halfToFloat } from './float16.ts';
import { QUANTIZED_OFFSET_BLOCK, type QuantizedMatrix } from '../model/types.ts';

/** One GGUF block decoded: centred integers, one scale per served block, one offset per 32 values. */
interface DecodedBlock {
  q: Int32Array;
  scales: Float32Array;
  offsets: Float32Array;
}

interface BlockFormat {
  /** Values and bytes of one GGUF block. */
  values: number;
  bytes: number;
  bits: 4 | 8;
  /** MatMulNBits block size: the span of one scale. */
  blockSize: number;
  hasOffsets: boolean;
  decode(b: Uint8Array, at: number, out: DecodedBlock): void;
}

const f16 = (b: Uint8Array, at: number) => halfToFloat(b[at] | (b[at + 1] << 8));
const f32 = Math.fround;

/** Q4_K/Q5_K: the 6-bit scale and minimum of sub-block j, packed into 12 bytes (ggml's get_scale_min_k4). */
function scaleMinK4(b: Uint8Array, at: number, j: number): [scale: number, min: number] {
  if (j < 4) return [b[at + j] & 63, b[at + j + 4] & 63];
  return [(b[at + j + 4] & 0xf) | ((b[at + j - 4] >> 6) << 4), (b[at + j + 4] >> 4) | ((b[at + j] >> 6) << 4)];
}

/** Q4_K/Q5_K sub-block j: scale d·sc, and the offset that turns `scale·(q − centre)` back into `d·sc·q − dmin·m`. */
function kQuantScale(b: Uint8Array, at: number, j: number, centre: number, out: DecodedBlock): void {
  const [sc, m] = scaleMinK4(b, at + 4, j);
  const scale = f32(f16(b, at) * sc);
  out.scales[j] = scale;
  out.offsets[j] = f32(centre * scale - f32(f16(b, at + 2) * m));
}

export const GGML_BLOCK_FORMATS: Record<string, BlockFormat> = {
  Q4_0: {
    values: 32,
    bytes: 18,
    bits: 4,
    blockSize: 32,
    hasOffsets: false,
    decode(b, at, out) {
      out.scales[0] = f16(b, at);
      for (let j = 0; j < 16; j++) {
        const byte = b[at + 2 + j];
        out.q[j] = (byte & 0xf) - 8;
        out.q[j + 16] = (byte >> 4) - 8;
      }
    },
  },
  Q5_0: {
    values: 32,
    bytes: 22,
    bits: 8,
    blockSize: 32,
    hasOffsets: false,
    decode(b, at, out) {
      out.scales[0] = f16(b, at);
      const high = (b[at + 2] | (b[at + 3] << 8) | (b[at + 4] << 16) | (b[at + 5] << 24)) >>> 0;
      for (let j = 0; j < 16; j++) {
        const byte = b[at + 6 + j];
        out.q[j] = ((byte & 0xf) | (((high >>> j) & 1) << 4)) - 16;
        out.q[j + 16] = ((byte >> 4) | (((high >>> (j + 16)) & 1) << 4)) - 16;
      }
    },
  },
  Q8_0: {
    values: 32,
    bytes: 34,
    bits: 8,
    blockSize: 32,
    hasOffsets: false,
    decode(b, at, out) {
      out.scales[0] = f16(b, at);
      for (let j = 0; j < 32; j++) out.q[j] = (b[at + 2 + j] << 24) >> 24;
    },
  },
  Q4_K: {
    values: 256,
    bytes: 144,
    bits: 4,
    blockSize: 32,
    hasOffsets: true,
    decode(b, at, out) {
      const qs = at + 16;
      for (let chunk = 0; chunk < 4; chunk++) {
        kQuantScale(b, at, 2 * chunk, 8, out);
        kQuantScale(b, at, 2 * chunk + 1, 8, out);
        for (let l = 0; l < 32; l++) {
          const byte = b[qs + 32 * chunk + l];
          out.q[64 * chunk + l] = (byte & 0xf) - 8;
          out.q[64 * chunk + 32 + l] = (byte >> 4) - 8;
        }
      }
    },
  },
  Q5_K: {
    values: 256,
    bytes: 176,
    bits: 8,
    blockSize: 32,
    hasOffsets: true,
    decode(b, at, out) {
      const qh = at + 16;
      const qs = at + 48;
      for (let chunk = 0; chunk < 4; chunk++) {
        kQuantScale(b, at, 2 * chunk, 16, out);
        kQuantScale(b, at, 2 * chunk + 1, 16, out);
        const lowBit = 1 << (2 * chunk);
        const highBit = 2 << (2 * chunk);
        for (let l = 0; l < 32; l++) {
          const byte = b[qs + 32 * chunk + l];
          out.q[64 * chunk + l] = (byte & 0xf) + (b[qh + l] & lowBit ? 16 : 0) - 16;
          out.q[64 * chunk + 32 + l] = (byte >> 4) + (b[qh + l] & highBit ? 16 : 0) - 16;
        }
      }
    },
  },
  Q6_K: {
    values: 256,
    bytes: 210,
    bits: 8,
    blockSize: 16,
    hasOffsets: false,
    decode(b, at, out) {
      const d = f16(b, at + 208);
      for (let j = 0; j < 16; j++) out.scales[j] = f32(d * ((b[at + 192 + j] << 24) >> 24));
      // Two halves of 128 values; each low-bits byte and high-bits byte serve four values 32 apart.
      for (let half = 0; half < 2; half++) {
        const ql = at + 64 * half;
        const qh = at + 128 + 32 * half;
        const base = 128 * half;
        for (let l = 0; l < 32; l++) {
          const high = b[qh + l];
          out.q[base + l] = ((b[ql + l] & 0xf) | ((high & 3) << 4)) - 32;
          out.q[base + l + 32] = ((b[ql + l + 32] & 0xf) | (((high >> 2) & 3) << 4)) - 32;
          out.q[base + l + 64] = ((b[ql + l] >> 4) | (((high >> 4) & 3) << 4)) - 32;
          out.q[base + l + 96] = ((b[ql + l + 32] >> 4) | (((high >> 6) & 3) << 4)) - 32;
        }
      }
    },
  },
};

/** GGUF types served quantized. */
export const QUANTIZED_GGML_TYPES = Object.keys(GGML_BLOCK_FORMATS);

/**
 * A `[rows, columns]` tensor of GGUF blocks (rows of `columns` values, each row a whole number of blocks) as a
 * MatMulNBits matrix. `bytes` must hold exactly the tensor's blocks.
 */
export function ggmlBlocksToQuantizedMatrix(typeName: string, rows: number, columns: number, bytes: Uint8Array): QuantizedMatrix {
  const format = GGML_BLOCK_FORMATS[typeName];
  if (!format) throw new Error(`ggml type ${typeName} is not served quantized (supported: ${QUANTIZED_GGML_TYPES.join(', ')})`);
  if (columns % format.values !== 0) throw new Error(`a ${typeName} row of ${columns} values is not a whole number of ${format.values}-value blocks`);
  const blocksPerRow = columns / format.values;
  if (bytes.byteLength !== rows * blocksPerRow * format.bytes) {
    throw new Error(`${rows}×${columns} ${typeName} takes ${rows * blocksPerRow * format.bytes} bytes, got ${bytes.byteLength}`);
  }
  const { bits, blockSize, values } = format;
  const zeroPoint = 1 << (bits - 1);
  const scalesPerBlock = values / blockSize;
  const offsetsPerBlock = values / QUANTIZED_OFFSET_BLOCK;
  const codes = new Uint8Array((rows * columns * bits) / 8);
  const scales = new Float32Array((rows * columns) / blockSize);
  const offsets = format.hasOffsets ? new Float32Array((rows * columns) / QUANTIZED_OFFSET_BLOCK) : undefined;
  const decoded: DecodedBlock = { q: new Int32Array(values), scales: new Float32Array(scalesPerBlock), offsets: new Float32Array(offsetsPerBlock) };

  for (let block = 0; block < rows * blocksPerRow; block++) {
    format.decode(bytes, block * format.bytes, decoded);
    // Blocks run along rows, so block k starts at value k·values of the row-major matrix.
    const first = block * values;
    if (bits === 8) {
      for (let e = 0; e < values; e++) codes[first + e] = decoded.q[e] + zeroPoint;
    } else {
      for (let e = 0; e < values; e += 2) codes[(first + e) >> 1] = (decoded.q[e] + zeroPoint) | ((decoded.q[e + 1] + zeroPoint) << 4);
    }
    scales.set(decoded.scales, block * scalesPerBlock);
    offsets?.set(decoded.offsets, block * offsetsPerBlock);
  }
  return { shape: [rows, columns], sourceType: typeName, bits, blockSize, codes, scales, ...(offsets ? { offsets } : {}) };
}

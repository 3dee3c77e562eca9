/**
 * Conversions between float32 and the two 16-bit float encodings weight files use (IEEE half, bfloat16),
 * and decoding of little-endian float tensor bytes into owned, aligned Float32Arrays.
 */
import { endianness } from 'node:os';

export type FloatEncoding = 'F32' | 'F16' | 'BF16';

const FLOAT_ENCODING_BYTES: Record<FloatEncoding, number> = { F32: 4, F16: 2, BF16: 2 };

// Weight files are little-endian and tensors are reinterpreted in place rather than decoded value by value.
if (endianness() !== 'LE') {
  throw new Error('weight files are little-endian; this host is big-endian, which is not supported');
}

const scratch = new Float32Array(1);
const scratchBits = new Uint32Array(scratch.buffer);

let halfTable: Float32Array | undefined;

/** All 65536 half values, built once: a lookup beats bit manipulation per element. */
function halfToFloatTable(): Float32Array {
  if (halfTable) return halfTable;
  const table = new Float32Array(65536);
  for (let bits = 0; bits < 65536; bits++) {
    const sign = bits & 0x8000 ? -1 : 1;
    const exponent = (bits >> 10) & 0x1f;
    const mantissa = bits & 0x3ff;
    if (exponent === 0) table[bits] = sign * mantissa * 2 ** -24;
    else if (exponent === 0x1f) table[bits] = mantissa ? NaN : sign * Infinity;
    else table[bits] = sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
  }
  halfTable = table;
  return table;
}

/** IEEE half bits → its value. */
export function halfToFloat(bits: number): number {
  return halfToFloatTable()[bits];
}

/** float32 → IEEE half bits, rounding to nearest even; overflow becomes infinity, NaN stays NaN. */
export function floatToHalfBits(value: number): number {
  scratch[0] = value;
  const bits = scratchBits[0];
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  let mantissa = bits & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 | (mantissa >>> 13) : 0);
  const halfExponent = exponent - 127 + 15;
  if (halfExponent >= 0x1f) return sign | 0x7c00;
  if (halfExponent <= 0) {
    // Below half's normal range: the result is subnormal (or zero), mantissa shifted with its implicit 1.
    if (halfExponent < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - halfExponent;
    return sign | roundShifted(mantissa, shift);
  }
  // A carry out of the mantissa correctly bumps the exponent (up to infinity).
  return sign | ((halfExponent << 10) + roundShifted(mantissa, 13));
}

function roundShifted(value: number, shift: number): number {
  const kept = value >>> shift;
  const remainder = value & ((1 << shift) - 1);
  const halfway = 1 << (shift - 1);
  return remainder > halfway || (remainder === halfway && kept & 1) ? kept + 1 : kept;
}

/** float32 → bfloat16 bits, rounding to nearest even; NaN stays a (quiet) NaN instead of rounding to infinity. */
function floatToBfloat16Bits(value: number): number {
  scratch[0] = value;
  const bits = scratchBits[0];
  if ((bits & 0x7fffffff) > 0x7f800000) return ((bits >>> 16) | 0x40) & 0xffff;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * Decodes little-endian tensor bytes into a new Float32Array. The input may be an unaligned view into a
 * file buffer; the result never shares memory with it.
 */
export function decodeFloats(bytes: Uint8Array, encoding: FloatEncoding): Float32Array {
  const width = FLOAT_ENCODING_BYTES[encoding];
  if (bytes.byteLength % width !== 0) {
    throw new RangeError(`${bytes.byteLength} bytes is not a whole number of ${encoding} values`);
  }
  const count = bytes.byteLength / width;
  if (encoding === 'F32') {
    const out = new Float32Array(count);
    new Uint8Array(out.buffer).set(bytes);
    return out;
  }
  const halves = new Uint16Array(count);
  new Uint8Array(halves.buffer).set(bytes);
  const out = new Float32Array(count);
  if (encoding === 'F16') {
    const table = halfToFloatTable();
    for (let i = 0; i < count; i++) out[i] = table[halves[i]];
  } else {
    const outBits = new Uint32Array(out.buffer);
    for (let i = 0; i < count; i++) outBits[i] = halves[i] << 16;
  }
  return out;
}

/**
 * Encodes float32 values as little-endian bytes in the given encoding (16-bit encodings round to nearest
 * even). F32 returns a view of `values` itself, to spare a copy of what the caller is about to copy anyway.
 */
export function encodeFloats(values: Float32Array, encoding: FloatEncoding): Uint8Array {
  if (encoding === 'F32') return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  const toBits = encoding === 'F16' ? floatToHalfBits : floatToBfloat16Bits;
  const halves = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) halves[i] = toBits(values[i]);
  return new Uint8Array(halves.buffer);
}

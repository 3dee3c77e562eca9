import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as ort from 'onnxruntime-node';
import { readGguf, ggufTensorBytes, ggufTensorToFloat32 } from '../src/formats/gguf.ts';
import { ggmlBlocksToQuantizedMatrix } from '../src/formats/ggml-quants.ts';
import { dequantizeMatrix, permuteQuantizedRows } from '../src/model/quantized-matrix.ts';
import { quantizeMatrix } from '../src/model/quantize.ts';
import { baseProjection } from '../src/graph/base-projection.ts';
import { EXTERNAL_DATA_FILE, OnnxGraphBuilder } from '../src/graph/onnx-builder.ts';
import { OPSET } from '../src/graph/decoder-graph.ts';
import { STORIES_QUANT_DIR } from './support/models.ts';

// ---- an independent decoder of ggml's block layouts (ggml-common.h), one value at a time ----

const half = (lo: number, hi: number) => {
  const bits = lo | (hi << 8);
  const exponent = (bits >> 10) & 31;
  const mantissa = bits & 1023;
  const magnitude = exponent === 0 ? mantissa * 2 ** -24 : (1 + mantissa / 1024) * 2 ** (exponent - 15);
  return bits & 0x8000 ? -magnitude : magnitude;
};
const int8 = (byte: number) => (byte > 127 ? byte - 256 : byte);
const nibble = (byte: number, high: boolean) => (high ? byte >> 4 : byte & 15);
const bit = (bytes: Uint8Array, index: number) => (bytes[index >> 3] >> (index & 7)) & 1;

/** The 6-bit scale and minimum of sub-block j of a Q4_K/Q5_K block, from its 12 packed bytes. */
function kScaleMin(s: Uint8Array, j: number): [number, number] {
  if (j < 4) return [s[j] % 64, s[j + 4] % 64];
  return [(s[j + 4] % 16) + 16 * Math.floor(s[j - 4] / 64), Math.floor(s[j + 4] / 16) + 16 * Math.floor(s[j] / 64)];
}

/** Value e of one block (`b` = the block's bytes), as ggml's dequantize_row_* define it. */
const REFERENCE_DECODERS: Record<string, { values: number; bytes: number; value(b: Uint8Array, e: number): number }> = {
  Q4_0: { values: 32, bytes: 18, value: (b, e) => half(b[0], b[1]) * (nibble(b[2 + (e % 16)], e >= 16) - 8) },
  Q5_0: {
    values: 32,
    bytes: 22,
    value: (b, e) => half(b[0], b[1]) * (nibble(b[6 + (e % 16)], e >= 16) + 16 * bit(b.subarray(2, 6), e) - 16),
  },
  Q8_0: { values: 32, bytes: 34, value: (b, e) => half(b[0], b[1]) * int8(b[2 + e]) },
  Q4_K: {
    values: 256,
    bytes: 144,
    value(b, e) {
      const sub = Math.floor(e / 32);
      const [sc, m] = kScaleMin(b.subarray(4, 16), sub);
      const q = nibble(b[16 + 32 * Math.floor(e / 64) + (e % 32)], sub % 2 === 1);
      return Math.fround(half(b[0], b[1]) * sc) * q - Math.fround(half(b[2], b[3]) * m);
    },
  },
  Q5_K: {
    values: 256,
    bytes: 176,
    value(b, e) {
      const sub = Math.floor(e / 32);
      const [sc, m] = kScaleMin(b.subarray(4, 16), sub);
      // The high bit of value e sits in byte e%32 of qh, at bit `sub` (sub-block j uses bit j).
      const q = nibble(b[48 + 32 * Math.floor(e / 64) + (e % 32)], sub % 2 === 1) + 16 * ((b[16 + (e % 32)] >> sub) & 1);
      return Math.fround(half(b[0], b[1]) * sc) * q - Math.fround(half(b[2], b[3]) * m);
    },
  },
  Q6_K: {
    values: 256,
    bytes: 210,
    value(b, e) {
      // 128-value halves; within one, value i (0..127) is group g = i/32 of four, position l = i%32.
      const halfIndex = Math.floor(e / 128);
      const i = e % 128;
      const group = Math.floor(i / 32);
      const l = i % 32;
      const low = nibble(b[64 * halfIndex + l + (group % 2) * 32], group >= 2);
      const high = (b[128 + 32 * halfIndex + l] >> (2 * group)) & 3;
      const scale = int8(b[192 + Math.floor(e / 16)]);
      return Math.fround(half(b[208], b[209]) * scale) * (low + 16 * high - 32);
    },
  },
};

function referenceDecode(type: string, rows: number, columns: number, bytes: Uint8Array): Float64Array {
  const { values, bytes: blockBytes, value } = REFERENCE_DECODERS[type];
  const out = new Float64Array(rows * columns);
  for (let block = 0; block < (rows * columns) / values; block++) {
    const b = bytes.subarray(block * blockBytes, (block + 1) * blockBytes);
    for (let e = 0; e < values; e++) out[block * values + e] = value(b, e);
  }
  return out;
}

/** Seeded random blocks of a type: random bytes, with scales set to modest finite halves of either sign. */
function randomBlocks(type: string, blocks: number, seed: number): Uint8Array {
  let state = seed;
  const next = () => (state = (Math.imul(state, 1103515245) + 12345) >>> 0) >>> 24;
  const { bytes } = REFERENCE_DECODERS[type];
  const out = new Uint8Array(blocks * bytes);
  for (let i = 0; i < out.length; i++) out[i] = next();
  const halfAt = (at: number, positive: boolean) => {
    out[at] = next();
    out[at + 1] = 0x18 + (next() % 0x10) + (positive || next() < 128 ? 0 : 0x80); // ~1e-4 .. 1e-1
  };
  for (let block = 0; block < blocks; block++) {
    const at = block * bytes;
    if (type === 'Q6_K') halfAt(at + 208, false);
    else halfAt(at, type.endsWith('_K'));
    if (type === 'Q4_K' || type === 'Q5_K') halfAt(at + 2, true);
  }
  return out;
}

const ROWS = 4;
const COLUMNS = 512;
const TYPES = Object.keys(REFERENCE_DECODERS);

function maxAbs(values: ArrayLike<number>): number {
  let max = 0;
  for (let i = 0; i < values.length; i++) max = Math.max(max, Math.abs(values[i]));
  return max;
}

for (const type of TYPES) {
  test(`${type} blocks re-laid for MatMulNBits represent the values ggml's layout defines`, () => {
    const bytes = randomBlocks(type, (ROWS * COLUMNS) / REFERENCE_DECODERS[type].values, 7 + type.length);
    const reference = referenceDecode(type, ROWS, COLUMNS, bytes);
    const served = dequantizeMatrix(ggmlBlocksToQuantizedMatrix(type, ROWS, COLUMNS, bytes));
    const scale = maxAbs(reference);
    assert.ok(scale > 0);
    for (let i = 0; i < reference.length; i++) {
      // Block scales and their products with q are exact in float32; a K-quant's offset is rounded once.
      const tolerance = type === 'Q4_K' || type === 'Q5_K' ? 2 ** -22 * scale : 0;
      assert.ok(Math.abs(served[i] - Math.fround(reference[i])) <= tolerance, `${type} value ${i}: ${served[i]} vs ${reference[i]}`);
    }
  });
}

test('the real quantized files decode to the values of the independent decoder (Q4_0, Q5_0, Q8_0)', async () => {
  const seen = new Set<string>();
  for (const file of ['stories260K-hidden192-q4_0-pure.gguf', 'stories260K-hidden192-q4_k_m.gguf']) {
    const gguf = await readGguf(`${STORIES_QUANT_DIR}/${file}`);
    for (const tensor of gguf.tensors.values()) {
      if (!(tensor.typeName in REFERENCE_DECODERS)) continue;
      seen.add(tensor.typeName);
      const [rows, columns] = tensor.shape;
      const bytes = ggufTensorBytes(gguf, tensor.name);
      const served = dequantizeMatrix(ggmlBlocksToQuantizedMatrix(tensor.typeName, rows, columns, bytes));
      const reference = referenceDecode(tensor.typeName, rows, columns, bytes);
      // Compared with ===, as a zero may be signed differently (d·0 with a negative d is −0 in ggml).
      const differing = served.findIndex((value, i) => value !== reference[i]);
      assert.equal(differing, -1, `${file} ${tensor.name} value ${differing}`);
    }
  }
  assert.deepEqual([...seen].sort(), ['Q4_0', 'Q5_0', 'Q8_0']);
});

test('on-load quantization gives the same blocks, byte for byte, as llama-quantize (Q8_0 and Q4_0)', async () => {
  const f32 = await readGguf(`${STORIES_QUANT_DIR}/stories260K-hidden192-f32.gguf`);
  for (const [kind, file] of [['q8', 'q8_0'], ['q4', 'q4_0-pure']] as const) {
    const quantized = await readGguf(`${STORIES_QUANT_DIR}/stories260K-hidden192-${file}.gguf`);
    let compared = 0;
    for (const tensor of quantized.tensors.values()) {
      if (tensor.typeName === 'F32') continue;
      const ours = quantizeMatrix(ggufTensorToFloat32(f32, tensor.name), tensor.shape, kind);
      const theirs = ggmlBlocksToQuantizedMatrix(tensor.typeName, tensor.shape[0], tensor.shape[1], ggufTensorBytes(quantized, tensor.name));
      assert.deepEqual(ours, theirs, `${file} ${tensor.name}`);
      compared++;
    }
    assert.equal(compared, 37, `${file}: every matrix of the file`);
  }
});

test('row permutation moves codes, scales and offsets together', () => {
  const matrix = ggmlBlocksToQuantizedMatrix('Q4_K', ROWS, COLUMNS, randomBlocks('Q4_K', (ROWS * COLUMNS) / 256, 3));
  const order = [2, 0, 3, 1];
  const permuted = dequantizeMatrix(permuteQuantizedRows(matrix, order));
  const original = dequantizeMatrix(matrix);
  order.forEach((from, to) => assert.deepEqual(permuted.subarray(to * COLUMNS, (to + 1) * COLUMNS), original.subarray(from * COLUMNS, (from + 1) * COLUMNS)));
});

test('onnxruntime multiplies by exactly the represented values: every type, fused and mixed projections', async () => {
  const parts = TYPES.map((type, i) => ({
    type,
    matrix: ggmlBlocksToQuantizedMatrix(type, ROWS, COLUMNS, randomBlocks(type, (ROWS * COLUMNS) / REFERENCE_DECODERS[type].values, 100 + i)),
  }));
  // One projection per type, one fusing two of one layout (Q5_0|Q8_0: 8-bit, block 32) and one mixing layouts.
  const byType = Object.fromEntries(parts.map((part) => [part.type, part.matrix]));
  const projections = [...TYPES.map((type) => [type]), ['Q5_0', 'Q8_0'], ['Q4_K', 'Q6_K', 'Q4_0']];
  const g = new OnnxGraphBuilder('projection_check');
  const x = g.input('x', 'float32', ['batch', 'tokens', COLUMNS]);
  projections.forEach((types, i) => {
    // Accuracy level 0 keeps activations float32, so the product checks the weights' layout, not int8 rounding.
    const y = baseProjection(g, x, types.map((type) => byType[type]), `p${i}`, { accuracyLevel: 0 });
    g.output(y, `y${i}`, 'float32', ['batch', 'tokens', ROWS * types.length]);
  });
  const built = g.build(OPSET);
  const session = await ort.InferenceSession.create(built.modelBytes, { externalData: [{ path: EXTERNAL_DATA_FILE, data: built.weights }] });
  const rows = 3;
  const input = Float32Array.from({ length: rows * COLUMNS }, (_, i) => Math.sin(i * 0.37) + 0.25);
  const result = await session.run({ x: new ort.Tensor('float32', input, [1, rows, COLUMNS]) });
  projections.forEach((types, i) => {
    const output = result[`y${i}`].data as Float32Array;
    const expected: number[] = [];
    for (let r = 0; r < rows; r++) {
      for (const type of types) {
        const { values, bytes } = REFERENCE_DECODERS[type];
        const blocks = randomBlocks(type, (ROWS * COLUMNS) / values, 100 + TYPES.indexOf(type));
        assert.equal(blocks.length, ((ROWS * COLUMNS) / values) * bytes);
        const weights = referenceDecode(type, ROWS, COLUMNS, blocks);
        for (let n = 0; n < ROWS; n++) {
          let sum = 0;
          for (let k = 0; k < COLUMNS; k++) sum += input[r * COLUMNS + k] * weights[n * COLUMNS + k];
          expected.push(sum);
        }
      }
    }
    const scale = maxAbs(expected);
    const error = maxAbs(expected.map((value, j) => value - output[j]));
    assert.ok(error <= 1e-5 * scale, `${types.join('|')}: error ${error} against outputs up to ${scale}`);
  });
  await session.release();
});

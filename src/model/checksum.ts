import { createHash } from 'node:crypto';
import { elementCount } from '../formats/tensor-shape.ts';
import type { QuantizedMatrix, WeightMap } from './types.ts';

const bytesOf = (array: Float32Array | Uint8Array) => new Uint8Array(array.buffer, array.byteOffset, array.byteLength);

/**
 * sha256 over the weights as served, in name order: each tensor contributes its name and shape (as a JSON
 * line, so names cannot run into each other) and then its bytes — float32 values, or for a quantized matrix
 * its layout (bits, block size) on the line and then its codes, scales and offsets. Identical weights give the
 * same checksum whatever file format or sharding they were loaded from, and a float model's checksum does not
 * depend on whether quantized weights exist elsewhere.
 */
export function weightsChecksum(weights: WeightMap, quantized: ReadonlyMap<string, QuantizedMatrix> = new Map()): string {
  const hash = createHash('sha256');
  for (const name of [...weights.keys(), ...quantized.keys()].sort()) {
    const matrix = quantized.get(name);
    if (matrix) {
      hash.update(`${JSON.stringify([name, matrix.shape, { bits: matrix.bits, blockSize: matrix.blockSize }])}\n`);
      for (const part of [matrix.codes, matrix.scales, matrix.offsets]) if (part) hash.update(bytesOf(part));
      continue;
    }
    const { shape, data } = weights.get(name)!;
    const elements = elementCount(shape);
    if (data.length !== elements) {
      throw new Error(`weight "${name}" has shape [${shape.join(', ')}] (${elements} values) but holds ${data.length}`);
    }
    hash.update(`${JSON.stringify([name, shape])}\n`);
    hash.update(bytesOf(data));
  }
  return hash.digest('hex');
}

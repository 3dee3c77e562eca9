import { createHash } from 'node:crypto';
import { elementCount } from '../formats/tensor-shape.ts';
import type { WeightMap } from './types.ts';

/**
 * sha256 over the canonical weights in name order: each tensor contributes its name and shape (as a JSON
 * line, so names cannot run into each other) and then its float32 bytes. Identical weights give the same
 * checksum whatever file format or sharding they were loaded from.
 */
export function weightsChecksum(weights: WeightMap): string {
  const hash = createHash('sha256');
  for (const name of [...weights.keys()].sort()) {
    const { shape, data } = weights.get(name)!;
    const elements = elementCount(shape);
    if (data.length !== elements) {
      throw new Error(`weight "${name}" has shape [${shape.join(', ')}] (${elements} values) but holds ${data.length}`);
    }
    hash.update(`${JSON.stringify([name, shape])}\n`);
    hash.update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }
  return hash.digest('hex');
}

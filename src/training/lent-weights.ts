/**
 * Moving a loaded model's base weights to the training thread and back, without copying them: the ArrayBuffers
 * under the weight tensors are transferred (onnxruntime-node refuses tensors over a SharedArrayBuffer, so the two
 * threads cannot share them), the thread rebuilds the same views over them, and on release it transfers them
 * back and the model's tensors are pointed at them again. While lent, the caller's weight arrays are detached
 * (empty); config, checksum and source stay readable.
 */
import type { BaseModel } from '../model/types.ts';

/** Where one weight tensor lies in the lent buffers. */
interface LentTensor {
  name: string;
  shape: number[];
  buffer: number;
  byteOffset: number;
  length: number;
}

/** A model whose weights travel in `buffers` (to be transferred with the message carrying it). */
export interface LentModel {
  config: BaseModel['config'];
  checksum: string;
  source: BaseModel['source'];
  tensors: LentTensor[];
  buffers: ArrayBuffer[];
}

/** Describes `model`'s weights over their own buffers; transferring `buffers` then moves them off this thread. */
export function lendWeights(model: BaseModel): LentModel {
  const buffers: ArrayBuffer[] = [];
  const indexOf = new Map<ArrayBufferLike, number>();
  const tensors = [...model.weights].map(([name, { shape, data }]) => {
    let source: ArrayBufferLike = data.buffer;
    let byteOffset = data.byteOffset;
    // A SharedArrayBuffer cannot be transferred (nor read by onnxruntime-node): such a tensor travels as a copy.
    // (A pooled Node Buffer's memory is cloned by the transfer itself.)
    if (!(source instanceof ArrayBuffer)) {
      source = data.slice().buffer;
      byteOffset = 0;
    }
    let buffer = indexOf.get(source);
    if (buffer === undefined) {
      buffer = buffers.push(source as ArrayBuffer) - 1;
      indexOf.set(source, buffer);
    }
    return { name, shape, buffer, byteOffset, length: data.length };
  });
  return { config: model.config, checksum: model.checksum, source: model.source, tensors, buffers };
}

/** The lent model as a `BaseModel` on the thread that received its buffers. */
export function borrowedModel(lent: LentModel): BaseModel {
  const weights = new Map(lent.tensors.map((t) => [t.name, { shape: t.shape, data: new Float32Array(lent.buffers[t.buffer], t.byteOffset, t.length) }]));
  return { config: lent.config, checksum: lent.checksum, source: lent.source, weights };
}

/** Points `model`'s weight tensors (the same objects, so holders of them see it) at the returned buffers. */
export function restoreWeights(model: BaseModel, lent: Pick<LentModel, 'tensors'>, buffers: ArrayBuffer[]): void {
  for (const t of lent.tensors) model.weights.get(t.name)!.data = new Float32Array(buffers[t.buffer], t.byteOffset, t.length);
}

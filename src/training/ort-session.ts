/** onnxruntime sessions for training graphs: CPU, the given thread count, weights from the built buffer. */
import * as ort from 'onnxruntime-node';
import { type BuiltModel, EXTERNAL_DATA_FILE } from '../graph/onnx-builder.ts';

export async function createTrainingSession(graph: BuiltModel, threads: number): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(graph.modelBytes, {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    // onnxruntime refuses an empty external buffer; graphs whose constants are all small have none.
    ...(graph.weights.byteLength > 0 ? { externalData: [{ path: EXTERNAL_DATA_FILE, data: graph.weights }] } : {}),
  });
}

export const float32Tensor = (data: Float32Array, dims: number[]) => new ort.Tensor('float32', data, dims);
export const int64Tensor = (data: BigInt64Array, dims: number[]) => new ort.Tensor('int64', data, dims);
export type { ort };

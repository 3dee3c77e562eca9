/**
 * Trains a LoRA adapter on a frozen base model. The training loop (training-loop.ts) runs on a worker thread so
 * that onnxruntime's synchronous runs never hold the caller's event loop: the base weights are copied into one
 * buffer that is moved to the worker (onnxruntime-node refuses tensors over a SharedArrayBuffer), progress and checkpoints come back as messages, and a stop request
 * reaches the worker through a shared flag it reads after every optimizer step.
 */
import { Worker } from 'node:worker_threads';
import type { LoraAdapterSpec } from '../adapters/lora-writer.ts';
import { workerEntry } from '../engine/worker-entry.ts';
import type { BaseModel } from '../model/types.ts';
import type { TrainingData, TrainingHooks, TrainingProgress, TrainingResult } from './training-loop.ts';
import type { LoraTrainingConfig } from './training-config.ts';
import type { TrainerCheckpoint } from './checkpoint.ts';
import { validateTrainingConfig } from './training-config.ts';
import { assertTrainable } from './training-model.ts';

export type { TrainingSequence } from './batches.ts';
export { DEFAULT_LORA_TRAINING_CONFIG, type LoraTrainingConfig } from './training-config.ts';
export { deserializeCheckpoint, serializeCheckpoint, type TrainerCheckpoint } from './checkpoint.ts';
export type { TrainingHooks, TrainingProgress, TrainingResult } from './training-loop.ts';

/** The base model's weights packed into one buffer, with where each tensor lies in it. */
export interface PackedModel {
  config: BaseModel['config'];
  checksum: string;
  source: BaseModel['source'];
  buffer: ArrayBuffer;
  tensors: { name: string; shape: number[]; offset: number; length: number }[];
}

export interface WorkerStart {
  model: PackedModel;
  data: TrainingData;
  config: LoraTrainingConfig;
  checkpointEvery?: number;
  resumeFrom?: TrainerCheckpoint;
  /** Int32 flag: set to 1 to stop after the current optimizer step. */
  stopFlag: SharedArrayBuffer;
}

export type FromTrainingWorker =
  | { type: 'progress'; progress: TrainingProgress }
  | { type: 'checkpoint'; checkpoint: TrainerCheckpoint; adapter: LoraAdapterSpec }
  | { type: 'done'; result: TrainingResult }
  | { type: 'failed'; message: string };

export type ToTrainingWorker = { type: 'checkpoint-saved' } | { type: 'checkpoint-failed'; message: string };

export function packModel(model: BaseModel): PackedModel {
  let size = 0;
  const tensors = [...model.weights].map(([name, tensor]) => {
    const entry = { name, shape: tensor.shape, offset: size, length: tensor.data.length };
    size += tensor.data.length;
    return entry;
  });
  const buffer = new ArrayBuffer(size * Float32Array.BYTES_PER_ELEMENT);
  const all = new Float32Array(buffer);
  for (const entry of tensors) all.set(model.weights.get(entry.name)!.data, entry.offset);
  return { config: model.config, checksum: model.checksum, source: model.source, buffer, tensors };
}

export function unpackModel(packed: PackedModel): BaseModel {
  const all = new Float32Array(packed.buffer);
  const weights = new Map(packed.tensors.map((t) => [t.name, { shape: t.shape, data: all.subarray(t.offset, t.offset + t.length) }]));
  return { config: packed.config, checksum: packed.checksum, source: packed.source, weights };
}

/**
 * Trains a LoRA adapter on `model` with `data`. Resolves when training completes or `hooks.shouldStop` stops it
 * (after the step during which it first returned true); rejects with the worker's error otherwise.
 */
export async function trainLora(model: BaseModel, data: TrainingData, config: LoraTrainingConfig, hooks: TrainingHooks = {}): Promise<TrainingResult> {
  validateTrainingConfig(config);
  assertTrainable(model);
  const stopFlag = new SharedArrayBuffer(4);
  const stop = new Int32Array(stopFlag);
  const packed = packModel(model);
  const start: WorkerStart = { model: packed, data, config, checkpointEvery: hooks.checkpointEvery, resumeFrom: hooks.resumeFrom, stopFlag };
  const worker = new Worker(workerEntry(new URL('./training-worker.ts', import.meta.url)), { workerData: start, transferList: [packed.buffer] });
  return new Promise<TrainingResult>((resolve, reject) => {
    let settled = false;
    const finish = (outcome: () => void) => {
      if (settled) return;
      settled = true;
      void worker.terminate();
      outcome();
    };
    worker.on('message', (message: FromTrainingWorker) => {
      switch (message.type) {
        case 'progress':
          hooks.onProgress?.(message.progress);
          if (hooks.shouldStop?.()) Atomics.store(stop, 0, 1);
          break;
        case 'checkpoint':
          Promise.resolve(hooks.onCheckpoint?.(message.checkpoint, message.adapter)).then(
            () => worker.postMessage({ type: 'checkpoint-saved' } satisfies ToTrainingWorker),
            (error: Error) => worker.postMessage({ type: 'checkpoint-failed', message: error.message } satisfies ToTrainingWorker),
          );
          break;
        case 'done':
          finish(() => resolve(message.result));
          break;
        case 'failed':
          finish(() => reject(new Error(message.message)));
          break;
      }
    });
    worker.on('error', (error) => finish(() => reject(error)));
    worker.on('exit', (code) => finish(() => reject(new Error(`the training thread exited (code ${code}) before finishing`))));
  });
}

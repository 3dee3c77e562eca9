/**
 * The training thread (see training-thread.ts): holds the base weights moved to it, runs each requested training
 * run on them (runs in progress interleave between onnxruntime calls), reports back, and on release hands the
 * weights back and ends.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { runTraining } from './training-loop.ts';
import { borrowedModel, type LentModel } from './lent-weights.ts';
import type { FromTrainingThread, RunStart, ToTrainingThread } from './training-thread.ts';

const lent = workerData as LentModel;
const model = borrowedModel(lent);
const port = parentPort!;
const post = (message: FromTrainingThread, transfer: ArrayBuffer[] = []) => port.postMessage(message, transfer);
/** Per run, the settlement of the checkpoint it is waiting to see stored. */
const checkpointWaits = new Map<number, { resolve: () => void; reject: (error: Error) => void }>();

async function train(run: number, start: RunStart): Promise<void> {
  const stop = new Int32Array(start.stopFlag);
  try {
    const result = await runTraining(model, start.data, start.config, {
      onProgress: (progress) => post({ type: 'progress', run, progress }),
      shouldStop: () => Atomics.load(stop, 0) === 1,
      checkpointEvery: start.checkpointEvery,
      resumeFrom: start.resumeFrom,
      // Settles when the parent has stored the checkpoint, so the run never gets ahead of its last saved state.
      onCheckpoint: (checkpoint, adapter) =>
        new Promise<void>((resolve, reject) => {
          checkpointWaits.set(run, { resolve, reject });
          post({ type: 'checkpoint', run, checkpoint, adapter });
        }),
    });
    post({ type: 'done', run, result });
  } catch (error) {
    post({ type: 'failed', run, message: (error as Error).message });
  }
}

port.on('message', (message: ToTrainingThread) => {
  switch (message.type) {
    case 'train':
      void train(message.run, message.start);
      break;
    case 'checkpoint-saved':
      checkpointWaits.get(message.run)?.resolve();
      checkpointWaits.delete(message.run);
      break;
    case 'checkpoint-failed':
      checkpointWaits.get(message.run)?.reject(new Error(`saving a checkpoint failed: ${message.message}`));
      checkpointWaits.delete(message.run);
      break;
    case 'release':
      post({ type: 'released', buffers: lent.buffers }, lent.buffers);
      port.close();
      break;
  }
});

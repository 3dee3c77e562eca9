/** The training thread: runs the training loop on the base weights moved to it and reports back (see lora-trainer.ts). */
import { parentPort, workerData } from 'node:worker_threads';
import { runTraining } from './training-loop.ts';
import { type FromTrainingWorker, type ToTrainingWorker, unpackModel, type WorkerStart } from './lora-trainer.ts';

const start = workerData as WorkerStart;
const port = parentPort!;
const post = (message: FromTrainingWorker) => port.postMessage(message);
const stop = new Int32Array(start.stopFlag);

/** Settles when the parent has stored the checkpoint, so the run never gets ahead of its last saved state. */
function checkpointStored(): Promise<void> {
  return new Promise((resolve, reject) => {
    port.once('message', (message: ToTrainingWorker) => {
      if (message.type === 'checkpoint-saved') resolve();
      else reject(new Error(`saving a checkpoint failed: ${message.message}`));
    });
  });
}

try {
  const result = await runTraining(unpackModel(start.model), start.data, start.config, {
    onProgress: (progress) => post({ type: 'progress', progress }),
    shouldStop: () => Atomics.load(stop, 0) === 1,
    checkpointEvery: start.checkpointEvery,
    resumeFrom: start.resumeFrom,
    onCheckpoint: async (checkpoint, adapter) => {
      const stored = checkpointStored();
      post({ type: 'checkpoint', checkpoint, adapter });
      await stored;
    },
  });
  post({ type: 'done', result });
} catch (error) {
  post({ type: 'failed', message: (error as Error).message });
}

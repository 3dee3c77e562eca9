/**
 * The training thread of one base model. onnxruntime's `session.run` is synchronous on its thread, so training
 * runs off the caller's thread; the model's weights move there (lent-weights.ts: transferred, not copied) when
 * the first run starts and come back when the last run in progress ends, so the process holds one copy of the
 * base weights however many runs share the thread. Progress and checkpoints come back as messages; a stop
 * request reaches a run through a shared flag it reads after every optimizer step.
 */
import { Worker } from 'node:worker_threads';
import type { LoraAdapterSpec } from '../adapters/lora-writer.ts';
import { workerEntry } from '../engine/worker-entry.ts';
import type { BaseModel } from '../model/types.ts';
import type { TrainerCheckpoint } from './checkpoint.ts';
import { lendWeights, type LentModel, restoreWeights } from './lent-weights.ts';
import type { LoraTrainingConfig } from './training-config.ts';
import type { TrainingData, TrainingHooks, TrainingResult } from './training-loop.ts';

export interface RunStart {
  data: TrainingData;
  config: LoraTrainingConfig;
  checkpointEvery?: number;
  resumeFrom?: TrainerCheckpoint;
  /** Int32 flag: set to 1 to stop after the current optimizer step. */
  stopFlag: SharedArrayBuffer;
}

export type ToTrainingThread =
  | { type: 'train'; run: number; start: RunStart }
  | { type: 'checkpoint-saved'; run: number }
  | { type: 'checkpoint-failed'; run: number; message: string }
  | { type: 'release' };

export type FromTrainingThread =
  | { type: 'progress'; run: number; progress: import('./training-loop.ts').TrainingProgress }
  | { type: 'checkpoint'; run: number; checkpoint: TrainerCheckpoint; adapter: LoraAdapterSpec }
  | { type: 'done'; run: number; result: TrainingResult }
  | { type: 'failed'; run: number; message: string }
  | { type: 'released'; buffers: ArrayBuffer[] };

interface RunHandlers {
  hooks: TrainingHooks;
  stop: Int32Array;
  resolve: (result: TrainingResult) => void;
  reject: (error: Error) => void;
}

const threads = new WeakMap<BaseModel, TrainingThread>();
const lost = new WeakSet<BaseModel>();

export class TrainingThread {
  private readonly runs = new Map<number, RunHandlers>();
  private nextRun = 0;
  /** Set once the weights are asked back; settles when they are back in the model (or lost). */
  private release?: Promise<void>;
  private settleRelease = () => {};
  /** The last run's settlement, held until the weights are back so its caller finds the model whole. */
  private lastSettlement = () => {};

  private constructor(
    private readonly model: BaseModel,
    private readonly lent: LentModel,
    private readonly worker: Worker,
  ) {
    worker.on('message', (message: FromTrainingThread) => this.receive(message));
    worker.on('error', (error) => this.fail(error));
    worker.on('exit', (code) => this.fail(new Error(`the training thread exited (code ${code}) before finishing`)));
  }

  /** The model's training thread, started (and its weights moved to it) if none is running. */
  static async of(model: BaseModel): Promise<TrainingThread> {
    for (;;) {
      if (lost.has(model)) throw new Error('the base model’s weights were lost when its training thread failed; load the model again');
      const current = threads.get(model);
      if (!current) break;
      if (!current.release) return current;
      await current.release;
    }
    const lent = lendWeights(model);
    const worker = new Worker(workerEntry(new URL('./training-worker.ts', import.meta.url)), { workerData: lent, transferList: lent.buffers });
    const thread = new TrainingThread(model, { ...lent, buffers: [] }, worker);
    threads.set(model, thread);
    return thread;
  }

  train(data: TrainingData, config: LoraTrainingConfig, hooks: TrainingHooks): Promise<TrainingResult> {
    const run = this.nextRun++;
    const stopFlag = new SharedArrayBuffer(4);
    return new Promise<TrainingResult>((resolve, reject) => {
      this.runs.set(run, { hooks, stop: new Int32Array(stopFlag), resolve, reject });
      const start: RunStart = { data, config, checkpointEvery: hooks.checkpointEvery, resumeFrom: hooks.resumeFrom, stopFlag };
      this.post({ type: 'train', run, start });
    });
  }

  private receive(message: FromTrainingThread): void {
    if (message.type === 'released') {
      restoreWeights(this.model, this.lent, message.buffers);
      this.close();
      return;
    }
    const handlers = this.runs.get(message.run);
    if (!handlers) return;
    switch (message.type) {
      case 'progress':
        handlers.hooks.onProgress?.(message.progress);
        if (handlers.hooks.shouldStop?.()) Atomics.store(handlers.stop, 0, 1);
        break;
      case 'checkpoint':
        Promise.resolve(handlers.hooks.onCheckpoint?.(message.checkpoint, message.adapter)).then(
          () => this.post({ type: 'checkpoint-saved', run: message.run }),
          (error: Error) => this.post({ type: 'checkpoint-failed', run: message.run, message: error.message }),
        );
        break;
      case 'done':
        this.finish(message.run, () => handlers.resolve(message.result));
        break;
      case 'failed':
        this.finish(message.run, () => handlers.reject(new Error(message.message)));
        break;
    }
  }

  /** Settles a run; the last one to end asks for the weights back and settles once they are. */
  private finish(run: number, settle: () => void): void {
    this.runs.delete(run);
    if (this.runs.size > 0) return settle();
    this.lastSettlement = settle;
    this.release = new Promise((resolve) => (this.settleRelease = resolve));
    this.post({ type: 'release' });
  }

  /** The thread died without giving the weights back: every run fails, and the model cannot train again. */
  private fail(error: Error): void {
    if (threads.get(this.model) !== this) return;
    lost.add(this.model);
    for (const [run, handlers] of this.runs) this.finish(run, () => handlers.reject(error));
    this.close();
  }

  private close(): void {
    threads.delete(this.model);
    this.worker.removeAllListeners('exit');
    void this.worker.terminate();
    this.settleRelease();
    this.lastSettlement();
  }

  private post(message: ToTrainingThread): void {
    this.worker.postMessage(message);
  }
}

/**
 * The engine thread: loads the base model, builds its graph and onnxruntime session, and runs the scheduler.
 * `session.run` blocks the thread it runs on, which is why all of this lives off the HTTP thread.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { compileBaseModel } from '../runtime/compiled-model-cache.ts';
import { ModelRunner } from '../runtime/model-runner.ts';
import { DEFAULT_PREFILL_TOKEN_BUDGET, RUN_FREELY, type EngineWorkerData, type FromWorker, type ToWorker } from './protocol.ts';
import { AdapterLoaderThread } from './adapter-loader-thread.ts';
import { Scheduler } from './scheduler.ts';

const port = parentPort!;
const post = (message: FromWorker) => port.postMessage(message);

/**
 * Called after each step is reported: while the engine is paused, blocks this thread (messages, timers and the
 * scheduler alike) until the HTTP thread allows another step or resumes. Blocking here rather than in the
 * scheduler means a paused engine has delivered everything it produced and does nothing more.
 */
function passStepGate(gate: Int32Array): void {
  let announced = false;
  for (;;) {
    const allowed = Atomics.load(gate, 0);
    if (allowed === RUN_FREELY) return;
    if (allowed > 0) {
      if (Atomics.compareExchange(gate, 0, allowed, allowed - 1) === allowed) return;
      continue;
    }
    if (!announced) post({ type: 'paused' });
    announced = true;
    Atomics.wait(gate, 0, 0);
  }
}

async function start(options: EngineWorkerData): Promise<void> {
  const stepGate = new Int32Array(options.stepGate);
  const model = await compileBaseModel(options.modelPath, { quantize: options.quantize, cacheDir: options.compiledModelCacheDir });
  const maxPositions = Math.min(options.maxPositions ?? model.config.maxPositions, model.config.maxPositions);
  // Read buffers for a batch's worth of distinct cold adapters: a burst on a fresh engine reads no more at once.
  const loader = new AdapterLoaderThread({
    config: model.config,
    slotRank: options.maxLoraRank,
    layoutCache: options.adapterLayoutCache,
    readBuffers: Math.min(options.adapterSlots, options.maxBatch),
  });
  const sessionStarted = performance.now();
  const runner = await ModelRunner.fromGraphs(model.graphs, model.config, { ...options, maxBatch: options.maxBatch, maxPositions }, model.rowNorms);
  const startup = { cached: model.cached, sessions: runner.sessionSource, ms: { ...model.timings, session: Math.round(performance.now() - sessionStarted) } };
  const scheduler = new Scheduler(
    runner,
    {
      maxQueue: options.maxQueue,
      maxPositions,
      prefillTokenBudget: options.prefillTokenBudget ?? DEFAULT_PREFILL_TOKEN_BUDGET,
      hostCacheBytes: options.hostCacheBytes,
      loadAdapter: loader.load,
      prefaultLoader: loader.prefault,
    },
    {
      step: (report) => {
        post({ type: 'step', ...report });
        passStepGate(stepGate);
      },
      failed: (id, message, code) => post({ type: 'sequence-failed', id, message, code }),
    },
  );
  port.on('message', async (message: ToWorker) => {
    switch (message.type) {
      case 'submit':
        return scheduler.submit(message.request);
      case 'cancel':
        return scheduler.cancel(message.id);
      case 'evict-adapter':
        return scheduler.evictAdapter(message.version);
      case 'preload-adapter':
        return scheduler.preloadAdapter(message.ref).then(
          () => post({ type: 'adapter-preloaded', id: message.id }),
          (error: Error) => post({ type: 'adapter-preloaded', id: message.id, error: error.message }),
        );
      case 'prepare-layout':
        return scheduler.prepareLayout(message.ref);
      case 'shutdown':
        await loader.close();
        await runner.close();
        post({ type: 'closed' });
        port.close();
    }
  });
  post({
    type: 'ready',
    info: { config: model.config, checksum: model.checksum, format: model.source.format, path: model.source.path, maxPositions, startup },
  });
}

start(workerData as EngineWorkerData).catch((error: Error) => post({ type: 'startup-failed', message: error.message }));

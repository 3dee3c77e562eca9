/**
 * The engine as the HTTP thread sees it: submit token sequences, receive tokens as they are sampled.
 * The model, its session and the scheduler live on a worker thread (see engine-worker.ts).
 */
import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import { workerEntry } from './worker-entry.ts';
import type {
  AdapterCacheEvent,
  AdapterRef,
  EngineOptions,
  FinishReason,
  FromWorker,
  ModelInfo,
  SchedulerStats,
  StartEvent,
  TokenEvent,
  ToWorker,
} from './protocol.ts';
import { RUN_FREELY } from './protocol.ts';
import type { SamplingParams } from './sampling.ts';

export interface GenerateRequest {
  /** Who the request is for (fair scheduling between tenants); defaults to one shared tenant. */
  tenant?: string;
  promptIds: number[];
  adapter: AdapterRef | null;
  sampling: SamplingParams;
  maxTokens: number;
  stopTokenIds: number[];
  /** Aborting cancels the sequence; the engine frees its row and slot within one step. */
  signal?: AbortSignal;
  onStart?: (event: StartEvent) => void;
  onToken?: (event: TokenEvent) => void;
}

export interface GenerationResult {
  reason: FinishReason;
  promptTokens: number;
  completionTokens: number;
  tokens: number[];
}

/** A request the engine refused or could not finish; `code` says why (overloaded, invalid_adapter, ...). */
export class EngineError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
    this.name = 'EngineError';
  }
}

interface Pending {
  request: GenerateRequest;
  tokens: number[];
  resolve: (result: GenerationResult) => void;
  reject: (error: Error) => void;
  detach: () => void;
}

export interface EngineEvents {
  stats: [SchedulerStats];
  'adapter-cache': [AdapterCacheEvent];
}

export class Engine extends EventEmitter<EngineEvents> {
  private readonly pending = new Map<number, Pending>();
  private readonly preloads = new Map<number, { resolve: () => void; reject: (error: Error) => void }>();
  private nextId = 1;
  private closed = false;
  private exited = false;
  /** Set when the engine thread died: every request fails fast instead of waiting forever. */
  private failure: EngineError | null = null;
  /** The scheduler's state after its latest step. */
  stats: SchedulerStats;
  /** Whether the engine thread has reported that it stopped at a step boundary, and who waits for that. */
  private isPaused = false;
  private pausedWaiters: (() => void)[] = [];

  private constructor(
    private readonly worker: Worker,
    readonly info: ModelInfo,
    readonly options: EngineOptions,
    /** Steps the engine thread may still run before pausing (see pause()), shared with it. */
    private readonly stepGate: Int32Array,
  ) {
    super();
    this.stats = {
      running: 0,
      waiting: 0,
      kvCacheUsage: 0,
      runningAdapters: [],
      waitingAdapters: [],
      slots: { capacity: options.adapterSlots, resident: 0, bytes: 0, adapters: [] },
      host: { entries: 0, bytes: 0, adapters: [] },
    };
    worker.on('message', (message: FromWorker) => this.receive(message));
    worker.on('error', (error) => this.die(new EngineError(`the engine thread crashed: ${error.message}`, 'engine_error')));
    worker.on('exit', () => {
      this.exited = true;
      this.die(new EngineError('the engine thread exited', 'engine_error'));
    });
  }

  /** Starts the engine thread and resolves once the model is loaded and its session built. */
  static start(options: EngineOptions): Promise<Engine> {
    const stepGate = new Int32Array(new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT));
    stepGate[0] = RUN_FREELY;
    const worker = new Worker(workerEntry(new URL('./engine-worker.ts', import.meta.url)), { workerData: { ...options, stepGate: stepGate.buffer } });
    return new Promise((resolve, reject) => {
      const onMessage = (message: FromWorker) => {
        if (message.type === 'ready') {
          worker.off('message', onMessage);
          worker.off('error', reject);
          resolve(new Engine(worker, message.info, options, stepGate));
        } else if (message.type === 'startup-failed') {
          void worker.terminate();
          reject(new Error(`could not load the model at ${options.modelPath}: ${message.message}`));
        }
      };
      worker.on('message', onMessage);
      worker.once('error', reject);
    });
  }

  generate(request: GenerateRequest): Promise<GenerationResult> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new EngineError('the engine is shutting down', 'shutting_down'));
    if (request.signal?.aborted) return Promise.reject(new EngineError('the request was cancelled', 'cancelled'));
    const id = this.nextId++;
    return new Promise<GenerationResult>((resolve, reject) => {
      const onAbort = () => this.post({ type: 'cancel', id });
      request.signal?.addEventListener('abort', onAbort, { once: true });
      this.pending.set(id, {
        request,
        tokens: [],
        resolve,
        reject,
        detach: () => request.signal?.removeEventListener('abort', onAbort),
      });
      const { tenant = '', promptIds, adapter, sampling, maxTokens, stopTokenIds } = request;
      this.post({ type: 'submit', request: { id, tenant, promptIds, adapter, sampling, maxTokens, stopTokenIds } });
    });
  }

  /** Generations submitted and not yet finished. */
  get pendingRequests(): number {
    return this.pending.size;
  }

  /** Generations that have delivered at least one token and not yet finished. */
  get streamingRequests(): number {
    let streaming = 0;
    for (const pending of this.pending.values()) if (pending.tokens.length > 0) streaming++;
    return streaming;
  }

  /** Drops every cached content of an adapter version (after it was deleted or replaced on disk). */
  evictAdapter(version: string): void {
    this.post({ type: 'evict-adapter', version });
  }

  /**
   * Loads an adapter version into the host cache ahead of its first request (a version just published), so that
   * request does not wait for the disk. Resolves once it is cached; rejects when it cannot be loaded.
   */
  preloadAdapter(ref: AdapterRef): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new EngineError('the engine is shutting down', 'shutting_down'));
    const id = this.nextId++;
    return new Promise<void>((resolve, reject) => {
      this.preloads.set(id, { resolve, reject });
      this.post({ type: 'preload-adapter', id, ref });
    });
  }

  /**
   * Has the loader make an adapter version's slot layout and keep it on disk (layout-cache.ts), in load turns no
   * request's load or prompt wants (LoadTurns.prepare), without caching it in memory, so its first request reads
   * the layout back ready instead of making it (a version just uploaded). Nothing is reported: a version that
   * cannot be loaded fails its first request. Without a layout cache there is nothing to keep, so nothing is done.
   */
  prepareLayout(ref: AdapterRef): void {
    if (this.options.adapterLayoutCache && !this.failure && !this.closed) this.post({ type: 'prepare-layout', ref });
  }

  /**
   * Stops the engine thread at its next step boundary, after it has reported that step, until step() or
   * resume(): nothing is sampled, cancelled or admitted meanwhile. It makes what the engine has done at a given
   * moment exact, independent of the machine's speed (tests and debugging rely on this).
   */
  pause(): void {
    Atomics.store(this.stepGate, 0, 0);
  }

  /** Resolves once the engine thread has stopped at a step boundary because it is paused. */
  whenPaused(): Promise<void> {
    if (this.isPaused) return Promise.resolve();
    return new Promise((resolve) => this.pausedWaiters.push(resolve));
  }

  /** While paused: runs one more step, and resolves once the engine thread has paused again after it. */
  step(): Promise<void> {
    this.isPaused = false;
    const paused = this.whenPaused();
    Atomics.add(this.stepGate, 0, 1);
    Atomics.notify(this.stepGate, 0);
    return paused;
  }

  resume(): void {
    this.isPaused = false;
    Atomics.store(this.stepGate, 0, RUN_FREELY);
    Atomics.notify(this.stepGate, 0);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.resume();
    if (this.exited) return;
    const exited = new Promise((resolve) => this.worker.once('exit', resolve));
    this.post({ type: 'shutdown' });
    await exited;
  }

  private post(message: ToWorker): void {
    this.worker.postMessage(message);
  }

  private receive(message: FromWorker): void {
    if (message.type === 'step') {
      for (const event of message.started) this.pending.get(event.id)?.request.onStart?.(event);
      for (const event of message.tokens) {
        const pending = this.pending.get(event.id);
        if (!pending) continue;
        pending.tokens.push(event.token);
        pending.request.onToken?.(event);
      }
      for (const event of message.finished) {
        const pending = this.settle(event.id);
        pending?.resolve({ reason: event.reason, promptTokens: event.promptTokens, completionTokens: event.completionTokens, tokens: pending.tokens });
      }
      for (const event of message.adapterCache) this.emit('adapter-cache', event);
      this.stats = message.stats;
      this.emit('stats', message.stats);
    } else if (message.type === 'sequence-failed') {
      this.settle(message.id)?.reject(new EngineError(message.message, message.code));
    } else if (message.type === 'adapter-preloaded') {
      const preload = this.preloads.get(message.id);
      this.preloads.delete(message.id);
      if (message.error === undefined) preload?.resolve();
      else preload?.reject(new EngineError(message.error, 'invalid_adapter'));
    } else if (message.type === 'paused') {
      this.isPaused = true;
      for (const resolve of this.pausedWaiters.splice(0)) resolve();
    }
  }

  private settle(id: number): Pending | undefined {
    const pending = this.pending.get(id);
    if (!pending) return undefined;
    this.pending.delete(id);
    pending.detach();
    return pending;
  }

  /** False once the engine thread has died (health checks report it so the process gets restarted). */
  get alive(): boolean {
    return this.failure === null;
  }

  private die(error: EngineError): void {
    if (!this.closed) this.failure ??= error;
    for (const id of [...this.pending.keys()]) this.settle(id)?.reject(error);
    for (const preload of this.preloads.values()) preload.reject(error);
    this.preloads.clear();
  }
}

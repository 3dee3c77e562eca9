/**
 * The engine as the HTTP thread sees it: submit token sequences, receive tokens as they are sampled.
 * The model, its session and the scheduler live on a worker thread (see engine-worker.ts).
 */
import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
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
  private nextId = 1;
  private closed = false;
  private exited = false;
  /** Set when the engine thread died: every request fails fast instead of waiting forever. */
  private failure: EngineError | null = null;
  /** The scheduler's state after its latest step. */
  stats: SchedulerStats;

  private constructor(
    private readonly worker: Worker,
    readonly info: ModelInfo,
    readonly options: EngineOptions,
  ) {
    super();
    this.stats = {
      running: 0,
      waiting: 0,
      kvCacheUsage: 0,
      runningAdapters: [],
      waitingAdapters: [],
      slots: { capacity: options.adapterSlots, resident: 0, bytes: 0, adapters: [] },
      host: { entries: 0, bytes: 0 },
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
    const worker = new Worker(workerEntry(), { workerData: options });
    return new Promise((resolve, reject) => {
      const onMessage = (message: FromWorker) => {
        if (message.type === 'ready') {
          worker.off('message', onMessage);
          worker.off('error', reject);
          resolve(new Engine(worker, message.info, options));
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

  /** Drops an adapter version from the engine's caches (after it was deleted or replaced on disk). */
  evictAdapter(key: string): void {
    this.post({ type: 'evict-adapter', key });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
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
  }
}

/**
 * The worker's entry point. Running from TypeScript sources, module loader hooks are per thread, so the
 * worker first registers tsx and then imports the TypeScript entry; compiled, it is the .js file itself.
 */
function workerEntry(): URL {
  if (!import.meta.url.endsWith('.ts')) return new URL('./engine-worker.js', import.meta.url);
  const entry = new URL('./engine-worker.ts', import.meta.url).href;
  const tsx = import.meta.resolve('tsx/esm/api');
  const bootstrap = `import { register } from ${JSON.stringify(tsx)}; register(); await import(${JSON.stringify(entry)});`;
  return new URL(`data:text/javascript,${encodeURIComponent(bootstrap)}`);
}

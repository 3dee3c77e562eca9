/**
 * The engine's adapter loader thread: cold adapters are read, verified, parsed, validated and laid out for a slot
 * there (adapter-loader-worker.ts), so none of that CPU work runs on the engine thread between steps. The finished
 * layout arrives by transfer; the engine only completes DoRA's scales (they need the base model's session) and
 * points a slot at the layout between steps. A thread that dies fails the loads in flight and is started again
 * for the next one.
 */
import { Worker } from 'node:worker_threads';
import type { LlamaConfig } from '../model/types.ts';
import type { SlotReadyAdapter } from '../runtime/slot-ready-adapter.ts';
import { AdapterLoadError, type AdapterLoadErrorCode, type LoadAdapter, type PhaseGate } from './adapter-loader.ts';
import type { LayoutCacheOptions } from './layout-cache.ts';
import type { AdapterRef } from './protocol.ts';
import { workerEntry } from './worker-entry.ts';

export interface LoaderThreadOptions {
  config: LlamaConfig;
  slotRank: number;
  /** Where slot layouts are kept between loads and starts; absent: none are kept. */
  layoutCache?: LayoutCacheOptions;
  /** How many buffers for layouts read back from the layout cache are faulted in ahead (read-buffers.ts); 0 if absent. */
  readBuffers?: number;
}

/**
 * A load to start (pausing between its phases when `phased`), a paused load to go on with, or the next piece of
 * the read buffers to fault in.
 */
export type LoaderRequest =
  | { type: 'load'; id: number; ref: AdapterRef; phased: boolean }
  | { type: 'continue'; id: number }
  | { type: 'prefault'; id: number; maxBytes: number };

/** A load's result or failure, word that it paused between two phases, or whether read buffers are left to fault in. */
export type LoaderReply =
  | { id: number; adapter: SlotReadyAdapter }
  | { id: number; message: string; code: AdapterLoadErrorCode }
  | { id: number; paused: true }
  | { id: number; more: boolean };

interface PendingLoad {
  resolve: (adapter: SlotReadyAdapter) => void;
  reject: (error: Error) => void;
  between?: PhaseGate;
}

export class AdapterLoaderThread {
  private worker: Worker | null = null;
  private readonly pending = new Map<number, PendingLoad>();
  /** Prefault pieces asked for: each resolves with whether more are left. */
  private readonly prefaults = new Map<number, (more: boolean) => void>();
  private nextId = 1;
  private closed = false;

  constructor(private readonly options: LoaderThreadOptions) {
    // Started now, not at the first cold request, so that request does not wait for the thread to boot.
    this.start();
  }

  readonly load: LoadAdapter = (ref, between) => {
    if (this.closed) return Promise.reject(new AdapterLoadError('the adapter loader is closed', 'adapter_unavailable'));
    const worker = this.worker ?? this.start();
    const id = this.nextId++;
    return new Promise<SlotReadyAdapter>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, between });
      worker.postMessage({ type: 'load', id, ref, phased: between !== undefined } satisfies LoaderRequest);
    });
  };

  /**
   * Faults in the next `maxBytes` of the loader's read buffers (read-buffers.ts); false once they are all ready,
   * or when the thread is not running (a thread started again fills its own while the engine is next idle).
   */
  readonly prefault = (maxBytes: number): Promise<boolean> => {
    const worker = this.worker;
    if (this.closed || !worker) return Promise.resolve(false);
    const id = this.nextId++;
    return new Promise<boolean>((resolve) => {
      this.prefaults.set(id, resolve);
      worker.postMessage({ type: 'prefault', id, maxBytes } satisfies LoaderRequest);
    });
  };

  async close(): Promise<void> {
    this.closed = true;
    const worker = this.worker;
    this.worker = null;
    this.failAll('the adapter loader is closed');
    await worker?.terminate();
  }

  private start(): Worker {
    const worker = new Worker(workerEntry(new URL('./adapter-loader-worker.ts', import.meta.url)), { workerData: this.options });
    // Loads in flight never keep the engine thread alive on their own.
    worker.unref();
    worker.on('message', (reply: LoaderReply) => {
      if ('more' in reply) {
        this.prefaults.get(reply.id)?.(reply.more);
        this.prefaults.delete(reply.id);
        return;
      }
      const load = this.pending.get(reply.id);
      if (!load) return;
      if ('paused' in reply) {
        // A thread that died meanwhile has failed the load already; its successor never heard of it.
        void load.between!().then(() => this.worker === worker && worker.postMessage({ type: 'continue', id: reply.id } satisfies LoaderRequest));
        return;
      }
      this.pending.delete(reply.id);
      if ('adapter' in reply) load.resolve(reply.adapter);
      else load.reject(new AdapterLoadError(reply.message, reply.code));
    });
    const stopped = (why: string) => {
      if (this.worker !== worker) return;
      this.worker = null;
      this.failAll(why);
    };
    worker.on('error', (error) => stopped(`the adapter loader thread crashed: ${error.message}`));
    worker.on('exit', (code) => stopped(`the adapter loader thread exited (code ${code})`));
    this.worker = worker;
    return worker;
  }

  private failAll(message: string): void {
    for (const load of this.pending.values()) load.reject(new AdapterLoadError(message, 'adapter_unavailable'));
    this.pending.clear();
    for (const done of this.prefaults.values()) done(false);
    this.prefaults.clear();
  }
}

/**
 * Loading adapters away from the engine's step loop. A loader thread reads an adapter version's files, verifies
 * them against the checksums of their manifest (the store lists versions without reading weights, so the first
 * load is where an altered file is caught), parses and validates them against the base model, and lays them out
 * for a runtime slot (slot-ready-adapter.ts). The engine thread receives the finished layout, moved without a
 * copy, and only copies it into a slot between steps.
 */
import { lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { AdapterError } from '../adapters/adapter-error.ts';
import { loadLoraAdapter } from '../adapters/lora.ts';
import type { LlamaConfig } from '../model/types.ts';
import { AlteredFileError, checkVersionFiles } from '../registry/version-verifier.ts';
import { layOutForSlot, type SlotReadyAdapter } from '../runtime/slot-ready-adapter.ts';
import type { AdapterRef } from './protocol.ts';
import { workerEntry } from './worker-entry.ts';

/** Why a load failed, as the engine reports it: the adapter is invalid, altered on disk, or could not be read. */
export type AdapterLoadErrorCode = 'invalid_adapter' | 'adapter_corrupt' | 'adapter_unavailable';

export class AdapterLoadError extends Error {
  constructor(
    message: string,
    readonly code: AdapterLoadErrorCode,
  ) {
    super(message);
    this.name = 'AdapterLoadError';
  }
}

export function loadErrorCode(error: unknown): AdapterLoadErrorCode {
  if (error instanceof AdapterLoadError) return error.code;
  if (error instanceof AlteredFileError) return 'adapter_corrupt';
  return error instanceof AdapterError ? 'invalid_adapter' : 'adapter_unavailable';
}

export type LoadAdapter = (ref: AdapterRef) => Promise<SlotReadyAdapter>;

/**
 * Loads one adapter version into slot layout on the calling thread. `verified` remembers, per version, the stat
 * identity of the files whose checksums were checked, so a reload of unchanged files does not hash them again.
 */
export async function prepareAdapter(
  ref: AdapterRef,
  config: LlamaConfig,
  slotRank: number,
  verified: Map<string, string>,
): Promise<SlotReadyAdapter> {
  if (ref.files) {
    const identity = await statIdentity(ref.path, Object.keys(ref.files));
    if (verified.get(ref.key) !== identity) {
      await checkVersionFiles(ref.path, ref.files);
      verified.set(ref.key, identity);
    }
  }
  const adapter = await loadLoraAdapter(ref.path, config);
  if (adapter.rank > slotRank) {
    throw new AdapterError('invalid_config', `adapter rank ${adapter.rank} exceeds this server's MAX_LORA_RANK of ${slotRank}`);
  }
  return layOutForSlot(config, slotRank, adapter);
}

async function statIdentity(dir: string, names: string[]): Promise<string> {
  const parts: string[] = [];
  for (const name of names) {
    const info = await lstat(join(dir, name)).catch(() => null);
    parts.push(info ? `${name}:${info.ino}:${info.size}:${info.mtimeMs}` : `${name}:-`);
  }
  return parts.join(',');
}

export interface LoaderRequest {
  id: number;
  ref: AdapterRef;
}

export type LoaderReply =
  | { id: number; adapter: SlotReadyAdapter }
  | { id: number; message: string; code: AdapterLoadErrorCode };

export interface LoaderThreadOptions {
  config: LlamaConfig;
  slotRank: number;
}

/** The client side of the loader thread. */
export class AdapterLoader {
  private worker?: Worker;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (adapter: SlotReadyAdapter) => void; reject: (error: Error) => void }>();

  constructor(private readonly options: LoaderThreadOptions) {}

  readonly load: LoadAdapter = (ref) =>
    new Promise((resolve, reject) => {
      const id = this.nextId++;
      this.pending.set(id, { resolve, reject });
      this.thread().postMessage({ id, ref } satisfies LoaderRequest);
    });

  /** Starts the thread ahead of the first load, so a cold adapter does not also wait for a thread to start. */
  start(): void {
    this.thread();
  }

  async close(): Promise<void> {
    await this.worker?.terminate();
    this.worker = undefined;
  }

  private thread(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(workerEntry(new URL('./adapter-loader-thread.ts', import.meta.url)), { workerData: this.options });
    worker.on('message', (reply: LoaderReply) => {
      const pending = this.pending.get(reply.id);
      this.pending.delete(reply.id);
      if ('adapter' in reply) pending?.resolve(reply.adapter);
      else pending?.reject(new AdapterLoadError(reply.message, reply.code));
    });
    const fail = (error: Error) => {
      this.worker = undefined;
      for (const [id, { reject }] of this.pending) {
        this.pending.delete(id);
        reject(new AdapterLoadError(`the adapter loader thread stopped: ${error.message}`, 'adapter_unavailable'));
      }
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`exit code ${code}`)));
    // The loader never keeps the process alive by itself.
    worker.unref();
    this.worker = worker;
    return worker;
  }
}

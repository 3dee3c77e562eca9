/**
 * Reading an adapter version to serve it. The store lists versions without reading weights, so the first load is
 * where an altered file is caught: the files are verified against their manifest's checksums (remembered by stat
 * identity, so a reload of unchanged files does not hash them again), then parsed and validated against the base
 * model, and laid out for a runtime slot; the layout is kept on disk (layout-cache.ts), so a later load of the same
 * unchanged files, in this process or after a restart, reads it back instead. The engine runs this on its loader
 * thread (adapter-loader-thread.ts).
 */
import { lstat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { AdapterError } from '../adapters/adapter-error.ts';
import { loadAdapter, type Adapter } from '../adapters/adapter.ts';
import { layOutForSlot, type SlotReadyAdapter } from '../runtime/slot-ready-adapter.ts';
import type { LlamaConfig } from '../model/types.ts';
import { AlteredFileError, readVersionFiles } from '../registry/version-verifier.ts';
import type { LayoutCache } from './layout-cache.ts';
import type { AdapterRef } from './protocol.ts';

/** Why a load failed, as the engine reports it: the adapter is invalid, altered on disk, or could not be read. */
export type AdapterLoadErrorCode = 'invalid_adapter' | 'adapter_corrupt' | 'adapter_unavailable';

/** A load that failed on another thread, with the code it failed with there. */
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

/**
 * Awaited between a load's phases (verifying the files, parsing and validating them, laying them out), so whoever
 * runs loads can spread one over several turns between the engine's passes (load-turns.ts).
 */
export type PhaseGate = () => Promise<void>;

/** Reads an adapter version and lays it out for a runtime slot, pausing at `between` from phase to phase. */
export type LoadAdapter = (ref: AdapterRef, between?: PhaseGate) => Promise<SlotReadyAdapter>;

/**
 * Reads one adapter version: checksums first (when the ref carries its manifest's files), then parse and validate
 * the very bytes whose checksums matched, read once. `verified` remembers, per version, the stat identity of the
 * files whose checksums were checked; a version read again with unchanged files is parsed from disk unhashed.
 */
export async function loadVerifiedAdapter(
  ref: AdapterRef,
  config: LlamaConfig,
  verified: Map<string, string>,
  between?: PhaseGate,
  identity?: string,
): Promise<Adapter> {
  if (ref.files) {
    identity ??= await statIdentity(ref.path, Object.keys(ref.files));
    if (verified.get(ref.key) !== identity) {
      const read = await readVersionFiles(ref.path, ref.files);
      verified.set(ref.key, identity);
      await between?.();
      return loadAdapter(ref.path, config, read);
    }
  }
  return loadAdapter(ref.path, config);
}

/**
 * A LoadAdapter running on this thread for one base model and slot rank, remembering which versions it verified.
 * With a layout cache, a version whose files are as they were when an earlier load verified and laid them out is
 * read back from it in one phase; any other version with a manifest is loaded in full and its layout kept there.
 */
export function adapterLoaderFor(config: LlamaConfig, slotRank: number, layouts?: LayoutCache): LoadAdapter {
  const verified = new Map<string, string>();
  return async (ref, between) => {
    const identity = ref.files && (await statIdentity(ref.path, Object.keys(ref.files)));
    const label = layouts && identity ? layouts.label({ key: ref.key, path: resolve(ref.path), files: ref.files, identity }) : undefined;
    const cached = label ? await layouts!.read(label) : undefined;
    if (cached) return cached;
    const adapter = await loadVerifiedAdapter(ref, config, verified, between, identity);
    await between?.();
    const ready = layOutForSlot(config, slotRank, adapter);
    if (label) layouts!.write(label, ready);
    return ready;
  };
}

async function statIdentity(dir: string, names: string[]): Promise<string> {
  const parts: string[] = [];
  for (const name of names) {
    const info = await lstat(join(dir, name)).catch(() => null);
    parts.push(info ? `${name}:${info.ino}:${info.size}:${info.mtimeMs}` : `${name}:-`);
  }
  return parts.join(',');
}

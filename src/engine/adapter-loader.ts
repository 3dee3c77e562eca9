/**
 * Reading an adapter version to serve it. The store lists versions without reading weights, so the first load is
 * where an altered file is caught: the files are verified against their manifest's checksums (remembered by stat
 * identity, so a reload of unchanged files does not hash them again), then parsed and validated against the base
 * model. The reads are asynchronous, so the engine's step loop keeps stepping while they run.
 */
import { lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { AdapterError } from '../adapters/adapter-error.ts';
import { loadAdapter, type Adapter } from '../adapters/adapter.ts';
import type { LlamaConfig } from '../model/types.ts';
import { AlteredFileError, checkVersionFiles } from '../registry/version-verifier.ts';
import type { AdapterRef } from './protocol.ts';

/** Why a load failed, as the engine reports it: the adapter is invalid, altered on disk, or could not be read. */
export type AdapterLoadErrorCode = 'invalid_adapter' | 'adapter_corrupt' | 'adapter_unavailable';

export function loadErrorCode(error: unknown): AdapterLoadErrorCode {
  if (error instanceof AlteredFileError) return 'adapter_corrupt';
  return error instanceof AdapterError ? 'invalid_adapter' : 'adapter_unavailable';
}

export type LoadAdapter = (ref: AdapterRef) => Promise<Adapter>;

/**
 * Reads one adapter version: checksums first (when the ref carries its manifest's files), then parse and validate.
 * `verified` remembers, per version, the stat identity of the files whose checksums were checked.
 */
export async function loadVerifiedAdapter(ref: AdapterRef, config: LlamaConfig, verified: Map<string, string>): Promise<Adapter> {
  if (ref.files) {
    const identity = await statIdentity(ref.path, Object.keys(ref.files));
    if (verified.get(ref.key) !== identity) {
      await checkVersionFiles(ref.path, ref.files);
      verified.set(ref.key, identity);
    }
  }
  return loadAdapter(ref.path, config);
}

/** A LoadAdapter for one base model, remembering which versions it verified. */
export function adapterLoaderFor(config: LlamaConfig): LoadAdapter {
  const verified = new Map<string, string>();
  return (ref) => loadVerifiedAdapter(ref, config, verified);
}

async function statIdentity(dir: string, names: string[]): Promise<string> {
  const parts: string[] = [];
  for (const name of names) {
    const info = await lstat(join(dir, name)).catch(() => null);
    parts.push(info ? `${name}:${info.ino}:${info.size}:${info.mtimeMs}` : `${name}:-`);
  }
  return parts.join(',');
}

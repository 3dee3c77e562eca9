/**
 * `visibility.json` beside an adapter's versions: whether tenants other than the owner may use it.
 */
import { join } from 'node:path';
import { writeFileAtomically } from '../storage/durable-files.ts';
import { VISIBILITY_FILE } from './adapter-names.ts';
import type { AdapterState } from './adapter-catalog.ts';
import { MAX_MANIFEST_BYTES } from './manifest.ts';
import { lstatIfPresent, parseJson, readSmallFile, statFingerprint } from './store-files.ts';

/**
 * Reads the file into the adapter's state, unless it is unchanged since last read; true when it read it. `listed`
 * false says a listing of the adapter's directory just found no such file, which spares the scan a system call per
 * adapter.
 */
export function readVisibility(state: AdapterState<unknown>, adapterDir: string, listed = true): boolean {
  const path = join(adapterDir, VISIBILITY_FILE);
  const fingerprint = statFingerprint(listed ? lstatIfPresent(path) : null);
  if (fingerprint === state.visibilityFingerprint) return false;
  let text: string | null = null;
  try {
    // No file (most adapters have none): nothing to read.
    if (fingerprint !== statFingerprint(null)) text = readSmallFile(path, MAX_MANIFEST_BYTES);
  } catch {
    // Unreadable: private, as below.
  }
  // Anything but a well-formed `{"public": true}` keeps the adapter private: the safe reading of a damaged file.
  state.isPublic = text !== null && parseJson(text)?.public === true;
  state.visibilityFingerprint = fingerprint;
  return true;
}

export async function writeVisibility(adapterDir: string, isPublic: boolean, stagingDir: string): Promise<void> {
  await writeFileAtomically(join(adapterDir, VISIBILITY_FILE), JSON.stringify({ public: isPublic }) + '\n', stagingDir);
}

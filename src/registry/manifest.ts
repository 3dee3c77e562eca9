/**
 * `manifest.json`, written last into every servable version directory: which files make the version, with their
 * sizes and checksums, and what the validator reported. README.md beside this file describes the format.
 */
import { createHash } from 'node:crypto';
import { ADAPTER_WEIGHTS_FILES } from '../adapters/adapter.ts';
import { ADAPTER_CONFIG_FILE } from '../adapters/peft-config.ts';
import { isJsonObject } from '../storage/json-files.ts';
import { StoreError } from './adapter-names.ts';
import { fileIn, lstatIfPresent, parseJson, statFingerprint, type FileDigest } from './store-files.ts';

export type { FileDigest } from './store-files.ts';

export const ADAPTER_README_FILE = 'README.md';
export const MANIFEST_FILE = 'manifest.json';
export const MAX_MANIFEST_BYTES = 1 << 20;

export const ADAPTER_FILES = new Set<string>([ADAPTER_CONFIG_FILE, ...ADAPTER_WEIGHTS_FILES, ADAPTER_README_FILE]);
/** What a version needs, in words: the config and one weights file, of whichever format the config is. */
export const REQUIRED_FILES_TEXT = `${ADAPTER_CONFIG_FILE} and ${ADAPTER_WEIGHTS_FILES.join(' (PEFT) or ')} (AdapterHub)`;

/** The required file a version lacks (the config, or any weights file), or null when it has them. */
export function missingRequiredFile(has: (name: string) => boolean): string | null {
  if (!has(ADAPTER_CONFIG_FILE)) return ADAPTER_CONFIG_FILE;
  return ADAPTER_WEIGHTS_FILES.some(has) ? null : ADAPTER_WEIGHTS_FILES.join(' or ');
}

/** `manifest.json` in every servable version directory. */
export interface Manifest<Summary = unknown> {
  version: string;
  /** ISO 8601; the newest one is an adapter's latest version. */
  publishedAt: string;
  files: Record<string, FileDigest>;
  /** What the validator reported; optional for external publishers, which do not run it. */
  summary?: Summary;
}

export function serializeManifest(manifest: Manifest): string {
  return JSON.stringify(manifest, null, 2) + '\n';
}

export function parseManifest(text: string, version: string): Manifest {
  return manifestFromJson(parseJson(text), version);
}

/** A manifest's fields checked, from JSON already parsed (a manifest file's, or a catalog snapshot's entry). */
export function manifestFromJson(value: Record<string, unknown> | null, version: string): Manifest {
  const fix = 'publish the version again, or delete the file to have the directory checked and adopted as it is';
  if (!value) throw new StoreError('invalid_file', `${MANIFEST_FILE} is not a JSON object; ${fix}`);
  if (value.version !== version) {
    throw new StoreError(
      'invalid_file',
      `${MANIFEST_FILE} names version ${JSON.stringify(value.version)} but lies in directory "${version}"; ${fix}`,
    );
  }
  const publishedAtMs = typeof value.publishedAt === 'string' ? Date.parse(value.publishedAt) : NaN;
  if (!Number.isFinite(publishedAtMs)) {
    throw new StoreError('invalid_file', `${MANIFEST_FILE} needs "publishedAt" as an ISO 8601 time; ${fix}`);
  }
  const files = value.files;
  if (!isJsonObject(files)) {
    throw new StoreError('invalid_file', `${MANIFEST_FILE} needs "files": {name: {size, sha256}}; ${fix}`);
  }
  const digests: Record<string, FileDigest> = {};
  for (const [name, digest] of Object.entries(files as Record<string, unknown>)) {
    if (!ADAPTER_FILES.has(name)) {
      const what = `${MANIFEST_FILE} lists ${JSON.stringify(name)}, which is not an adapter file`;
      throw new StoreError('invalid_file', `${what}; ${fix}`);
    }
    const { size, sha256 } = (digest ?? {}) as Partial<FileDigest>;
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0 || !/^[0-9a-f]{64}$/.test(sha256 ?? '')) {
      throw new StoreError('invalid_file', `${MANIFEST_FILE} needs {size, sha256 (64 hex digits)} for ${name}; ${fix}`);
    }
    digests[name] = { size, sha256: sha256 as string };
  }
  const missing = missingRequiredFile((name) => name in digests);
  if (missing) throw new StoreError('invalid_file', `${MANIFEST_FILE} does not list ${missing}; ${fix}`);
  return { version, publishedAt: new Date(publishedAtMs).toISOString(), files: digests, summary: value.summary };
}

/**
 * A short tag of a version's files, names and checksums: versions holding the same files share it, and a version
 * deleted and published again with other files under the same number gets another one.
 */
export function filesTag(files: Readonly<Record<string, FileDigest>>): string {
  const sorted = Object.entries(files).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return createHash('sha256').update(sorted.map(([name, { sha256 }]) => `${name}:${sha256}`).join('\n')).digest('hex').slice(0, 16);
}

export function sameFiles(a: Record<string, FileDigest>, b: Record<string, FileDigest>): boolean {
  const names = Object.keys(a);
  return (
    names.length === Object.keys(b).length &&
    names.every((name) => b[name]?.sha256 === a[name].sha256 && b[name].size === a[name].size)
  );
}

/**
 * Stat identity (inode, size, mtime) of files of a version directory by name, to tell on a later scan whether they
 * changed. A servable version is fingerprinted by its manifest and the files the manifest lists (`servedFiles`),
 * which the check that listed it looked at anyway; a version that is not servable by every adapter file and the
 * manifest, since any of them appearing or changing may make it servable.
 */
export type FileStats = ReadonlyMap<string, string>;

export function statFiles(dir: string, names: Iterable<string>): Map<string, string> {
  const stats = new Map<string, string>();
  for (const name of names) stats.set(name, statFingerprint(lstatIfPresent(fileIn(dir, name))));
  return stats;
}

/** Every adapter file's and the manifest's stat identity; null when the directory is gone. */
export function fingerprintVersion(dir: string): FileStats | null {
  if (!lstatIfPresent(dir)?.isDirectory()) return null;
  return statFiles(dir, [...ADAPTER_FILES, MANIFEST_FILE]);
}

/** The files whose stat identity stands for a servable version: its manifest and the files it lists. */
export function servedFiles(files: Readonly<Record<string, FileDigest>>): string[] {
  return [MANIFEST_FILE, ...Object.keys(files).sort()];
}

export function joinFingerprint(stats: FileStats, names: Iterable<string> = stats.keys()): string {
  const parts: string[] = [];
  for (const name of names) parts.push(`${name}=${stats.get(name) ?? '-'}`);
  return parts.join(',');
}

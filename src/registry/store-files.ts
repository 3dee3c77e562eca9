/**
 * File-system primitives of the adapter store: opening files without following links, digests, small reads,
 * stat fingerprints and listing. They know nothing about adapters.
 */
import { createHash } from 'node:crypto';
import { constants, type Dirent } from 'node:fs';
import { lstat, open, readdir, type FileHandle } from 'node:fs/promises';
import { isAbsolute, join, relative, sep } from 'node:path';
import { isJsonObject } from '../storage/json-files.ts';
import { StoreError } from './adapter-names.ts';

export interface FileDigest {
  size: number;
  sha256: string;
}

/** Opens without following a symbolic link, so a link planted in a version directory cannot point outside. */
async function openRegularFile(path: string): Promise<{ handle: FileHandle; size: number } | null> {
  let handle: FileHandle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return null;
    if (errorCode(err) === 'ELOOP') {
      throw new StoreError('unsafe_path', `${path} is a symbolic link; put the file itself in the version directory`);
    }
    throw err;
  }
  const info = await handle.stat();
  if (!info.isFile()) {
    await handle.close();
    throw new StoreError('invalid_file', `${path} is not a regular file`);
  }
  return { handle, size: info.size };
}

export function digestBytes(data: Uint8Array): FileDigest {
  return { size: data.byteLength, sha256: createHash('sha256').update(data).digest('hex') };
}

export async function digestFile(path: string): Promise<FileDigest | null> {
  const opened = await openRegularFile(path);
  if (!opened) return null;
  const { handle } = opened;
  try {
    const hash = createHash('sha256');
    const buffer = Buffer.allocUnsafe(1 << 20);
    let size = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, null);
      if (bytesRead === 0) break;
      hash.update(buffer.subarray(0, bytesRead));
      size += bytesRead;
    }
    return { size, sha256: hash.digest('hex') };
  } finally {
    await handle.close();
  }
}

export async function readSmallFile(path: string, maxBytes: number): Promise<string | null> {
  const opened = await openRegularFile(path);
  if (!opened) return null;
  try {
    if (opened.size > maxBytes) throw new StoreError('invalid_file', `${path} is larger than ${maxBytes} bytes`);
    return await opened.handle.readFile('utf8');
  } finally {
    await opened.handle.close();
  }
}

export function parseJson(text: string): Record<string, unknown> | null {
  try {
    const value: unknown = JSON.parse(text);
    return isJsonObject(value) ? value : null;
  } catch {
    return null;
  }
}

export function isInside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel !== '' && rel !== '..' && !rel.startsWith(`..${sep}`) && !isAbsolute(rel);
}

export function statFingerprint(info: { ino: number; size: number; mtimeMs: number; isFile(): boolean } | null): string {
  return info ? `${info.isFile() ? 'f' : 'x'}:${info.ino}:${info.size}:${info.mtimeMs}` : '-';
}

/** The latest modification of an entry or of anything directly inside it; null if it is gone. */
export async function newestMtime(path: string): Promise<number | null> {
  const info = await lstat(path).catch(ignoreMissing);
  if (!info) return null;
  let newest = info.mtimeMs;
  if (info.isDirectory()) {
    for (const entry of await readdirIfPresent(path)) {
      const child = await lstat(join(path, entry.name)).catch(ignoreMissing);
      if (child) newest = Math.max(newest, child.mtimeMs);
    }
  }
  return newest;
}

export async function readdirIfPresent(path: string): Promise<Dirent[]> {
  try {
    return await readdir(path, { withFileTypes: true });
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return [];
    throw err;
  }
}

export async function pathExists(path: string): Promise<boolean> {
  return (await lstat(path).catch(ignoreMissing)) !== null;
}

export function ignoreMissing(err: unknown): null {
  if (errorCode(err) === 'ENOENT') return null;
  throw err;
}

export function errorCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | null)?.code;
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

/**
 * File-system primitives of the adapter store: opening files without following links, digests, small reads,
 * stat fingerprints and listing. They know nothing about adapters.
 *
 * Listing, stat fingerprints and small reads are synchronous: a scan makes a handful of such calls per stored
 * version (see store-scanner.ts), and through the promise API each one is a trip to libuv's thread pool that costs several times the
 * system call itself (10,000 `lstat`s measured 1.1–1.8 s one after another with promises, 0.4 s synchronously,
 * on a loaded machine). The scanner yields to the event loop between slices of work (see store-scanner.ts).
 */
import { createHash } from 'node:crypto';
import { closeSync, constants, fstatSync, lstatSync, openSync, readdirSync, readSync, type Dirent, type Stats } from 'node:fs';
import { lstat, open, type FileHandle } from 'node:fs/promises';
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

/** A whole file's bytes, opened without following a link; null when it does not exist. */
export async function readRegularFile(path: string): Promise<Buffer | null> {
  const opened = await openRegularFile(path);
  if (!opened) return null;
  try {
    return await opened.handle.readFile();
  } finally {
    await opened.handle.close();
  }
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

/** A small file's text (a manifest, a config), opened without following a link; null when it does not exist. */
export function readSmallFile(path: string, maxBytes: number): string | null {
  return readSmallFileWithStats(path, maxBytes)?.text ?? null;
}

/** readSmallFile, with the stat of the file that was read (the open file's, so it describes exactly that text). */
export function readSmallFileWithStats(path: string, maxBytes: number): { text: string; info: Stats } | null {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return null;
    if (errorCode(err) === 'ELOOP') {
      throw new StoreError('unsafe_path', `${path} is a symbolic link; put the file itself in the version directory`);
    }
    throw err;
  }
  try {
    const info = fstatSync(fd);
    if (!info.isFile()) throw new StoreError('invalid_file', `${path} is not a regular file`);
    if (info.size > maxBytes) throw new StoreError('invalid_file', `${path} is larger than ${maxBytes} bytes`);
    const buffer = Buffer.allocUnsafe(info.size);
    let filled = 0;
    while (filled < buffer.length) {
      const read = readSync(fd, buffer, filled, buffer.length - filled, null);
      if (read === 0) break;
      filled += read;
    }
    return { text: buffer.toString('utf8', 0, filled), info };
  } finally {
    closeSync(fd);
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

/**
 * A plain file name inside a directory whose path is already normal (built by StoreLayout.pathInside): the same as
 * `join`, without normalising again, which scans do a few times per stored version.
 */
export function fileIn(dir: string, name: string): string {
  return dir + sep + name;
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
    for (const entry of readdirIfPresent(path)) {
      const child = await lstat(join(path, entry.name)).catch(ignoreMissing);
      if (child) newest = Math.max(newest, child.mtimeMs);
    }
  }
  return newest;
}

export function readdirIfPresent(path: string): Dirent[] {
  try {
    return readdirSync(path, { withFileTypes: true });
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return [];
    throw err;
  }
}

/** lstat, or null when nothing is there. */
export function lstatIfPresent(path: string): Stats | null {
  return lstatSync(path, { throwIfNoEntry: false }) ?? null;
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

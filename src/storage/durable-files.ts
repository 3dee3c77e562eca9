/**
 * File writes that survive crashes: data is flushed before it becomes visible under its final name, so a
 * reader (or a restart) sees either the old file or the complete new one, never a partial write.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** Writes a file and flushes it to disk, so a rename that follows can never expose a partly written file. */
export async function writeDurably(path: string, data: Uint8Array | string): Promise<void> {
  const handle = await open(path, 'w');
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Flushes a directory's entries (a rename or a new file in it) to disk. */
export async function syncDirectory(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Replaces `path` in one step through a temporary file in `tempDir` (default: beside the target; it must be on
 * the same filesystem for the rename to be atomic).
 */
export async function writeFileAtomically(path: string, data: Uint8Array | string, tempDir = dirname(path)): Promise<void> {
  const temporary = join(tempDir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    await writeDurably(temporary, data);
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
  await syncDirectory(dirname(path));
}

/**
 * Whether every file named in `sizes` lies in `dir` with that many bytes: how a cache entry renamed into place
 * complete, its sizes recorded, is told from one cut short or missing a file since.
 */
export async function filesHaveSizes(dir: string, sizes: Record<string, number>): Promise<boolean> {
  for (const [name, size] of Object.entries(sizes)) {
    const info = await stat(join(dir, name)).catch(() => null);
    if (info?.size !== size) return false;
  }
  return true;
}

/**
 * A digest of the source that makes a cache's entries, so a cache keyed on it is rebuilt when that code changes
 * instead of serving what older code made.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const SOURCE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** sha256 over `paths` (relative to src/): a directory stands for its .ts files, in name order. */
export function sourceDigest(paths: readonly string[]): string {
  const hash = createHash('sha256');
  for (const path of paths) {
    const full = join(SOURCE_ROOT, path);
    const files = statSync(full).isDirectory()
      ? readdirSync(full)
          .filter((name) => name.endsWith('.ts'))
          .sort()
          .map((name) => join(path, name))
      : [path];
    for (const file of files) hash.update(`${file}\n`).update(readFileSync(join(SOURCE_ROOT, file)));
  }
  return hash.digest('hex');
}

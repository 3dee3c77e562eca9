/**
 * Where the store keeps things under ADAPTERS_DIR, and the last check that a path built from names stays inside it.
 */
import { mkdir, realpath } from 'node:fs/promises';
import { join, resolve, sep } from 'node:path';
import { StoreError } from './adapter-names.ts';

const STAGING_DIR = '.staging';
const TRASH_DIR = '.trash';

export class StoreLayout {
  readonly root: string;
  /** Versions being written; renamed into place when complete. */
  readonly stagingDir: string;
  /** Deleted trees on their way out. */
  readonly trashDir: string;
  /** The root with symbolic links resolved; known once `prepare()` resolved. */
  realRoot = '';
  private prepared?: Promise<void>;

  constructor(root: string) {
    this.root = resolve(root);
    this.stagingDir = join(this.root, STAGING_DIR);
    this.trashDir = join(this.root, TRASH_DIR);
  }

  /** Creates the store's own directories (and the root) once; retried on the next call if it failed. */
  prepare(): Promise<void> {
    this.prepared ??= (async () => {
      await mkdir(this.stagingDir, { recursive: true });
      await mkdir(this.trashDir, { recursive: true });
      this.realRoot = await realpath(this.root);
    })().catch((err) => {
      this.prepared = undefined;
      throw err;
    });
    return this.prepared;
  }

  /**
   * Names are validated before they get here; this is the last check that a path stays inside ADAPTERS_DIR. Each
   * segment must be one plain name, so the path is the root and the segments joined, with nothing to normalise (a
   * scan builds one or two paths per stored version, and resolving each was a measurable part of start-up).
   */
  pathInside(...segments: [string, ...string[]]): string {
    if (!segments.every(isPlainName)) {
      const path = resolve(this.root, ...segments);
      throw new StoreError('unsafe_path', `refusing path ${path}: it is not a name inside ADAPTERS_DIR ${this.root}`);
    }
    return (this.root.endsWith(sep) ? this.root : this.root + sep) + segments.join(sep);
  }
}

/** One directory entry's name: joined to a directory, it names a child of it and nothing else. */
function isPlainName(segment: string): boolean {
  return segment !== '' && segment !== '.' && segment !== '..' && !segment.includes('/') && !segment.includes(sep) && !segment.includes('\0');
}

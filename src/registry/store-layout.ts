/**
 * Where the store keeps things under ADAPTERS_DIR, and the last check that a path built from names stays inside it.
 */
import { mkdir, realpath } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { StoreError } from './adapter-names.ts';
import { isInside } from './store-files.ts';

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

  /** Names are validated before they get here; this is the last check that a path stays inside ADAPTERS_DIR. */
  pathInside(...segments: string[]): string {
    const path = resolve(this.root, ...segments);
    if (!isInside(this.root, path)) {
      throw new StoreError('unsafe_path', `refusing path ${path}: it is outside ADAPTERS_DIR ${this.root}`);
    }
    return path;
  }
}

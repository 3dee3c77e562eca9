/**
 * Slot layouts kept on disk (slot-layout-file.ts), so a cold adapter version that was loaded once, by this process
 * or an earlier one, is read back ready to copy into a slot: one read of page-cached bytes and a header check,
 * instead of verifying its checksums, parsing and validating it and laying it out again: for an r=16 adapter of
 * SmolLM2-135M's shape, about 8 ms instead of 62–64 (src/engine/README.md, "Layouts kept on disk").
 *
 * An entry is named by a hash of what the layout was made from: the version's key and path, its manifest's
 * checksums and its files' stat identity (inode, size, modification time) when they were verified, the base
 * model's config, the slot rank and the source of the code that lays adapters out. A file changed on disk has a
 * new identity, so its old layout is never read for it; such a version is verified again on its next load. The
 * cache holds at most `maxBytes`: writing past that removes the least recently used entries. Entries are written
 * through a temporary file and a rename; one that fails its check when read is removed and made again. The
 * directory may be deleted at any time.
 */
import { createHash } from 'node:crypto';
import { mkdir, open, readdir, rm, stat, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import type { LlamaConfig } from '../model/types.ts';
import { readSlotLayout, serializeSlotLayout } from '../runtime/slot-layout-file.ts';
import type { SlotReadyAdapter } from '../runtime/slot-ready-adapter.ts';
import { sourceDigest } from '../runtime/source-digest.ts';
import { writeFileAtomically } from '../storage/durable-files.ts';

export interface LayoutCacheOptions {
  dir: string;
  maxBytes: number;
}

/** How an entry's file name ends (the rest is a hash of its label). */
export const ENTRY_SUFFIX = '.layout.safetensors';

let layoutCodeHash: string | undefined;

/** The code whose output an entry is: adapter parsing and validation, the slot layout and its file format. */
function layoutCode(): string {
  layoutCodeHash ??= sourceDigest([
    'adapters',
    'graph',
    'formats',
    'runtime/slot-layout.ts',
    'runtime/slot-writer.ts',
    'runtime/slot-ready-adapter.ts',
    'runtime/slot-layout-file.ts',
  ]);
  return layoutCodeHash;
}

export class LayoutCache {
  /** Entries by file name with their sizes, least recently used first; filled by the first look at the directory. */
  private readonly entries = new Map<string, number>();
  private totalBytes = 0;
  private readonly listed: Promise<void>;
  /** Writes run one after another, off the load that asked for them. */
  private writes: Promise<void> = Promise.resolve();

  constructor(
    private readonly options: LayoutCacheOptions,
    private readonly config: LlamaConfig,
    private readonly slotRank: number,
    /** A buffer faulted in ahead for a file of this many bytes, when there is one (read-buffers.ts). */
    private readonly takeBuffer?: (bytes: number) => Uint8Array | undefined,
  ) {
    this.listed = this.list().catch(() => undefined);
  }

  /** What a layout made now from these files would be made from; the entry's name is its hash. */
  label(made: { key: string; path: string; files: unknown; identity: string }): string {
    return JSON.stringify({ ...made, config: this.config, slotRank: this.slotRank, code: layoutCode() });
  }

  /** The layout made from `label`, or undefined when there is none (or it fails its check, and is removed). */
  async read(label: string): Promise<SlotReadyAdapter | undefined> {
    const name = entryName(label);
    const path = join(this.options.dir, name);
    let bytes: Uint8Array;
    try {
      bytes = await readWhole(path, this.takeBuffer);
    } catch {
      return undefined;
    }
    try {
      const ready = readSlotLayout(bytes, label, this.config, this.slotRank);
      this.touch(name, bytes.byteLength);
      const now = new Date();
      void utimes(path, now, now).catch(() => undefined);
      return ready;
    } catch {
      this.forget(name);
      await rm(path, { force: true });
      return undefined;
    }
  }

  /**
   * Keeps `ready` as the layout made from `label`. The file's bytes are taken now, before the layout's buffers move
   * to the engine thread; writing them happens later, and a write that fails only costs a later load its time.
   */
  write(label: string, ready: SlotReadyAdapter): void {
    if (ready.doraPending || ready.byteSize > this.options.maxBytes) return;
    const bytes = serializeSlotLayout(ready, label);
    const name = entryName(label);
    this.writes = this.writes.then(() => this.store(name, bytes)).catch(() => undefined);
  }

  /** Resolves once every write asked for so far has ended. */
  settled(): Promise<void> {
    return this.writes;
  }

  private async store(name: string, bytes: Uint8Array): Promise<void> {
    await this.listed;
    await mkdir(this.options.dir, { recursive: true });
    await writeFileAtomically(join(this.options.dir, name), bytes);
    this.touch(name, bytes.byteLength);
    for (const oldest of [...this.entries.keys()]) {
      if (this.totalBytes <= this.options.maxBytes) break;
      if (oldest === name) continue;
      this.forget(oldest);
      await rm(join(this.options.dir, oldest), { force: true });
    }
  }

  /** Reads the directory once: its entries, oldest use first, and no temporary file a crash left behind. */
  private async list(): Promise<void> {
    const names = await readdir(this.options.dir).catch(() => [] as string[]);
    const found: { name: string; size: number; used: number }[] = [];
    for (const name of names) {
      const path = join(this.options.dir, name);
      if (name.startsWith('.') && name.endsWith('.tmp')) await rm(path, { force: true });
      if (!name.endsWith(ENTRY_SUFFIX)) continue;
      const info = await stat(path).catch(() => null);
      if (info?.isFile()) found.push({ name, size: info.size, used: info.mtimeMs });
    }
    found.sort((a, b) => a.used - b.used);
    // Entries read or written while the directory was being listed are the most recent: they go last.
    const meanwhile = [...this.entries];
    this.entries.clear();
    this.totalBytes = 0;
    for (const { name, size } of found) this.touch(name, size);
    for (const [name, size] of meanwhile) this.touch(name, size);
  }

  private touch(name: string, size: number): void {
    this.forget(name);
    this.entries.set(name, size);
    this.totalBytes += size;
  }

  private forget(name: string): void {
    const size = this.entries.get(name);
    if (size === undefined) return;
    this.entries.delete(name);
    this.totalBytes -= size;
  }
}

const entryName = (label: string) => `${createHash('sha256').update(label).digest('hex').slice(0, 40)}${ENTRY_SUFFIX}`;

/**
 * The file's bytes at the start of a buffer of their own (the layout's arrays become views of it, and it moves to
 * the engine thread with them), read in as few reads as the kernel allows: readFile's 512 KiB chunks, each a trip
 * through the thread pool, took twice as long for an 18.7 MiB layout.
 */
async function readWhole(path: string, takeBuffer?: (bytes: number) => Uint8Array | undefined): Promise<Uint8Array> {
  const handle = await open(path, 'r');
  try {
    const { size } = await handle.stat();
    const bytes = takeBuffer?.(size) ?? new Uint8Array(size);
    for (let offset = 0; offset < size; ) {
      const { bytesRead } = await handle.read(bytes, offset, size - offset, offset);
      if (bytesRead === 0) throw new Error('the file ended early');
      offset += bytesRead;
    }
    return bytes;
  } finally {
    await handle.close();
  }
}

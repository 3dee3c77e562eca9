/**
 * Buffers for the slot layouts the adapter loader reads back from disk (layout-cache.ts), allocated and faulted in
 * ahead while the engine is idle. A layout read into a new buffer pays the kernel for zero-filling every page at
 * its first write, about 3 ms per MiB on this kind of virtual machine: 17–33 ms for an r=16 layout of the
 * SmolLM2-135M shape (19.5 MB), 3.3–4.3 ms into memory written before. A burst of cold requests on a fresh
 * gateway reads one such layout per adapter, and its load turns hold the burst's prompts back meanwhile.
 *
 * The buffers are as large as a layout of every LoRA module (the largest a load reads back: all of them have one
 * size at the slot rank, whatever the adapter's own rank), with room for the file's header, and only such
 * layouts take one; a smaller file would hold the buffer's rest unused. A buffer taken moves to the engine thread
 * with its layout and is not given back: the pool is filled again, to `count`, while the engine is next idle.
 */
import { Prefault } from '../runtime/prefault.ts';

/** Room for a layout file's header (its JSON: a label and one entry per block, about 21 KB for the 135M shape). */
const HEADER_ROOM = 64 * 1024;

export class ReadBuffers {
  private readonly ready: ArrayBuffer[] = [];
  private filling: { buffer: ArrayBuffer; prefault: Prefault } | null = null;
  /** Bytes of each buffer. */
  readonly size: number;

  constructor(
    private readonly count: number,
    /** Bytes of the weights of a layout with every LoRA module (its blocks, without the file's header). */
    fullLayoutBytes: number,
  ) {
    this.size = fullLayoutBytes + HEADER_ROOM;
  }

  /** Buffers faulted in and not yet taken. */
  get available(): number {
    return this.ready.length;
  }

  /**
   * A faulted-in buffer for a file of `bytes` bytes, as a view of its start; undefined when none is ready or the
   * file is no layout of every LoRA module.
   */
  take(bytes: number): Uint8Array | undefined {
    if (bytes > this.size || bytes <= this.size - HEADER_ROOM) return undefined;
    const buffer = this.ready.pop();
    return buffer && new Uint8Array(buffer, 0, bytes);
  }

  /** Allocates and faults in up to `maxBytes` more of the pool; false once it holds `count` buffers. */
  prefault(maxBytes: number): boolean {
    if (!this.filling) {
      if (this.ready.length >= this.count) return false;
      const buffer = new ArrayBuffer(this.size);
      this.filling = { buffer, prefault: new Prefault(new Uint8Array(buffer)) };
    }
    if (!this.filling.prefault.step(maxBytes)) {
      this.ready.push(this.filling.buffer);
      this.filling = null;
    }
    return true;
  }
}

/**
 * Faults in the pages of a large buffer ahead of use, a piece at a time, so that the engine's first busy steps do
 * not pay for them. Memory this large is mapped untouched and the kernel zero-fills each page at its first write,
 * which on this kind of virtual machine costs about 3 ms per MiB: copying an r=16 adapter of the SmolLM2-135M shape
 * (19.5 MB) into untouched adapter stacks took 60 ms, into touched ones 3 ms, and a fresh engine's first burst of
 * 16 adapter requests took twice as long as the next (src/engine/README.md, "Memory faulted in ahead").
 *
 * Why pieces, on the engine thread: onnxruntime takes no shared memory as input, so another thread could fault the
 * pages in only while the engine cannot use the buffer, that is during start-up, where it doubled the time the
 * sessions took to build (faults of one process contend). The engine's idle moments cost nothing.
 */

const PAGE_BYTES = 4096;

export class Prefault {
  /** Bytes of the buffer from its start whose pages have been written. */
  private touched = 0;

  constructor(private readonly bytes: Uint8Array) {}

  get done(): boolean {
    return this.touched >= this.bytes.length;
  }

  /** Writes each page of the next `maxBytes` once, leaving every value as it was; false once none are left. */
  step(maxBytes: number): boolean {
    const end = Math.min(this.bytes.length, this.touched + maxBytes);
    for (let i = this.touched; i < end; i += PAGE_BYTES) this.bytes[i] = this.bytes[i];
    this.touched = end;
    return !this.done;
  }
}

/**
 * The adapter loader thread's own side (see adapter-loader-thread.ts): reads, verifies, parses, validates and lays
 * out adapters for a slot as the engine asks for them, pausing between phases when asked to (the engine runs
 * phases in turns between its passes: load-turns.ts), and moves each finished layout to the engine thread without
 * copying it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { loadAdapter } from '../adapters/adapter.ts';
import { loraAdapterFiles, randomLoraAdapter } from '../adapters/lora-writer.ts';
import { LORA_TARGET_MODULES } from '../model/types.ts';
import { layOutForSlot, transferList } from '../runtime/slot-ready-adapter.ts';
import { adapterLoaderFor, loadErrorCode } from './adapter-loader.ts';
import type { LoaderReply, LoaderRequest, LoaderThreadOptions } from './adapter-loader-thread.ts';
import { LayoutCache } from './layout-cache.ts';
import { ReadBuffers } from './read-buffers.ts';

const { config, slotRank, layoutCache, readBuffers: readBufferCount = 0 } = workerData as LoaderThreadOptions;
const port = parentPort!;
/** Set once the warm-up knows how large a layout of every LoRA module is. */
let readBuffers: ReadBuffers | undefined;
const load = adapterLoaderFor(config, slotRank, layoutCache && new LayoutCache(layoutCache, config, slotRank, (bytes) => readBuffers?.take(bytes)));
/** The rank of the adapter the thread warms up on: enough for every loop to run hot, however large the slots. */
const WARM_UP_RANK = 16;

/**
 * Parses, validates and lays out a generated adapter held in memory, once, as the thread starts (beside the
 * engine's session creation). A fresh thread's first loads of an r=16 adapter of SmolLM2-135M's shape took 380–425
 * and 113–152 ms, later ones about 80 (the code not yet optimized), and a burst of cold requests right after start
 * queued behind them.
 */
async function warmUp(): Promise<void> {
  const generated = loraAdapterFiles(randomLoraAdapter(config, { rank: Math.min(slotRank, WARM_UP_RANK), targetModules: [...LORA_TARGET_MODULES], seed: 1 }));
  const files = new Map([...generated].map(([name, bytes]) => [name, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)]));
  const ready = layOutForSlot(config, slotRank, await loadAdapter('generated warm-up adapter', config, files));
  // Its layout has every LoRA module, padded to the slot rank as every layout is: the largest a load reads back.
  if (layoutCache && readBufferCount > 0) readBuffers = new ReadBuffers(readBufferCount, ready.byteSize);
}
// A warm-up that fails costs only the speed it is for; real loads report their own errors.
const warmedUp = warmUp().catch(() => undefined);

/** Loads paused between two phases: each goes on when the engine says so. */
const paused = new Map<number, () => void>();

port.on('message', (request: LoaderRequest) => {
  if (request.type === 'prefault') {
    void warmedUp.then(() => port.postMessage({ id: request.id, more: readBuffers?.prefault(request.maxBytes) ?? false } satisfies LoaderReply));
    return;
  }
  if (request.type === 'continue') {
    paused.get(request.id)?.();
    paused.delete(request.id);
    return;
  }
  const { id, ref, phased } = request;
  const between = phased
    ? () =>
        new Promise<void>((resume) => {
          paused.set(id, resume);
          port.postMessage({ id, paused: true } satisfies LoaderReply);
        })
    : undefined;
  load(ref, between).then(
    (adapter) => port.postMessage({ id, adapter } satisfies LoaderReply, transferList(adapter)),
    (error: Error) => port.postMessage({ id, message: error.message, code: loadErrorCode(error) } satisfies LoaderReply),
  );
});

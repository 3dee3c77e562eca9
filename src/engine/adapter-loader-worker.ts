/**
 * The adapter loader thread's own side (see adapter-loader-thread.ts): reads, verifies, parses, validates and lays
 * out adapters for a slot, and moves each finished layout to the engine thread without copying it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { transferList } from '../runtime/slot-ready-adapter.ts';
import { adapterLoaderFor, loadErrorCode } from './adapter-loader.ts';
import type { LoaderReply, LoaderRequest, LoaderThreadOptions } from './adapter-loader-thread.ts';

const { config, slotRank } = workerData as LoaderThreadOptions;
const port = parentPort!;
const load = adapterLoaderFor(config, slotRank);

port.on('message', async ({ id, ref }: LoaderRequest) => {
  try {
    const adapter = await load(ref);
    port.postMessage({ id, adapter } satisfies LoaderReply, transferList(adapter));
  } catch (error) {
    port.postMessage({ id, message: (error as Error).message, code: loadErrorCode(error) } satisfies LoaderReply);
  }
});

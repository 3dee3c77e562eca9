/**
 * The adapter loader thread (see adapter-loader.ts): reads, verifies, parses, validates and lays out adapters, and
 * moves each finished layout to the engine thread without copying it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { loadErrorCode, prepareAdapter, type LoaderReply, type LoaderRequest, type LoaderThreadOptions } from './adapter-loader.ts';

const { config, slotRank } = workerData as LoaderThreadOptions;
const port = parentPort!;
const verified = new Map<string, string>();

port.on('message', async ({ id, ref }: LoaderRequest) => {
  try {
    const adapter = await prepareAdapter(ref, config, slotRank, verified);
    const buffers = [...adapter.blocks.values()].map((block) => block.buffer as ArrayBuffer);
    port.postMessage({ id, adapter } satisfies LoaderReply, buffers);
  } catch (error) {
    port.postMessage({ id, message: (error as Error).message, code: loadErrorCode(error) } satisfies LoaderReply);
  }
});

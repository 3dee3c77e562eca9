/**
 * The adapter loader thread's own side (see adapter-loader-thread.ts): reads, verifies, parses, validates and lays
 * out adapters for a slot, one after another (load-queue.ts), and moves each finished layout to the engine thread
 * without copying it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { transferList } from '../runtime/slot-ready-adapter.ts';
import { adapterLoaderFor, loadErrorCode } from './adapter-loader.ts';
import type { LoaderReply, LoaderRequest, LoaderThreadOptions } from './adapter-loader-thread.ts';
import { LoadQueue } from './load-queue.ts';

const { config, slotRank } = workerData as LoaderThreadOptions;
const port = parentPort!;
const load = adapterLoaderFor(config, slotRank);
const queue = new LoadQueue();

port.on('message', ({ id, ref }: LoaderRequest) =>
  queue.run(() => load(ref)).then(
    (adapter) => port.postMessage({ id, adapter } satisfies LoaderReply, transferList(adapter)),
    (error: Error) => port.postMessage({ id, message: error.message, code: loadErrorCode(error) } satisfies LoaderReply),
  ),
);

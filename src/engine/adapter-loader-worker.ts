/**
 * The adapter loader thread's own side (see adapter-loader-thread.ts): reads, verifies, parses, validates and lays
 * out adapters for a slot as the engine asks for them, pausing between phases when asked to (the engine runs
 * phases in turns between its passes: load-turns.ts), and moves each finished layout to the engine thread without
 * copying it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { transferList } from '../runtime/slot-ready-adapter.ts';
import { adapterLoaderFor, loadErrorCode } from './adapter-loader.ts';
import type { LoaderReply, LoaderRequest, LoaderThreadOptions } from './adapter-loader-thread.ts';

const { config, slotRank } = workerData as LoaderThreadOptions;
const port = parentPort!;
const load = adapterLoaderFor(config, slotRank);
/** Loads paused between two phases: each goes on when the engine says so. */
const paused = new Map<number, () => void>();

port.on('message', (request: LoaderRequest) => {
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

/**
 * The sidecar's side of the IPC channel a gateway opens when it runs the sidecar as its child (TRAINER=child): the
 * sidecar announces each finished job's published adapter, and the gateway answers once it has loaded the version
 * into its engine's host cache. The job says `succeeded` only after that answer (or after PRELOAD_WAIT_MS), so
 * the first chat on the new model does not pay for reading the adapter from disk. The gateway's side is in
 * trainer-child.ts.
 */
import { randomUUID } from 'node:crypto';
import type { PublishedAdapter } from './job-runner.ts';

export type AdapterPublishedMessage = { type: 'adapter-published'; id: string } & PublishedAdapter;
export interface AdapterReadyMessage {
  type: 'adapter-ready';
  id: string;
}

/**
 * Longest wait for the gateway's answer: loading a 135M-shape adapter takes a second or two on a loaded node, and
 * a gateway that does not answer (busy, restarting) must not hold a finished job back for long.
 */
const PRELOAD_WAIT_MS = 10_000;

function isReady(message: unknown): message is AdapterReadyMessage {
  return typeof message === 'object' && message !== null && (message as AdapterReadyMessage).type === 'adapter-ready';
}

/** Announces over the IPC channel to the parent gateway; undefined when this process has no such channel. */
export function announceToParentGateway(): ((adapter: PublishedAdapter) => Promise<void>) | undefined {
  if (!process.send) return undefined;
  const waiting = new Map<string, () => void>();
  process.on('message', (message: unknown) => {
    if (isReady(message)) waiting.get(message.id)?.();
  });
  return (adapter) =>
    new Promise<void>((resolve) => {
      const id = randomUUID();
      const done = () => {
        clearTimeout(timer);
        waiting.delete(id);
        process.off('disconnect', done);
        resolve();
      };
      const timer = setTimeout(done, PRELOAD_WAIT_MS);
      waiting.set(id, done);
      process.once('disconnect', done);
      const message: AdapterPublishedMessage = { type: 'adapter-published', id, ...adapter };
      process.send!(message, undefined, undefined, (error: Error | null) => error && done());
    });
}

import type { Engine } from '../../src/engine/engine.ts';

/**
 * With the engine paused (Engine.pause), runs it step by step until `count` generations have delivered a token
 * to the HTTP thread. Nothing more happens until the test steps or resumes the engine: the point reached is the
 * same on a fast machine and on a slow one.
 */
export async function stepUntilStreaming(engine: Engine, count = 1): Promise<void> {
  await engine.whenPaused();
  while (engine.streamingRequests < count) await engine.step();
}

/**
 * With the engine paused, steps it until `awaited` settles, and returns its value. For waits on what a client sees
 * (a text delta): a token delivered to the HTTP thread may not have text yet (a possible stop string or an
 * incomplete character holds it back), so a fixed number of steps is not enough and no step is too many.
 */
export async function stepUntilSettled<T>(engine: Engine, awaited: Promise<T>): Promise<T> {
  await engine.whenPaused();
  let settled = false;
  const done = awaited.finally(() => (settled = true));
  done.catch(() => undefined);
  while (!settled) {
    await engine.step();
    // Let the socket deliver what the step produced before deciding to step again.
    await new Promise((resolve) => setImmediate(resolve));
  }
  return done;
}

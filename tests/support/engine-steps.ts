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

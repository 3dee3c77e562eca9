import type { Engine } from '../../src/engine/engine.ts';

/**
 * With the engine paused (Engine.pause), runs it step by step until `count` sequences are in its batch. Each
 * has then sampled its first token and delivered it to the HTTP thread, and nothing more happens until the
 * test steps or resumes the engine: the point reached is the same on a fast machine and on a slow one.
 */
export async function stepUntilRunning(engine: Engine, count = 1): Promise<void> {
  await engine.whenPaused();
  while (engine.stats.running < count) await engine.step();
}

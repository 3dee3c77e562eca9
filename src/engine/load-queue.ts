/**
 * The order of the adapter loader thread's work: one load at a time, in the order asked for, and, while more
 * loads wait, a pause after each as long as it took.
 *
 * Why: loads are CPU work (checksums, parsing, validation, the slot layout: about 55 ms for an r=16 adapter of
 * SmolLM2-135M's shape) on a machine whose cores the engine's onnxruntime threads already fill. Eight loads run
 * at once all finished late (the last after about 1 s), and meanwhile every step ran at a third of its speed; one
 * after another, the first adapter is ready after one load, and its sequence starts prefilling while the rest
 * load. The pause keeps the loader to half a core while a burst of loads drains, so the steps beside it keep most
 * of their speed; a lone load, with nothing waiting behind it, never pauses (engine README, measured figures).
 */
import { setTimeout as sleep } from 'node:timers/promises';

export class LoadQueue {
  private tail: Promise<unknown> = Promise.resolve();
  private waiting = 0;

  constructor(
    /** Waits `ms` milliseconds between two loads (tests pass their own, to decide when it ends). */
    private readonly pause: (ms: number) => Promise<unknown> = sleep,
  ) {}

  /**
   * Runs `load` once every load asked for before it has ended, and the pause after the last of them. The result
   * comes as soon as the load ends; only the next load waits out the pause.
   */
  run<T>(load: () => Promise<T>): Promise<T> {
    this.waiting++;
    let started = 0;
    const result = this.tail.then(() => {
      this.waiting--;
      started = performance.now();
      return load();
    });
    const ended = () => (this.waiting > 0 ? this.pause(performance.now() - started) : undefined);
    this.tail = result.then(ended, ended);
    return result;
  }
}

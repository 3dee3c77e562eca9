/**
 * The order of the adapter loader thread's work: one load at a time, in the order asked for, and, while more
 * loads wait, a pause after each as long as it took.
 *
 * Why: loads are CPU work (checksums, parsing, validation, the slot layout: about 50 ms for an r=16 adapter of
 * SmolLM2-135M's shape) on a machine whose cores the engine's onnxruntime threads already fill. Eight loads run
 * at once all finished late (the last after about 1 s), and meanwhile steps took two to three times as long; one
 * after another, the first adapter is ready after one load, and its sequence starts prefilling while the rest
 * load. The pause keeps the loader to half a core while a burst of loads drains, so the steps beside it keep more
 * of their speed; a lone load, with nothing waiting behind it, never pauses (engine README, measured figures).
 *
 * A load still running after STUCK_LOAD_MS (a read hanging on storage) stops holding the line: the next one starts
 * beside it, so one stuck file does not stop every other adapter from loading.
 */
import { setTimeout as sleep } from 'node:timers/promises';

/** How long one load may hold back the loads behind it; a load of a page-cached r=16 adapter takes about 50 ms. */
export const STUCK_LOAD_MS = 2000;

export interface LoadQueueTimers {
  /** Waits `ms` milliseconds between two loads. */
  pause(ms: number): Promise<unknown>;
  /** Ends once a load has held the line for STUCK_LOAD_MS. */
  stuck(): Promise<unknown>;
}

/** Timers that never keep the thread alive on their own. */
const REAL_TIMERS: LoadQueueTimers = {
  pause: (ms) => sleep(ms, undefined, { ref: false }),
  stuck: () => sleep(STUCK_LOAD_MS, undefined, { ref: false }),
};

export class LoadQueue {
  private tail: Promise<unknown> = Promise.resolve();
  private waiting = 0;

  /** Tests pass their own timers, to decide when each wait ends. */
  constructor(private readonly timers: LoadQueueTimers = REAL_TIMERS) {}

  /**
   * Runs `load` once every load asked for before it has ended (or is stuck), and the pause after the last of
   * them. The result comes as soon as the load ends; only the next load waits out the pause.
   */
  run<T>(load: () => Promise<T>): Promise<T> {
    this.waiting++;
    let started = 0;
    let begin!: () => void;
    const begun = new Promise<void>((resolve) => (begin = resolve));
    const result = this.tail.then(() => {
      this.waiting--;
      started = performance.now();
      begin();
      return load();
    });
    const ended = result.then(
      () => true,
      () => true,
    );
    const holding = Promise.race([ended, begun.then(() => this.timers.stuck()).then(() => false)]);
    this.tail = holding.then((hasEnded) => (hasEnded && this.waiting > 0 ? this.timers.pause(performance.now() - started) : undefined));
    return result;
  }
}

/**
 * How long the engine's recent steps took, and how long a step's load turn may therefore run. A step is one
 * inter-token gap of every running stream, so a step kept within a multiple of the recent median step keeps each
 * stream's gaps within that multiple of its median gap.
 */
import { median } from '../statistics.ts';

/** Steps remembered: enough that a burst of heavier steps (a few dozen) moves their median little. */
const REMEMBERED_STEPS = 64;

/**
 * The longest a step carrying a load turn may take, in recent median steps. Measured with `npm run -s
 * bench:stall -- --trials 3 --json` (src/engine/README.md): turns bounded only by the loads waiting gave a cold
 * burst's longest gap 3.4–5.0 times the undisturbed one, bounded at 2.5 steps 2.6–3.4, at 2 steps 2.2–3.4 (over nine
 * trials; seven of them within 3).
 */
export const STEP_GAP_LIMIT = 2;

export class StepTimes {
  private readonly durations: number[] = [];
  private next = 0;

  record(ms: number): void {
    if (this.durations.length < REMEMBERED_STEPS) this.durations.push(ms);
    else this.durations[this.next] = ms;
    this.next = (this.next + 1) % REMEMBERED_STEPS;
  }

  /** The median of the steps remembered; Infinity before the first. */
  typical(): number {
    return this.durations.length === 0 ? Infinity : median(this.durations);
  }
}

/**
 * How long a step's load turn may run, in ms: as long as the step's decode pass took, times the loads waiting (a
 * lone load adds about one decode pass to a step, a burst of loads drains faster), but never past STEP_GAP_LIMIT
 * typical steps from the step's start. A turn runs at least one phase however short its time
 * (LoadTurns.takeTurn), so loads always progress.
 */
export function loadTurnBudget(decodeMs: number, loadsWaiting: number, stepElapsedMs: number, typicalStepMs: number): number {
  return Math.min(decodeMs * loadsWaiting, STEP_GAP_LIMIT * typicalStepMs - stepElapsedMs);
}

/**
 * When cold adapters load: in turns the engine gives them between its passes, instead of beside the passes. A load
 * has up to three phases (verifying the files when their checksums are not yet checked, parsing and validating
 * them, laying them out: adapter-loader.ts; a layout kept on disk is read back in one), and a turn runs the next
 * phase of the first load waiting, then further phases of that load, and of the loads behind it when it was read
 * back whole, while it stays within the time it was given (the scheduler gives as long as the step's decode pass
 * took, times the loads waiting, within a bound on the whole step: step-times.ts).
 *
 * Why: a load is CPU work (about 50 ms alone for an r=16 adapter of SmolLM2-135M's shape, 65–105 ms inside the
 * serving process) on a machine whose two cores onnxruntime's two threads already fill. Run beside a pass, it
 * took a core from one of them, and a pass's threads wait for each other: decode passes went from 37 ms to 60–100
 * ms and prefill passes from 45 to 80–100 ms, so a step carrying both came to 150–190 ms, five times an
 * undisturbed one. Given the cores to itself between passes, a phase adds its own 15–45 ms to one step, and a step
 * carries load phases or a prefill chunk, never both, whichever belongs to the request asked for first
 * (scheduler.ts). Turns of one phase, or of one decode pass's time, made a burst of cold requests wait for their
 * loads one phase a step: the load test's opening burst of 16 cold requests got its last first tokens after about
 * 5 s instead of 3–4. Turns that stopped at the end of their load kept that burst at about 4.4 s even once every
 * load was a read of a few milliseconds (layout-cache.ts): each load still took a step of its own; going on to the
 * loads behind it, a turn drains such a burst in a step or two (src/engine/README.md, "Layouts kept on disk").
 *
 * A phase still running when its turn ends (LOAD_TURN_MS: a read hanging on storage, an adapter many times
 * larger) lets its load go on beside the passes without pausing again, as every load did before, so neither a
 * stuck file nor a huge adapter stops the steps or the loads behind it.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { SlotReadyAdapter } from '../runtime/slot-ready-adapter.ts';
import type { LoadAdapter } from './adapter-loader.ts';
import type { AdapterRef } from './protocol.ts';

/**
 * How long a turn waits for a phase: many times what a phase of a page-cached r=16 load of the 135M shape takes
 * (17–66 ms), and beyond the first loads of a new process (up to about 300 ms while the loader thread warms up).
 * A shorter wait freed those first loads to run beside the passes and beside each other.
 */
export const LOAD_TURN_MS = 1000;

/** Ends a turn's wait after `ms` milliseconds; never keeps the thread alive on its own. */
export type TurnTimer = (ms: number) => Promise<unknown>;

const REAL_TIMER: TurnTimer = (ms) => sleep(ms, undefined, { ref: false });

interface QueuedLoad {
  ref: AdapterRef;
  /** When it was asked for (performance.now()); Infinity for a load no request waits for (LoadTurns.prepare). */
  askedAt: number;
  resolve: (adapter: SlotReadyAdapter) => void;
  reject: (error: Error) => void;
  /** Set while the load waits between two phases: runs its next phase. */
  resume?: () => void;
  /** Ends the current turn's wait: the phase it gave ended. */
  phaseEnded?: () => void;
  /** It outlasted a turn and runs on without pausing. */
  freed: boolean;
  /** Phases started so far. */
  phases: number;
}

export class LoadTurns {
  /**
   * Loads asked for and not finished: those requests wait for in the order asked for, then those none waits for;
   * the first one gets the next turn.
   */
  private readonly queued: QueuedLoad[] = [];

  constructor(
    private readonly loadAdapter: LoadAdapter,
    /** Called when a load is queued, so an idle engine wakes up to give it a turn. */
    private readonly onQueued: () => void,
    private readonly turnMs = LOAD_TURN_MS,
    /** Tests pass their own, to decide when a turn's wait ends. */
    private readonly timer: TurnTimer = REAL_TIMER,
  ) {}

  /** A LoadAdapter whose phases run at turns; the result comes as soon as the last phase ends. */
  readonly load: LoadAdapter = (ref) => this.enqueue(ref, performance.now());

  /**
   * A load no request waits for (a layout made ahead of use: Engine.prepareLayout). It goes behind every load a
   * request waits for, even one asked for later, and its turns come only where no prompt chunk waits (its asked-for
   * time is later than any prompt's), so a burst of uploads never delays a request.
   */
  prepare(ref: AdapterRef): Promise<SlotReadyAdapter> {
    return this.enqueue(ref, Infinity);
  }

  private enqueue(ref: AdapterRef, askedAt: number): Promise<SlotReadyAdapter> {
    return new Promise<SlotReadyAdapter>((resolve, reject) => {
      const load: QueuedLoad = { ref, askedAt, resolve, reject, freed: false, phases: 0 };
      const firstUnwaited = this.queued.findIndex((queued) => queued.askedAt === Infinity);
      if (askedAt === Infinity || firstUnwaited < 0) this.queued.push(load);
      else this.queued.splice(firstUnwaited, 0, load);
      this.onQueued();
    });
  }

  /** Loads waiting for a turn (not started, or paused between phases). */
  get waiting(): number {
    return this.queued.length;
  }

  /** When the load the next turn goes to was asked for (performance.now()); Infinity when none waits. */
  get nextAskedAt(): number {
    return this.queued[0]?.askedAt ?? Infinity;
  }

  /**
   * Runs the next phase of the first load waiting, if any, and further phases while the turn, judged by its last
   * phase, stays within `budgetMs`: of the same load, and after a load that was whole in one phase (read back
   * ready, layout-cache.ts), of the load behind it. A load made in several phases ends the turn: the next one's
   * first phase may be a checksum of tens of milliseconds that one short phase does not predict; so does reaching
   * a load no request waits for, in a turn a request's load was given. Resolves once the last phase it ran has
   * ended or its time is up, whichever comes first; at once when no load waits.
   */
  async takeTurn(budgetMs = 0): Promise<void> {
    const started = performance.now();
    const forRequests = this.nextAskedAt < Infinity;
    for (let load = this.queued[0]; load && (load.askedAt < Infinity || !forRequests); load = this.queued[0]) {
      const phaseStarted = performance.now();
      if (!(await this.runPhase(load))) return;
      if (this.queued[0] !== load && load.phases > 1) return;
      const now = performance.now();
      if (now - started + (now - phaseStarted) >= budgetMs) return;
    }
  }

  /** Runs the load's next phase; false when the phase outlasted its time and the load was freed. */
  private async runPhase(load: QueuedLoad): Promise<boolean> {
    const phaseEnded = new Promise<void>((end) => (load.phaseEnded = end));
    if (load.phases++ > 0) {
      const resume = load.resume!;
      load.resume = undefined;
      resume();
    } else void this.run(load);
    const inTime = await Promise.race([phaseEnded.then(() => true), this.timer(this.turnMs).then(() => false)]);
    if (inTime) return true;
    // The phase outlasted its time: the load runs on by itself, and the next turn goes to the load behind it.
    load.freed = true;
    this.remove(load);
    // Its phase may have ended just as the time ran out, leaving it paused.
    load.resume?.();
    return false;
  }

  private async run(load: QueuedLoad): Promise<void> {
    const between = () => {
      if (load.freed) return Promise.resolve();
      const paused = new Promise<void>((resume) => (load.resume = resume));
      load.phaseEnded?.();
      return paused;
    };
    try {
      load.resolve(await this.loadAdapter(load.ref, between));
    } catch (error) {
      load.reject(error as Error);
    } finally {
      this.remove(load);
      load.phaseEnded?.();
    }
  }

  private remove(load: QueuedLoad): void {
    const index = this.queued.indexOf(load);
    if (index >= 0) this.queued.splice(index, 1);
  }
}

/**
 * Continuous batching without stalls. Sequences wait in a queue, take a batch row between steps, prefill their
 * prompt in budget-sized chunks (prefill-plan.ts) while the rows already decoding advance one token in every
 * step (in the same forward pass as the chunk, when the rows are on LoRA or the base model), decode together, and
 * leave as soon as they finish or are cancelled. A burst of new or long prompts thus delays running streams by at
 * most one prefill budget per step. Runs on the engine worker thread.
 *
 * A sequence on an adapter takes a row only once its adapter sits in a runtime slot; its load is asked for when the
 * sequence is submitted and runs in turns between passes (load-turns.ts): a step carries either a prefill chunk
 * or, after its decode passes, adapter load phases (the oldest load's first), whichever belongs to the older
 * request, so neither adds to the other and neither runs beside a pass.
 */
import { setImmediate as nextTurn } from 'node:timers/promises';
import type { ModelRunner, StepRow } from '../runtime/model-runner.ts';
import type { SlotReadyAdapter } from '../runtime/slot-ready-adapter.ts';
import { adapterLoaderFor, loadErrorCode, type LoadAdapter } from './adapter-loader.ts';
import { BatchRows } from './batch-rows.ts';
import { HostAdapterCache } from './host-adapter-cache.ts';
import { LOAD_TURN_MS, LoadTurns } from './load-turns.ts';
import { planPrefillPass } from './prefill-plan.ts';
import { loadTurnBudget, StepTimes } from './step-times.ts';
import type {
  AdapterCacheEvent,
  AdapterLoadEvent,
  AdapterRef,
  FinishEvent,
  FinishReason,
  SchedulerStats,
  SequenceRequest,
  StartEvent,
  TokenEvent,
} from './protocol.ts';
import { HOST_ADAPTERS_NAMED, versionOfCacheKey } from './protocol.ts';
import { TokenSampler } from './sampling.ts';

/** Memory faulted in per idle turn: about 3 ms here, the most a request arriving meanwhile waits for it. */
const PREFAULT_PIECE_BYTES = 2 ** 20;

export interface SchedulerOptions {
  maxQueue: number;
  maxPositions: number;
  /** Most prompt tokens (rows × padded width) one step prefills beside the decoding rows. */
  prefillTokenBudget: number;
  hostCacheBytes: number;
  /**
   * Reads, verifies, validates and lays out an adapter version (the engine passes its loader thread's; default:
   * adapterLoaderFor the runner's model, on this thread).
   */
  loadAdapter?: LoadAdapter;
  /** How long a step waits for the adapter load phase it gives a turn (default LOAD_TURN_MS). */
  loadTurnMs?: number;
  /**
   * Faults in the next `maxBytes` of the loader's memory ahead of use (its read buffers: read-buffers.ts); false once
   * there is none left. Asked while idle, beside the runner's own.
   */
  prefaultLoader?: (maxBytes: number) => Promise<boolean>;
}

/** What one scheduler iteration produced, delivered in one message to keep cross-thread traffic per step. */
export interface StepReport {
  started: StartEvent[];
  tokens: TokenEvent[];
  finished: FinishEvent[];
  adapterCache: AdapterCacheEvent[];
  stats: SchedulerStats;
}

export interface SchedulerSink {
  step(report: StepReport): void;
  failed(id: number, message: string, code: string): void;
}

interface Sequence {
  request: SequenceRequest;
  sampler: TokenSampler;
  submittedAt: number;
  /** When its first prompt chunk was fed; the prefill time reported runs from here. */
  prefillStartedAt?: number;
  /** Tokens of this sequence in the KV cache (while prefilling: prompt tokens fed so far). */
  position: number;
  /** The last sampled token, fed at the next decode step. */
  nextToken: number;
  generated: number;
  slot: number;
  cancelled: boolean;
  finish?: FinishReason;
  /** Its adapter, laid out for a slot, waiting for a free one. */
  adapter?: SlotReadyAdapter;
  /**
   * What the prefill feeds: the prompt, after a soft prompt's virtual tokens (placeholders the runner replaces
   * with their embeddings), starting at cache position `offset` (a prefix's length: its keys and values are
   * written into the cache when the sequence takes its row). Set when the sequence gets its slot.
   */
  feed: number[];
  offset: number;
  adapterLoading?: boolean;
  adapterLoad?: AdapterLoadEvent;
}

const NO_SLOT = -1;

/** Decoding sequences' rows of a pass: each feeds the token it sampled last. */
function decodeRows(decoding: Sequence[]): StepRow[] {
  return decoding.map((s) => ({ tokens: [s.nextToken], position: s.position, slot: s.slot }));
}

/**
 * The most cache positions a sequence can need after the next `steps` steps: its prompt is fed at most `budget`
 * tokens a step, then one position a step from the step after the one that completed it, never past its last
 * token (the token sampled last is never fed).
 */
function reach(sequence: Sequence, steps: number, budget: number): number {
  const promptEnd = sequence.offset + sequence.feed.length;
  const prefillSteps = Math.ceil(Math.max(0, promptEnd - sequence.position) / budget);
  const reached =
    steps <= prefillSteps ? Math.min(promptEnd, sequence.position + steps * budget) : Math.max(sequence.position, promptEnd) + steps - prefillSteps;
  return Math.min(reached, promptEnd + sequence.request.maxTokens - 1);
}

export class Scheduler {
  private readonly waiting: Sequence[] = [];
  /** Sequences holding a batch row, decoding or prefilling. */
  private readonly batch: BatchRows<Sequence>;
  private readonly hostCache: HostAdapterCache;
  private readonly loads: LoadTurns;
  /** The recent steps' durations, which bound a step's load turn (step-times.ts). */
  private readonly stepTimes = new StepTimes();
  private report: Omit<StepReport, 'stats'> = { started: [], tokens: [], finished: [], adapterCache: [] };
  private looping = false;
  private prefaulting = false;
  private wake: (() => void) | null = null;
  private readonly vocabSize: number;

  constructor(
    private readonly runner: ModelRunner,
    private readonly options: SchedulerOptions,
    private readonly sink: SchedulerSink,
  ) {
    this.vocabSize = runner.config.vocabSize;
    this.batch = new BatchRows(runner);
    this.loads = new LoadTurns(options.loadAdapter ?? adapterLoaderFor(runner.config, runner.slots.rank), () => this.kick(), options.loadTurnMs ?? LOAD_TURN_MS);
    this.hostCache = new HostAdapterCache(
      this.loads.load,
      options.hostCacheBytes,
      (event) => this.report.adapterCache.push(event),
      (adapter) => runner.completeAdapter(adapter),
    );
    void this.prefaultWhileIdle();
  }

  submit(request: SequenceRequest): void {
    if (this.waiting.length >= this.options.maxQueue) {
      this.sink.failed(request.id, `the engine queue is full (${this.options.maxQueue} waiting); retry later`, 'overloaded');
      return;
    }
    if (request.promptIds.length === 0 || request.promptIds.length >= this.options.maxPositions) {
      this.sink.failed(
        request.id,
        `the prompt has ${request.promptIds.length} tokens; this model accepts 1 to ${this.options.maxPositions - 1}`,
        'context_length_exceeded',
      );
      return;
    }
    const outOfVocabulary = request.promptIds.find((id) => !Number.isInteger(id) || id < 0 || id >= this.vocabSize);
    if (outOfVocabulary !== undefined) {
      this.sink.failed(request.id, `token id ${outOfVocabulary} is outside the vocabulary (0..${this.vocabSize - 1})`, 'invalid_prompt');
      return;
    }
    const sequence: Sequence = {
      request,
      sampler: new TokenSampler(request.sampling, this.vocabSize),
      submittedAt: performance.now(),
      position: 0,
      feed: request.promptIds,
      offset: 0,
      nextToken: -1,
      generated: 0,
      slot: NO_SLOT,
      cancelled: false,
    };
    this.waiting.push(sequence);
    this.prefetch(sequence);
    this.kick();
  }

  /** Starts reading a cold adapter as soon as its sequence is accepted, not when a batch row frees up. */
  private prefetch(sequence: Sequence): void {
    const key = sequence.request.adapter?.key;
    if (key === undefined || this.isLoaded(key)) return;
    this.report.adapterCache.push({ tier: 'host', event: 'miss' });
    this.startLoad(sequence);
  }

  private get running(): Sequence[] {
    return this.batch.all;
  }

  cancel(id: number): void {
    const sequence = this.running.find((s) => s.request.id === id) ?? this.waiting.find((s) => s.request.id === id);
    if (sequence) sequence.cancelled = true;
    this.kick();
  }

  /** Whether the adapter sits in a runtime slot or in the host cache. */
  private isLoaded(key: string): boolean {
    return this.runner.slots.residentAdapters.includes(key) || this.hostCache.has(key);
  }

  /**
   * Loads an adapter version in turns nothing else wants, and drops it: the load leaves its layout on disk
   * (Engine.prepareLayout).
   */
  prepareLayout(ref: AdapterRef): void {
    if (!this.isLoaded(ref.key)) void this.loads.prepare(ref).catch(() => undefined);
  }

  /**
   * Reads, verifies and parses an adapter into the host cache before any request needs it (a version just
   * published), so its first request pays only for taking a slot. Runs beside the steps like any other load.
   */
  async preloadAdapter(ref: AdapterRef): Promise<void> {
    if (!this.isLoaded(ref.key)) await this.hostCache.load(ref);
  }

  /** Drops the cache keys of one adapter version (each content it had under that id) from both tiers. */
  evictAdapter(version: string): void {
    const ofVersion = (key: string) => versionOfCacheKey(key) === version;
    for (const key of this.hostCache.keys().filter(ofVersion)) this.hostCache.delete(key);
    for (const key of this.runner.slots.residentAdapters.filter(ofVersion)) this.runner.slots.evict(key);
  }

  private kick(): void {
    if (this.wake) {
      this.wake();
      this.wake = null;
    }
    if (!this.looping) void this.loop();
  }

  private async loop(): Promise<void> {
    this.looping = true;
    try {
      while (this.waiting.length > 0 || this.running.length > 0 || this.loads.waiting > 0) {
        this.retire();
        this.admit();
        this.batch.growCaches((sequence, steps) => reach(sequence, steps, this.options.prefillTokenBudget));
        if (this.running.length > 0) await this.step();
        // With no pass to share the cores with, loads take their turns one after another.
        else if (this.loads.waiting > 0) await this.loads.takeTurn();
        this.flush();
        if (this.running.length === 0 && this.loads.waiting === 0 && this.waiting.length > 0 && this.waiting.every((s) => s.adapterLoading)) {
          // Nothing runs and everything waiting needs an adapter still loading: sleep until a load ends.
          await new Promise<void>((resolve) => (this.wake = resolve));
        } else {
          // Let messages (new requests, cancellations) and finished file reads in between steps.
          await nextTurn();
        }
      }
    } finally {
      this.looping = false;
      this.flush();
      void this.prefaultWhileIdle();
    }
  }

  /**
   * Faults in the runner's memory ahead of use (prefault.ts) and, at the same time on the loader's own thread, the
   * loader's, a piece per turn of the event loop while the scheduler has nothing to do; its loop takes over as soon
   * as it has. One after the other, the loader's buffers were still empty when a load test's first burst came about
   * two seconds after start, and every load of that burst read into fresh memory.
   */
  private async prefaultWhileIdle(): Promise<void> {
    if (this.prefaulting) return;
    this.prefaulting = true;
    try {
      const loader = this.options.prefaultLoader;
      const loaderFaulted = (async () => {
        while (loader && !this.looping && (await loader(PREFAULT_PIECE_BYTES))) await nextTurn();
      })();
      while (!this.looping && this.runner.prefault(PREFAULT_PIECE_BYTES)) await nextTurn();
      await loaderFaulted;
    } finally {
      this.prefaulting = false;
    }
  }

  /** Removes finished and cancelled sequences, keeping the rows of each lane contiguous. */
  private retire(): void {
    for (let i = this.waiting.length - 1; i >= 0; i--) {
      const sequence = this.waiting[i];
      if (!sequence.cancelled) continue;
      this.waiting.splice(i, 1);
      this.finish(sequence, 'cancelled');
    }
    const done = this.batch.removeWhere((sequence) => sequence.cancelled || sequence.finish !== undefined);
    for (const sequence of done) this.finish(sequence, sequence.cancelled && !sequence.finish ? 'cancelled' : sequence.finish!);
  }

  private finish(sequence: Sequence, reason: FinishReason): void {
    if (sequence.slot > 0) this.runner.slots.release(sequence.slot);
    sequence.slot = NO_SLOT;
    this.report.finished.push({
      id: sequence.request.id,
      reason,
      promptTokens: sequence.request.promptIds.length,
      completionTokens: sequence.generated,
    });
  }

  /**
   * Gives waiting sequences free batch rows, where they prefill over the next steps. Fair across tenants: the
   * next candidate is the oldest sequence of the tenant with the fewest sequences holding rows, so one tenant's
   * burst cannot starve others. A sequence whose adapter is still loading, or finds every slot held, stays in
   * the queue without a row.
   */
  private admit(): void {
    let tried = new Set<Sequence>();
    while (this.batch.count < this.runner.maxBatch) {
      const sequence = this.nextCandidate(tried);
      if (!sequence) break;
      tried.add(sequence);
      let slot: number | null;
      try {
        slot = this.placeAdapter(sequence);
      } catch (error) {
        this.waiting.splice(this.waiting.indexOf(sequence), 1);
        this.sink.failed(sequence.request.id, (error as Error).message, loadErrorCode(error));
        continue;
      }
      if (slot === null) continue;
      this.waiting.splice(this.waiting.indexOf(sequence), 1);
      sequence.slot = slot;
      if (!this.placeVirtualTokens(sequence)) continue;
      const lane = this.runner.laneFor(sequence.offset + sequence.feed.length + 1);
      this.batch.addPrefilling(lane, sequence);
      this.runner.writePrefix(lane, this.batch.firstPrefillRow(lane) + this.batch.prefilling(lane).length - 1, slot);
      // The counts per tenant changed, so every waiting sequence is a candidate again.
      tried = new Set();
    }
  }

  /**
   * One engine step: every decoding row advances one token, and the step's turn goes to at most one prefill budget
   * of prompt tokens, fed in the same pass as its lane's decoding rows, or to adapter load phases after the decode
   * passes, whichever belongs to the request submitted first (first come, first served: a cold request's load does
   * not wait behind prompts that arrived after it). A load turn goes on to the loads behind its first while it stays
   * within its bounded time, so a prompt waits at most that one turn behind loads asked for after it.
   */
  private async step(): Promise<void> {
    const started = performance.now();
    try {
      this.batch.promote();
      const lane = this.nextPrefillLane();
      const prefillSince = lane < 0 ? Infinity : this.batch.prefilling(lane)[0].submittedAt;
      if (this.loads.waiting > 0 && this.loads.nextAskedAt <= prefillSince) {
        const decodeStarted = performance.now();
        await this.decode();
        const now = performance.now();
        await this.loads.takeTurn(loadTurnBudget(now - decodeStarted, this.loads.waiting, now - started, this.stepTimes.typical()));
      } else if (lane >= 0) {
        await this.decode(lane);
        await this.prefillChunk(lane);
      } else await this.decode();
    } catch (error) {
      this.failRunning(error as Error);
    } finally {
      this.stepTimes.record(performance.now() - started);
    }
  }

  private nextCandidate(tried: Set<Sequence>): Sequence | undefined {
    const runningByTenant = new Map<string, number>();
    for (const s of this.running) runningByTenant.set(s.request.tenant, (runningByTenant.get(s.request.tenant) ?? 0) + 1);
    let best: Sequence | undefined;
    let bestRunning = Infinity;
    for (const sequence of this.waiting) {
      if (sequence.cancelled || tried.has(sequence)) continue;
      const running = runningByTenant.get(sequence.request.tenant) ?? 0;
      if (running < bestRunning) {
        best = sequence;
        bestRunning = running;
      }
    }
    return best;
  }

  /** The slot for the sequence's adapter, or null while it loads or every slot is held. */
  private placeAdapter(sequence: Sequence): number | null {
    const ref = sequence.request.adapter;
    if (!ref) return 0;
    const slots = this.runner.slots;
    const resident = slots.holdIfResident(ref.key);
    if (resident !== undefined) {
      this.report.adapterCache.push({ tier: 'slot', event: 'hit' });
      sequence.adapterLoad ??= { key: ref.key, tier: 'slot', ms: 0 };
      return resident;
    }
    // Waiting for its load: already counted as a host miss when the load started.
    if (sequence.adapterLoading) return null;
    if (!sequence.adapter) {
      const cached = this.hostCache.get(ref.key);
      if (cached) {
        sequence.adapter = cached;
        sequence.adapterLoad = { key: ref.key, tier: 'host', ms: 0 };
      } else {
        this.startLoad(sequence);
        return null;
      }
    }
    const started = performance.now();
    const slot = slots.placeReady(ref.key, sequence.adapter, () => this.report.adapterCache.push({ tier: 'slot', event: 'eviction' }));
    if (slot === null) return null;
    const seconds = (performance.now() - started) / 1000;
    this.report.adapterCache.push({ tier: 'slot', event: 'miss' }, { tier: 'slot', event: 'load', seconds });
    sequence.adapterLoad!.ms += seconds * 1000;
    sequence.adapter = undefined;
    return slot;
  }

  /**
   * Lays out the prefill of a sequence that just got its slot: a soft prompt's virtual tokens before the prompt,
   * or a prefix's positions before it. Virtual tokens count against the context like real ones: a sequence they
   * push past it fails (and gives its slot back), returning false.
   */
  private placeVirtualTokens(sequence: Sequence): boolean {
    const { virtualTokens, softPrompt, prefix } = this.runner.slots.promptOf(sequence.slot);
    const prompt = sequence.request.promptIds;
    if (virtualTokens > 0 && virtualTokens + prompt.length >= this.options.maxPositions) {
      this.runner.slots.release(sequence.slot);
      sequence.slot = NO_SLOT;
      this.sink.failed(
        sequence.request.id,
        `the prompt has ${prompt.length} tokens and the adapter adds ${virtualTokens} virtual tokens; this model accepts 1 to ${this.options.maxPositions - 1} in all`,
        'context_length_exceeded',
      );
      return false;
    }
    if (softPrompt) sequence.feed = [...new Array<number>(virtualTokens).fill(0), ...prompt];
    if (prefix) sequence.offset = sequence.position = virtualTokens;
    return true;
  }

  private startLoad(sequence: Sequence): void {
    const ref = sequence.request.adapter!;
    sequence.adapterLoading = true;
    const started = performance.now();
    this.hostCache.load(ref).then(
      (adapter) => {
        sequence.adapter = adapter;
        sequence.adapterLoad = { key: ref.key, tier: 'disk', ms: performance.now() - started };
        sequence.adapterLoading = false;
        this.kick();
      },
      (error: Error) => {
        const index = this.waiting.indexOf(sequence);
        if (index >= 0) this.waiting.splice(index, 1);
        if (!sequence.cancelled) this.sink.failed(sequence.request.id, error.message, loadErrorCode(error));
        this.kick();
      },
    );
  }

  /**
   * Each lane with decoding rows runs one pass that feeds every one of them its last sampled token, but lane
   * `except`, whose decoding rows go with its prefill chunk.
   */
  private async decode(except = -1): Promise<void> {
    for (let lane = 0; lane < this.batch.laneCount; lane++) if (lane !== except) await this.decodeLane(lane);
  }

  /** The lane's decoding rows, if any, in a pass of their own. */
  private async decodeLane(lane: number): Promise<void> {
    const decoding = this.batch.decoding(lane);
    if (decoding.length > 0) this.acceptDecoded(decoding, await this.runner.forward(0, decodeRows(decoding), lane));
  }

  /** The decoding sequences advance one position and sample from their rows of `logits`. */
  private acceptDecoded(decoding: Sequence[], logits: Float32Array): void {
    decoding.forEach((sequence, row) => {
      sequence.position++;
      if (!sequence.finish) this.accept(sequence, this.rowLogits(logits, row));
    });
  }

  /** The lane whose first prefilling sequence arrived earliest, or -1 when no sequence is prefilling. */
  private nextPrefillLane(): number {
    let lane = -1;
    for (let candidate = 0; candidate < this.batch.laneCount; candidate++) {
      const first = this.batch.prefilling(candidate)[0];
      if (first && (lane < 0 || first.submittedAt < this.batch.prefilling(lane)[0].submittedAt)) lane = candidate;
    }
    return lane;
  }

  /**
   * Feeds the lane's next prompt chunk(s), within the prefill budget, in one pass with the lane's decoding rows
   * when the runner can mix them (LoRA and base rows), else in a pass after theirs. Sequences whose prompt is
   * complete sample their first token and decode from the next step.
   */
  private async prefillChunk(lane: number): Promise<void> {
    const prefilling = this.batch.prefilling(lane);
    const pass = planPrefillPass(prefilling.map((s) => s.offset + s.feed.length - s.position), this.options.prefillTokenBudget)!;
    const fed = prefilling.slice(0, pass.rows);
    const now = performance.now();
    for (const sequence of fed) sequence.prefillStartedAt ??= now;
    const prefill = {
      firstRow: this.batch.firstPrefillRow(lane),
      rows: fed.map((s) => ({ tokens: s.feed.slice(s.position - s.offset, s.position - s.offset + pass.width), position: s.position, slot: s.slot })),
    };
    const decoding = this.batch.decoding(lane);
    const decode = { firstRow: 0, rows: decodeRows(decoding) };
    let logits: Float32Array;
    if (decoding.length > 0 && this.runner.canMix([...decode.rows, ...prefill.rows])) {
      const mixed = await this.runner.forwardMixed(lane, decode, prefill);
      this.acceptDecoded(decoding, mixed.decode);
      logits = mixed.prefill;
    } else {
      await this.decodeLane(lane);
      logits = await this.runner.forward(prefill.firstRow, prefill.rows, lane);
    }
    let completed = 0;
    fed.forEach((sequence, row) => {
      const end = sequence.offset + sequence.feed.length;
      sequence.position = Math.min(end, sequence.position + pass.width);
      if (sequence.position < end) return;
      completed++;
      this.report.started.push({
        id: sequence.request.id,
        queueMs: sequence.prefillStartedAt! - sequence.submittedAt,
        prefillMs: performance.now() - sequence.prefillStartedAt!,
        adapterLoad: sequence.adapterLoad,
      });
      this.accept(sequence, this.rowLogits(logits, row));
    });
    // planPrefillPass guarantees the completed rows are the first ones of the pass.
    this.batch.startDecoding(lane, completed);
  }

  private rowLogits(logits: Float32Array, row: number): Float32Array {
    return logits.subarray(row * this.vocabSize, (row + 1) * this.vocabSize);
  }

  /** Samples the next token from a row's logits and decides whether the sequence is done. */
  private accept(sequence: Sequence, logits: Float32Array): void {
    if (sequence.cancelled) return;
    const sampled = sequence.sampler.sample(logits);
    sequence.generated++;
    sequence.nextToken = sampled.id;
    this.report.tokens.push({ id: sequence.request.id, token: sampled.id, logprob: sampled.logprob, topLogprobs: sampled.topLogprobs });
    if (sequence.request.stopTokenIds.includes(sampled.id)) sequence.finish = 'stop';
    else if (sequence.generated >= sequence.request.maxTokens || sequence.position + 1 >= this.options.maxPositions) {
      sequence.finish = 'length';
    }
  }

  /** A failed forward pass leaves the batch's state unknown: end every running sequence with the error. */
  private failRunning(error: Error): void {
    for (const sequence of this.batch.clear()) {
      if (sequence.slot > 0) this.runner.slots.release(sequence.slot);
      this.sink.failed(sequence.request.id, `inference failed: ${error.message}`, 'engine_error');
    }
  }

  private flush(): void {
    const { started, tokens, finished, adapterCache } = this.report;
    if (started.length + tokens.length + finished.length + adapterCache.length === 0 && this.looping) return;
    this.sink.step({ ...this.report, stats: this.stats() });
    this.report = { started: [], tokens: [], finished: [], adapterCache: [] };
  }

  stats(): SchedulerStats {
    const cacheTokens = this.running.reduce((sum, s) => sum + s.position, 0);
    const adapterNames = (list: Sequence[]) => [...new Set(list.flatMap(({ request: { adapter } }) => (adapter ? [adapter.servedAs ?? adapter.key] : [])))];
    return {
      running: this.running.length,
      waiting: this.waiting.length,
      kvCacheUsage: cacheTokens / (this.runner.maxBatch * this.options.maxPositions),
      runningAdapters: adapterNames(this.running),
      waitingAdapters: adapterNames(this.waiting),
      slots: {
        capacity: this.runner.slots.capacity,
        resident: this.runner.slots.residentAdapters.length,
        bytes: this.runner.slots.bytes,
        adapters: this.runner.slots.residentAdapters,
      },
      host: { entries: this.hostCache.entries, bytes: this.hostCache.bytes, adapters: this.hostCache.recentKeys(HOST_ADAPTERS_NAMED) },
    };
  }
}

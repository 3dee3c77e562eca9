/**
 * Continuous batching. Sequences wait in a queue, join the running batch between decode steps (prefilled in
 * their own cache row), decode together one token per step, and leave as soon as they finish or are
 * cancelled, so a long generation never holds up a short one. Runs on the engine worker thread.
 *
 * A sequence on an adapter joins only once its adapter sits in a runtime slot; loading it from disk happens
 * in the background while the batch keeps decoding.
 */
import { setImmediate as nextTurn } from 'node:timers/promises';
import { AdapterError } from '../adapters/adapter-error.ts';
import type { Adapter } from '../adapters/adapter.ts';
import type { ModelRunner } from '../runtime/model-runner.ts';
import { HostAdapterCache } from './host-adapter-cache.ts';
import type {
  AdapterCacheEvent,
  AdapterLoadEvent,
  FinishEvent,
  FinishReason,
  SchedulerStats,
  SequenceRequest,
  StartEvent,
  TokenEvent,
} from './protocol.ts';
import { TokenSampler } from './sampling.ts';

export interface SchedulerOptions {
  maxQueue: number;
  maxPositions: number;
  prefillChunk: number;
  hostCacheBytes: number;
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
  /** Tokens of this sequence in the KV cache. */
  position: number;
  /** The last sampled token, fed at the next decode step. */
  nextToken: number;
  generated: number;
  slot: number;
  cancelled: boolean;
  finish?: FinishReason;
  /** Parsed adapter waiting for a free slot. */
  adapter?: Adapter;
  /**
   * What the prefill feeds: the prompt, after a soft prompt's virtual tokens (placeholders the runner replaces
   * with their embeddings), starting at cache position `offset` (a prefix's length: its keys and values are
   * written into the cache when the sequence joins). Set when the sequence gets its slot.
   */
  feed: number[];
  offset: number;
  adapterLoading?: boolean;
  adapterLoad?: AdapterLoadEvent;
}

const NO_SLOT = -1;

/** Prompt chunks' worth of tokens one prefill pass may carry (rows × the longest chunk among them). */
const PREFILL_CHUNKS_PER_PASS = 4;

export class Scheduler {
  private readonly waiting: Sequence[] = [];
  /** Per batch lane (ModelRunner.lanes), the running sequences; index = row in the lane, rows stay contiguous. */
  private readonly lanes: Sequence[][];
  private readonly hostCache: HostAdapterCache;
  private report: Omit<StepReport, 'stats'> = { started: [], tokens: [], finished: [], adapterCache: [] };
  private looping = false;
  private wake: (() => void) | null = null;
  private readonly vocabSize: number;

  constructor(
    private readonly runner: ModelRunner,
    private readonly options: SchedulerOptions,
    private readonly sink: SchedulerSink,
  ) {
    this.vocabSize = runner.config.vocabSize;
    this.lanes = runner.lanes.map(() => []);
    this.hostCache = new HostAdapterCache(
      runner.config,
      options.hostCacheBytes,
      (event) => this.report.adapterCache.push(event),
      (adapter) => runner.prepareAdapter(adapter),
    );
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
    this.waiting.push({
      request,
      sampler: new TokenSampler(request.sampling, this.vocabSize),
      submittedAt: performance.now(),
      position: 0,
      nextToken: -1,
      generated: 0,
      slot: NO_SLOT,
      cancelled: false,
      feed: request.promptIds,
      offset: 0,
    });
    this.kick();
  }

  private get running(): Sequence[] {
    return this.lanes.flat();
  }

  cancel(id: number): void {
    const sequence = this.running.find((s) => s.request.id === id) ?? this.waiting.find((s) => s.request.id === id);
    if (sequence) sequence.cancelled = true;
    this.kick();
  }

  /** Drops a parsed adapter (deleted or replaced); its slot is reused once no running sequence holds it. */
  evictAdapter(key: string): void {
    this.hostCache.delete(key);
    this.runner.slots.evict(key);
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
      while (this.waiting.length > 0 || this.running.length > 0) {
        this.retire();
        await this.admit();
        if (this.running.length > 0) await this.decode();
        this.flush();
        if (this.running.length === 0 && this.waiting.every((s) => s.adapterLoading)) {
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
    }
  }

  /** Removes finished and cancelled sequences, keeping the running rows contiguous. */
  private retire(): void {
    for (let i = this.waiting.length - 1; i >= 0; i--) {
      const sequence = this.waiting[i];
      if (!sequence.cancelled) continue;
      this.waiting.splice(i, 1);
      this.finish(sequence, 'cancelled');
    }
    this.lanes.forEach((running, lane) => {
      for (let row = running.length - 1; row >= 0; row--) {
        const sequence = running[row];
        if (!sequence.cancelled && !sequence.finish) continue;
        this.finish(sequence, sequence.cancelled && !sequence.finish ? 'cancelled' : sequence.finish!);
        this.removeRow(lane, row);
      }
      this.runner.lanes[lane].cache.shrinkToFit(running.length, Math.max(0, ...running.map((s) => s.position + 1)));
    });
  }

  /** Takes a row out of a lane, moving the lane's last row into its place to keep the rows contiguous. */
  private removeRow(lane: number, row: number): void {
    const running = this.lanes[lane];
    const last = running.length - 1;
    if (row !== last) {
      running[row] = running[last];
      this.runner.moveRow(last, row, lane);
    }
    running.pop();
  }

  /** Moves sequences that will outgrow their lane at the next step into the lane for their length. */
  private promote(): void {
    this.lanes.forEach((running, lane) => {
      for (let row = running.length - 1; row >= 0; row--) {
        const sequence = running[row];
        const target = this.runner.laneFor(sequence.position + 1);
        if (target === lane) continue;
        this.runner.moveToLane(lane, row, target, this.lanes[target].length, sequence.position);
        this.lanes[target].push(sequence);
        this.removeRow(lane, row);
      }
    });
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
   * Moves waiting sequences into the batch while it has room, and prefills the newcomers together in one pass
   * per prompt chunk. Fair across tenants: the next candidate is the oldest sequence of the tenant with the
   * fewest sequences running, so one tenant's burst cannot starve others. A pass holds at most
   * PREFILL_CHUNKS_PER_PASS chunks' worth of (padded) tokens, so a burst of long prompts cannot stall decoding
   * for long or blow up attention's memory; the rest join after the next decode step.
   */
  private async admit(): Promise<void> {
    const chunk = this.options.prefillChunk;
    const group: Sequence[] = [];
    let longest = 0;
    let tried = new Set<Sequence>();
    const runningCount = this.running.length;
    while (runningCount + group.length < this.runner.maxBatch) {
      const sequence = this.nextCandidate(tried, group);
      if (!sequence) break;
      tried.add(sequence);
      const passTokens = (group.length + 1) * Math.min(chunk, Math.max(longest, sequence.request.promptIds.length));
      if (group.length > 0 && passTokens > chunk * PREFILL_CHUNKS_PER_PASS) break;
      let slot: number | null;
      try {
        slot = this.placeAdapter(sequence);
      } catch (error) {
        this.waiting.splice(this.waiting.indexOf(sequence), 1);
        this.sink.failed(sequence.request.id, (error as Error).message, errorCode(error));
        continue;
      }
      if (slot === null) continue;
      this.waiting.splice(this.waiting.indexOf(sequence), 1);
      sequence.slot = slot;
      if (!this.placeVirtualTokens(sequence)) continue;
      group.push(sequence);
      longest = Math.max(longest, sequence.request.promptIds.length);
      // The counts per tenant changed, so every waiting sequence is a candidate again.
      tried = new Set();
    }
    if (group.length === 0) return;
    try {
      for (let lane = 0; lane < this.lanes.length; lane++) {
        // Longest prompt first: the rows still prefilling in each chunk are then a prefix of the lane's group.
        const laneGroup = group
          .filter((s) => this.runner.laneFor(s.offset + s.feed.length + 1) === lane)
          .sort((a, b) => b.feed.length - a.feed.length);
        if (laneGroup.length === 0) continue;
        const firstRow = this.lanes[lane].length;
        this.lanes[lane].push(...laneGroup);
        laneGroup.forEach((s, i) => this.runner.writePrefix(lane, firstRow + i, s.slot));
        await this.prefill(laneGroup, firstRow, lane);
      }
    } catch (error) {
      this.failRunning(error as Error);
      return;
    }
    this.retire();
  }

  private nextCandidate(tried: Set<Sequence>, admitted: Sequence[]): Sequence | undefined {
    const runningByTenant = new Map<string, number>();
    for (const s of [...this.running, ...admitted]) runningByTenant.set(s.request.tenant, (runningByTenant.get(s.request.tenant) ?? 0) + 1);
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
    const slot = slots.place(ref.key, sequence.adapter, () => this.report.adapterCache.push({ tier: 'slot', event: 'eviction' }));
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
    if (prefix) sequence.offset = virtualTokens;
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
        if (!sequence.cancelled) this.sink.failed(sequence.request.id, error.message, errorCode(error));
        this.kick();
      },
    );
  }

  /** Prefills a group (longest prompt first) in a lane's rows from `firstRow` on, then samples each first token. */
  private async prefill(group: Sequence[], firstRow: number, lane: number): Promise<void> {
    const started = performance.now();
    const chunk = this.options.prefillChunk;
    for (let start = 0; start < group[0].feed.length; start += chunk) {
      const active = group.filter((s) => s.feed.length > start);
      const logits = await this.runner.forward(
        firstRow,
        active.map((s) => ({ tokens: s.feed.slice(start, start + chunk), position: s.offset + start, slot: s.slot })),
        lane,
      );
      active.forEach((sequence, row) => {
        if (sequence.feed.length > start + chunk) return;
        sequence.position = sequence.offset + sequence.feed.length;
        this.report.started.push({
          id: sequence.request.id,
          queueMs: started - sequence.submittedAt,
          prefillMs: performance.now() - started,
          adapterLoad: sequence.adapterLoad,
        });
        this.accept(sequence, logits.subarray(row * this.vocabSize, (row + 1) * this.vocabSize));
      });
    }
  }

  /** One decode step: each lane with sequences runs its own forward pass. */
  private async decode(): Promise<void> {
    this.promote();
    for (let lane = 0; lane < this.lanes.length; lane++) {
      const running = this.lanes[lane];
      if (running.length === 0) continue;
      let logits: Float32Array;
      try {
        logits = await this.runner.forward(0, running.map((s) => ({ tokens: [s.nextToken], position: s.position, slot: s.slot })), lane);
      } catch (error) {
        this.failRunning(error as Error);
        return;
      }
      running.forEach((sequence, row) => {
        sequence.position++;
        if (!sequence.finish) this.accept(sequence, logits.subarray(row * this.vocabSize, (row + 1) * this.vocabSize));
      });
    }
    this.retire();
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
    for (const sequence of this.lanes.flatMap((running) => running.splice(0))) {
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
      host: { entries: this.hostCache.entries, bytes: this.hostCache.bytes },
    };
  }
}

function errorCode(error: unknown): string {
  return error instanceof AdapterError ? 'invalid_adapter' : 'adapter_unavailable';
}

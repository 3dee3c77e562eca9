/**
 * Runs the generated decoder graph on onnxruntime: feeds the JavaScript KV cache, RoPE tables, masks and
 * adapter slots, and writes each step's new keys/values back into the cache. One instance per engine thread;
 * `session.run` blocks its thread, so it must never run on the HTTP thread.
 */
import * as ort from 'onnxruntime-node';
import { buildDecoderGraphs, type DecoderGraphs, GRAPH_INPUTS, GRAPH_OUTPUTS, SERVING_GRAPHS, type ServingGraph } from '../graph/decoder-graph.ts';
import { EXTERNAL_DATA_FILE } from '../graph/onnx-builder.ts';
import { PEFT_INPUTS, PROBE_OUTPUT, PROBE_SITES, type ProbeSite } from '../graph/peft-blocks.ts';
import { PREFILL_NEW_KEY_VALUES, TOKEN_GROUP_INPUTS } from '../graph/token-groups.ts';
import type { Adapter } from '../adapters/adapter.ts';
import type { BaseModel, LlamaConfig } from '../model/types.ts';
import { AdapterSegments } from './adapter-segments.ts';
import { AdapterSlots } from './adapter-slots.ts';
import { completeDoraLayout, type SlotReadyAdapter } from './slot-ready-adapter.ts';
import { baseRowNorms, withDoraScales, type BaseRowNorms } from './dora-scales.ts';
import { KvCache } from './kv-cache.ts';
import { MASKED, PassFeeds, PREFILL_CACHE_INPUTS } from './pass-feeds.ts';
import { RopeTables } from './rope.ts';
import { RowFamilyWeights } from './row-family-weights.ts';
import { createSessions, openServingSessions, type SessionSource } from './saved-sessions.ts';

export type ExecutionProvider = 'cpu' | 'cuda';

/** The serving graphs in memory, or as ONNX files (a compiled-model cache entry) with their weights beside them. */
export type ServingGraphs = DecoderGraphs | Record<ServingGraph, string>;

export interface RunnerOptions {
  /** Rows the KV cache holds: the most sequences decoded together. */
  maxBatch: number;
  /** Adapter slots (not counting slot 0, "no adapter"). */
  adapterSlots: number;
  /** Slot rank: adapters of lower rank are zero-padded, higher ranks refused. */
  maxLoraRank: number;
  /** Longest sequence (prompt + completion); defaults to the model's maximum. */
  maxPositions?: number;
  executionProvider?: ExecutionProvider;
  /** Intra-op threads; onnxruntime picks when absent. */
  threads?: number;
  /**
   * Whether idle intra-op threads spin between operators (onnxruntime's default) rather than sleep. Spinning
   * saves a wake-up per parallel operator on cores of its own; on cores shared with other processes the spinning
   * threads take the time the working ones need (src/graph/README.md, LoRA floor).
   */
  threadSpinning?: boolean;
  /** Sequences needing more cache positions than this decode in the long lane (see `lanes`); default 1024. */
  longSequencePositions?: number;
  /**
   * Whether a session of the mixed graph runs LoRA passes and a lane's decode rows with a prompt chunk in one pass
   * (default true). Off saves that session's memory and start-up (its own pre-packed weights: about 0.75 GiB and
   * 0.6 s on SmolLM2-135M's shape in float32); LoRA passes then run on the adapter graph, and a step's prompt chunk
   * in a pass after its decode pass.
   */
  mixedPasses?: boolean;
}

/** Default boundary of the long lane; below about 500 positions the extra pass costs more than it saves. */
const LONG_SEQUENCE_POSITIONS = 1024;

/** Rows that run together in one forward pass: their KV cache (one bucket width) and adapters. */
export interface BatchLane {
  cache: KvCache;
  adapters: AdapterSegments;
  /** The rows' inputs of the PEFT families beside LoRA (scales, bottleneck adapters). */
  families: RowFamilyWeights;
}

/** One sequence's part of a forward pass. */
export interface StepRow {
  /** Tokens to feed this step; rows may feed different numbers (shorter rows are padded, the padding discarded). */
  tokens: number[];
  /** Tokens of this sequence already in the cache; the new ones take the positions after them. */
  position: number;
  /** Adapter slot (0 = base model). */
  slot: number;
}

/** Contiguous rows of a lane and what each feeds this pass. */
export interface RowRange {
  firstRow: number;
  rows: StepRow[];
}

/** The logits of a mixed pass's decode rows and prefill rows, `[rows, vocab]` each. */
export interface MixedLogits {
  decode: Float32Array;
  prefill: Float32Array;
}

/** A session of each serving graph; the mixed graph's only when RunnerOptions.mixedPasses is not off. */
type ServingSessions = Record<Exclude<ServingGraph, 'mixed'>, ort.InferenceSession> & { mixed?: ort.InferenceSession };

/** Rows pushed through each layer's base projections (probeBase), per site: [layers·rows, in] row-major. */
export interface BaseProbe {
  rows: number;
  inputs: Record<ProbeSite, Float32Array>;
}
export class ModelRunner {
  /**
   * Lane 0 holds sequences of up to `longSequencePositions` positions, lane 1 (when the context is longer) the
   * rest, each run as its own forward pass. A pass attends over its whole cache bucket, so in one shared batch
   * a single long sequence would make every row pay for its length (measured: 16 rows of SmolLM2-135M's shape
   * at 64 positions step in 51 ms, or in 158 ms when one of them is at 1984); a second pass costs about one
   * single-row step.
   */
  readonly lanes: BatchLane[];
  readonly slots: AdapterSlots;
  readonly config: LlamaConfig;
  /** Most sequences in all lanes together; each lane can hold all of them. */
  readonly maxBatch: number;
  private readonly longSequencePositions: number;
  private readonly rope: RopeTables;
  /** Builds the inputs of each pass beside its tokens' positions. */
  private readonly passFeeds: PassFeeds;
  /** The probe pass's one row, on no adapter. */
  private readonly probeRow: { adapters: AdapterSegments; families: RowFamilyWeights };

  private constructor(
    /** `base` runs passes whose rows all use the base model, `mixed` (when there) LoRA rows, `adapters` the rest. */
    private readonly sessions: ServingSessions,
    config: LlamaConfig,
    options: RunnerOptions,
    /** Squared row norms of the base projections, for DoRA (see dora-scales.ts). */
    private readonly baseRowNorms: BaseRowNorms,
    /** Whether the sessions opened from onnxruntime's saved optimized form (saved-sessions.ts) or were built. */
    readonly sessionSource: SessionSource,
  ) {
    this.config = config;
    this.maxBatch = options.maxBatch;
    this.rope = new RopeTables(config);
    this.slots = new AdapterSlots(config, options.adapterSlots, options.maxLoraRank);
    this.passFeeds = new PassFeeds(config, this.slots);
    const maxPositions = options.maxPositions ?? config.maxPositions;
    this.longSequencePositions = Math.min(options.longSequencePositions ?? LONG_SEQUENCE_POSITIONS, maxPositions);
    const laneLimits = maxPositions > this.longSequencePositions ? [this.longSequencePositions, maxPositions] : [maxPositions];
    this.lanes = laneLimits.map((limit) => ({
      cache: new KvCache(config, options.maxBatch, limit),
      adapters: new AdapterSegments(this.slots, Math.min(options.maxBatch, options.adapterSlots)),
      families: new RowFamilyWeights(this.slots, options.maxBatch),
    }));
    this.probeRow = { adapters: new AdapterSegments(this.slots, 1), families: new RowFamilyWeights(this.slots, 1) };
  }

  static async create(model: BaseModel, options: RunnerOptions): Promise<ModelRunner> {
    return ModelRunner.fromGraphs(buildDecoderGraphs(model), model.config, options, baseRowNorms(model));
  }

  /**
   * A runner for the serving graphs already built, in memory or as ONNX files with their external weights beside
   * them (their builder's model weights may be dropped first, once `rowNorms` = baseRowNorms(model) is taken).
   */
  static async fromGraphs(graphs: ServingGraphs, config: LlamaConfig, options: RunnerOptions, rowNorms: BaseRowNorms): Promise<ModelRunner> {
    const provider = options.executionProvider ?? 'cpu';
    const sessionOptions: ort.InferenceSession.SessionOptions = {
      executionProviders: [provider],
      graphOptimizationLevel: 'all',
      ...(options.threads ? { intraOpNumThreads: options.threads } : {}),
      interOpNumThreads: 1,
      // Threads spin between a pass's operators but stop as soon as the pass returns: left spinning (onnxruntime's
      // default), they held a core for tens of milliseconds after every pass, leaving an adapter load phase run
      // between passes, or the next pass on another session, one core (src/engine/README.md, "Threads stop spinning
      // when a pass returns").
      extra: { session: { force_spinning_stop: '1', ...(options.threadSpinning === false ? { intra_op: { allow_spinning: '0' } } : {}) } },
    };
    const kinds = SERVING_GRAPHS.filter((kind) => kind !== 'mixed' || options.mixedPasses !== false);
    try {
      // Graphs in memory share one weight buffer. Files (a compiled-model cache entry) have their weights beside
      // them, and on the CPU their sessions open from onnxruntime's optimized form saved with them.
      const opened =
        'models' in graphs
          ? { sessions: await createSessions(kinds, (kind) => graphs.models[kind], { ...sessionOptions, externalData: [{ path: EXTERNAL_DATA_FILE, data: graphs.weights }] }), source: 'built' as const }
          : provider === 'cpu'
            ? await openServingSessions(graphs, kinds, sessionOptions)
            : { sessions: await createSessions(kinds, (kind) => graphs[kind], sessionOptions), source: 'built' as const };
      return new ModelRunner(opened.sessions as ServingSessions, config, options, rowNorms, opened.source);
    } catch (error) {
      if (provider === 'cuda') {
        throw new Error(
          `the CUDA execution provider is not available here (${(error as Error).message}); ` +
            'install onnxruntime-node with ONNXRUNTIME_NODE_INSTALL=cuda12 on a machine with CUDA 12 and cuDNN 9, or use EXECUTION_PROVIDER=cpu',
        );
      }
      throw error;
    }
  }

  /** Completes what an adapter needs from the base before it can take a slot (DoRA's row scales). */
  async prepareAdapter(adapter: Adapter): Promise<Adapter> {
    return adapter.family === 'dora' ? withDoraScales(adapter, this, this.baseRowNorms) : adapter;
  }

  /** prepareAdapter for an adapter already laid out for a slot (on the loader thread): DoRA's scales added. */
  async completeAdapter(ready: SlotReadyAdapter): Promise<SlotReadyAdapter> {
    if (!ready.doraPending) return ready;
    return completeDoraLayout(this.config, ready, await withDoraScales(ready.doraPending, this, this.baseRowNorms));
  }

  /**
   * Faults in the next `maxBytes` of the memory a burst of adapter requests first writes, the short lane's adapter
   * stacks (19.5 MB per r=16 adapter of the 135M shape); false once all of it is (prefault.ts).
   */
  prefault(maxBytes: number): boolean {
    return this.lanes[0].adapters.prefault(maxBytes);
  }

  /** The lane for a sequence that needs `positions` cache positions. */
  laneFor(positions: number): number {
    return positions > this.longSequencePositions && this.lanes.length > 1 ? 1 : 0;
  }

  /**
   * One forward pass over rows [firstRow, firstRow + rows.length) of a lane. Returns the last position's
   * logits, `[rows, vocab]`, and leaves the new keys/values in the lane's cache. A pass with a row on an adapter
   * runs a graph with adapters (`graphFor`), any other the base graph. Each graph has its own session and thread
   * pool; since the threads stop spinning when a pass returns, a pass after one on another session costs what it
   * costs after one on its own (src/engine/README.md, "Threads stop spinning when a pass returns").
   */
  async forward(firstRow: number, rows: StepRow[], lane = 0): Promise<Float32Array> {
    if (rows.some((r) => r.tokens.length === 0)) throw new Error('every row of a step must feed at least one token');
    const graph = this.graphFor(rows);
    if (graph === 'mixed') {
      const none = { firstRow, rows: [] };
      if (rows.every((row) => row.tokens.length === 1)) return (await this.runMixed(lane, { firstRow, rows }, none)).decode;
      return (await this.runMixed(lane, none, { firstRow, rows })).prefill;
    }
    const c = this.config;
    const { cache, adapters, families } = this.lanes[lane];
    const batch = rows.length;
    const tokens = Math.max(...rows.map((r) => r.tokens.length));
    cache.ensure(firstRow + batch, Math.max(...rows.map((r) => r.position + r.tokens.length)));

    const inputIds = new BigInt64Array(batch * tokens);
    const ropeStride = this.rope.tokenStride;
    const cos = new Float32Array(batch * tokens * ropeStride);
    const sin = new Float32Array(batch * tokens * ropeStride);
    const logitsPosition = new BigInt64Array(batch * c.hiddenSize);
    rows.forEach((row, b) => {
      // Padding (token 0) follows a shorter row's real tokens: causal masking keeps it out of their attention,
      // and its keys and values are never written to the cache.
      for (let t = 0; t < tokens; t++) {
        inputIds[b * tokens + t] = BigInt(row.tokens[t] ?? 0);
        this.rope.fill(cos, sin, b * tokens + t, row.position + t);
      }
      logitsPosition.fill(BigInt(row.tokens.length - 1), b * c.hiddenSize, (b + 1) * c.hiddenSize);
    });

    const feeds: Record<string, ort.Tensor> = {
      ...this.passFeeds.tokens(inputIds, cos, sin, [batch, tokens]),
      ...this.passFeeds.cache(cache, { firstRow, rows }, tokens, GRAPH_INPUTS),
      [GRAPH_INPUTS.logitsPosition]: new ort.Tensor('int64', logitsPosition, [batch, 1, c.hiddenSize]),
    };
    if (graph === 'adapters') {
      Object.assign(feeds, this.passFeeds.softPrompts(rows, tokens), this.passFeeds.noProbes);
      this.passFeeds.adapters(feeds, { adapters, families }, firstRow, rows.map((r) => r.slot), tokens);
    }

    const result = await this.sessions[graph].run(feeds);
    const newKeyValues = result[GRAPH_OUTPUTS.newKeyValues].data as Float32Array;
    cache.writeStep(newKeyValues, firstRow, batch, tokens, rows.map((r) => r.position), rows.map((r) => r.tokens.length));
    return result[GRAPH_OUTPUTS.logits].data as Float32Array;
  }

  /**
   * Whether rows can share a mixed pass: each is on the base model or a LoRA adapter (with or without a prefix,
   * which lives in the cache). Soft prompts and the families with per-row scales or bottleneck layers run on the
   * adapter graph.
   */
  canMix(rows: StepRow[]): boolean {
    return this.sessions.mixed !== undefined && rows.every(({ slot }) => slot === 0 || !(this.slots.usesFixedInputs(slot) || this.slots.bottleneckWidthOf(slot) > 0 || this.slots.promptOf(slot).softPrompt));
  }

  /** The graph a pass runs on: base rows alone on `base`, LoRA on `mixed` (when there), the rest on `adapters`. */
  private graphFor(rows: StepRow[]): ServingGraph {
    if (rows.every((row) => row.slot === 0)) return 'base';
    return this.canMix(rows) ? 'mixed' : 'adapters';
  }

  /**
   * One pass of a lane's decode rows (one token each) and prefill rows (a prompt chunk each) together, on the mixed
   * graph (every row must pass `canMix`): the projections run once over all their tokens, and each group attends
   * as a pass of its own would (src/graph/token-groups.ts), so its logits and keys and values are those of the two
   * passes run one after the other. Either group may be empty.
   */
  forwardMixed(lane: number, decode: RowRange, prefill: RowRange): Promise<MixedLogits> {
    return this.runMixed(lane, decode, prefill);
  }

  /** forwardMixed, which `forward` also runs for a pass of one group (so that each pass enters the runner once). */
  private async runMixed(lane: number, decode: RowRange, prefill: RowRange): Promise<MixedLogits> {
    const c = this.config;
    const { cache, adapters } = this.lanes[lane];
    const all = [...decode.rows, ...prefill.rows];
    if (all.some((r) => r.tokens.length === 0)) throw new Error('every row of a step must feed at least one token');
    if (decode.rows.some((r) => r.tokens.length !== 1)) throw new Error('decode rows feed one token each');
    const rowsUsed = (range: RowRange) => (range.rows.length > 0 ? range.firstRow + range.rows.length : 0);
    cache.ensure(Math.max(rowsUsed(decode), rowsUsed(prefill)), Math.max(...all.map((r) => r.position + r.tokens.length)));
    const decodeRows = decode.rows.length;
    const prefillRows = prefill.rows.length;
    const width = Math.max(1, ...prefill.rows.map((r) => r.tokens.length));
    const tokens = decodeRows + prefillRows * width;

    // Flat tokens: each decode row's, then each prefill row's `width` (padding after a shorter prompt's end).
    const inputIds = new BigInt64Array(tokens);
    const cos = new Float32Array(tokens * this.rope.tokenStride);
    const sin = new Float32Array(tokens * this.rope.tokenStride);
    const tokenSlots = new Array<number>(tokens);
    const logitsTokens = new BigInt64Array(decodeRows + prefillRows);
    const place = (index: number, row: StepRow, t: number) => {
      inputIds[index] = BigInt(row.tokens[t] ?? 0);
      this.rope.fill(cos, sin, index, row.position + t);
      tokenSlots[index] = row.slot;
    };
    decode.rows.forEach((row, b) => {
      place(b, row, 0);
      logitsTokens[b] = BigInt(b);
    });
    prefill.rows.forEach((row, b) => {
      const first = decodeRows + b * width;
      for (let t = 0; t < width; t++) place(first + t, row, t);
      logitsTokens[decodeRows + b] = BigInt(first + row.tokens.length - 1);
    });

    const feeds: Record<string, ort.Tensor> = {
      ...this.passFeeds.tokens(inputIds, cos, sin, [tokens, 1]),
      ...this.passFeeds.cache(cache, decode, 1, GRAPH_INPUTS),
      ...this.passFeeds.cache(cache, prefill, width, PREFILL_CACHE_INPUTS),
      [TOKEN_GROUP_INPUTS.groupTokens]: new ort.Tensor('int64', BigInt64Array.of(BigInt(decodeRows), BigInt(prefillRows * width)), [2]),
      [TOKEN_GROUP_INPUTS.prefillShape]: new ort.Tensor('int64', BigInt64Array.of(BigInt(prefillRows), BigInt(width)), [2]),
      [TOKEN_GROUP_INPUTS.logitsTokens]: new ort.Tensor('int64', logitsTokens, [logitsTokens.length]),
    };
    // A pass starting at the lane's first row covers every row of the lane that decodes.
    this.passFeeds.lora(feeds, adapters, tokenSlots, 1, (decodeRows > 0 ? decode.firstRow : prefill.firstRow) === 0);

    const result = await this.sessions.mixed!.run(feeds);
    const positions = (range: RowRange) => range.rows.map((r) => r.position);
    if (decodeRows > 0) cache.writeStep(result[GRAPH_OUTPUTS.newKeyValues].data as Float32Array, decode.firstRow, decodeRows, 1, positions(decode), decode.rows.map(() => 1));
    if (prefillRows > 0) {
      cache.writeStep(result[PREFILL_NEW_KEY_VALUES].data as Float32Array, prefill.firstRow, prefillRows, width, positions(prefill), prefill.rows.map((r) => r.tokens.length));
    }
    const logits = result[GRAPH_OUTPUTS.logits].data as Float32Array;
    return { decode: logits.subarray(0, decodeRows * c.vocabSize), prefill: logits.subarray(decodeRows * c.vocabSize) };
  }

  /**
   * Pushes rows through every layer's base projections, exactly as the graph's own weights compute them, and
   * returns per site `[layers·rows, out]`. Used once per DoRA adapter for its weight norms; it runs a one-token
   * pass beside, not in, the batch (its own empty cache and adapter rows).
   */
  async probeBase(probe: BaseProbe): Promise<Record<ProbeSite, Float32Array>> {
    const c = this.config;
    const fusedHeads = c.numHeads + 2 * c.numKvHeads;
    const group = c.numHeads / c.numKvHeads;
    const cos = new Float32Array(this.rope.tokenStride);
    const sin = new Float32Array(this.rope.tokenStride);
    this.rope.fill(cos, sin, 0, 0);
    const feeds: Record<string, ort.Tensor> = {
      [GRAPH_INPUTS.inputIds]: new ort.Tensor('int64', new BigInt64Array(1), [1, 1]),
      [GRAPH_INPUTS.ropeCos]: new ort.Tensor('float32', cos, [1, 1, fusedHeads, c.headDim]),
      [GRAPH_INPUTS.ropeSin]: new ort.Tensor('float32', sin, [1, 1, fusedHeads, c.headDim]),
      // The one cache position is empty; the token attends to itself.
      [GRAPH_INPUTS.attentionMask]: new ort.Tensor('float32', Float32Array.from({ length: 2 * group }, (_, i) => (i % 2 === 0 ? MASKED : 0)), [1, 1, group, 2]),
      [GRAPH_INPUTS.attentionSplit]: new ort.Tensor('int64', BigInt64Array.of(1n, 1n), [2]),
      [GRAPH_INPUTS.logitsPosition]: new ort.Tensor('int64', new BigInt64Array(c.hiddenSize), [1, 1, c.hiddenSize]),
      ...this.passFeeds.noSoftPrompts,
    };
    const emptyCache = new Float32Array(c.numKvHeads * c.headDim);
    for (let l = 0; l < c.numLayers; l++) {
      feeds[GRAPH_INPUTS.pastKey(l)] = new ort.Tensor('float32', emptyCache, [1, c.numKvHeads, c.headDim, 1]);
      feeds[GRAPH_INPUTS.pastValue(l)] = new ort.Tensor('float32', emptyCache, [1, c.numKvHeads, 1, c.headDim]);
    }
    feeds[PEFT_INPUTS.probing] = new ort.Tensor('bool', [true], [1]);
    for (const site of PROBE_SITES) {
      feeds[PEFT_INPUTS.probe(site)] = new ort.Tensor('float32', probe.inputs[site], [c.numLayers * probe.rows, this.passFeeds.probeWidths[site]]);
    }
    this.passFeeds.adapters(feeds, this.probeRow, 0, [0], 1);
    const result = await this.sessions.adapters.run(feeds);
    return Object.fromEntries(PROBE_SITES.map((site) => [site, result[PROBE_OUTPUT(site)].data as Float32Array])) as Record<ProbeSite, Float32Array>;
  }

  /** Writes the prefix of the adapter in `slot` (prefix tuning; nothing for other families) into a lane's row. */
  writePrefix(lane: number, row: number, slot: number): void {
    const { prefix, virtualTokens } = this.slots.promptOf(slot);
    if (prefix) this.lanes[lane].cache.writePrefix(row, prefix, virtualTokens);
  }

  /**
   * Moves a sequence's cache row within a lane (to keep the lane's rows contiguous) with its family inputs; its
   * LoRA follows its slot.
   */
  moveRow(from: number, to: number, positions: number, lane = 0): void {
    this.lanes[lane].cache.moveRow(from, to, positions);
    this.lanes[lane].families.move(from, to);
  }

  /**
   * Copies a sequence's `positions` cached tokens to a row of another lane. Its adapter joins that lane's stacks
   * at the lane's next forward pass.
   */
  moveToLane(fromLane: number, fromRow: number, toLane: number, toRow: number, positions: number): void {
    this.lanes[toLane].cache.copyRowFrom(this.lanes[fromLane].cache, fromRow, toRow, positions);
  }

  async close(): Promise<void> {
    await Promise.all(Object.values(this.sessions).map((session) => session.release()));
  }
}

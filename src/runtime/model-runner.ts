/**
 * Runs the generated decoder graph on onnxruntime: feeds the JavaScript KV cache, RoPE tables, masks and
 * adapter slots, and writes each step's new keys/values back into the cache. One instance per engine thread;
 * `session.run` blocks its thread, so it must never run on the HTTP thread.
 */
import * as ort from 'onnxruntime-node';
import { buildDecoderGraph, GRAPH_INPUTS, GRAPH_OUTPUTS } from '../graph/decoder-graph.ts';
import { LORA_INPUTS, LORA_SEGMENT_INPUTS } from '../graph/lora-delta.ts';
import { type BuiltModel, EXTERNAL_DATA_FILE } from '../graph/onnx-builder.ts';
import type { BaseModel, LlamaConfig } from '../model/types.ts';
import { AdapterSegments } from './adapter-segments.ts';
import { AdapterSlots, loraInputShapes } from './adapter-slots.ts';
import { KvCache } from './kv-cache.ts';
import { RopeTables } from './rope.ts';

export type ExecutionProvider = 'cpu' | 'cuda';

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
  /** Sequences needing more cache positions than this decode in the long lane (see `lanes`); default 1024. */
  longSequencePositions?: number;
}

/** Default boundary of the long lane; below about 500 positions the extra pass costs more than it saves. */
const LONG_SEQUENCE_POSITIONS = 1024;

/** Rows that run together in one forward pass: their KV cache (one bucket width) and adapters. */
export interface BatchLane {
  cache: KvCache;
  adapters: AdapterSegments;
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

const MASKED = Number.NEGATIVE_INFINITY;
const EMPTY = new Float32Array(0);

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
  /** Rank-0 stand-ins fed when no row of a pass uses an adapter, so the LoRA branch costs almost nothing. */
  private readonly rankZeroShapes: ReturnType<typeof loraInputShapes>;

  private constructor(
    private readonly session: ort.InferenceSession,
    config: LlamaConfig,
    options: RunnerOptions,
  ) {
    this.config = config;
    this.maxBatch = options.maxBatch;
    this.rope = new RopeTables(config);
    this.slots = new AdapterSlots(config, options.adapterSlots, options.maxLoraRank);
    const maxPositions = options.maxPositions ?? config.maxPositions;
    this.longSequencePositions = Math.min(options.longSequencePositions ?? LONG_SEQUENCE_POSITIONS, maxPositions);
    const laneLimits = maxPositions > this.longSequencePositions ? [this.longSequencePositions, maxPositions] : [maxPositions];
    this.lanes = laneLimits.map((limit) => ({
      cache: new KvCache(config, options.maxBatch, limit),
      adapters: new AdapterSegments(this.slots, Math.min(options.maxBatch, options.adapterSlots)),
    }));
    this.rankZeroShapes = loraInputShapes(config, 0);
  }

  static async create(model: BaseModel, options: RunnerOptions): Promise<ModelRunner> {
    return ModelRunner.fromGraph(buildDecoderGraph(model), model.config, options);
  }

  /** A runner for a decoder graph already built (its builder's model weights may be dropped first). */
  static async fromGraph(graph: BuiltModel, config: LlamaConfig, options: RunnerOptions): Promise<ModelRunner> {
    const provider = options.executionProvider ?? 'cpu';
    let session: ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(graph.modelBytes, {
        executionProviders: [provider],
        graphOptimizationLevel: 'all',
        ...(options.threads ? { intraOpNumThreads: options.threads } : {}),
        interOpNumThreads: 1,
        externalData: [{ path: EXTERNAL_DATA_FILE, data: graph.weights }],
      });
    } catch (error) {
      if (provider === 'cuda') {
        throw new Error(
          `the CUDA execution provider is not available here (${(error as Error).message}); ` +
            'install onnxruntime-node with ONNXRUNTIME_NODE_INSTALL=cuda12 on a machine with CUDA 12 and cuDNN 9, or use EXECUTION_PROVIDER=cpu',
        );
      }
      throw error;
    }
    return new ModelRunner(session, config, options);
  }

  /** The lane for a sequence that needs `positions` cache positions. */
  laneFor(positions: number): number {
    return positions > this.longSequencePositions && this.lanes.length > 1 ? 1 : 0;
  }

  /**
   * One forward pass over rows [firstRow, firstRow + rows.length) of a lane. Returns the last position's
   * logits, `[rows, vocab]`, and leaves the new keys/values in the lane's cache.
   */
  async forward(firstRow: number, rows: StepRow[], lane = 0): Promise<Float32Array> {
    const c = this.config;
    const { cache, adapters } = this.lanes[lane];
    const batch = rows.length;
    const tokens = Math.max(...rows.map((r) => r.tokens.length));
    if (rows.some((r) => r.tokens.length === 0)) throw new Error('every row of a step must feed at least one token');
    cache.ensure(firstRow + batch, Math.max(...rows.map((r) => r.position + r.tokens.length)));
    const width = cache.width;
    const groupSize = c.numHeads / c.numKvHeads;

    const inputIds = new BigInt64Array(batch * tokens);
    const ropeStride = this.rope.tokenStride;
    const cos = new Float32Array(batch * tokens * ropeStride);
    const sin = new Float32Array(batch * tokens * ropeStride);
    const pastMask = new Float32Array(batch * width);
    const selfMask = new Float32Array(batch * groupSize * tokens * tokens);
    const logitsPosition = new BigInt64Array(batch * c.hiddenSize);
    rows.forEach((row, b) => {
      // Padding (token 0) follows a shorter row's real tokens: causal masking keeps it out of their attention,
      // and its keys and values are never written to the cache.
      for (let t = 0; t < tokens; t++) {
        inputIds[b * tokens + t] = BigInt(row.tokens[t] ?? 0);
        this.rope.fill(cos, sin, b * tokens + t, row.position + t);
      }
      logitsPosition.fill(BigInt(row.tokens.length - 1), b * c.hiddenSize, (b + 1) * c.hiddenSize);
      pastMask.fill(MASKED, b * width + row.position, (b + 1) * width);
      for (let gq = 0; gq < groupSize * tokens; gq++) {
        const t = gq % tokens;
        const base = (b * groupSize * tokens + gq) * tokens;
        selfMask.fill(MASKED, base + t + 1, base + tokens);
      }
    });

    const fusedHeads = c.numHeads + 2 * c.numKvHeads;
    const feeds: Record<string, ort.Tensor> = {
      [GRAPH_INPUTS.inputIds]: new ort.Tensor('int64', inputIds, [batch, tokens]),
      [GRAPH_INPUTS.ropeCos]: new ort.Tensor('float32', cos, [batch, tokens, fusedHeads, c.headDim]),
      [GRAPH_INPUTS.ropeSin]: new ort.Tensor('float32', sin, [batch, tokens, fusedHeads, c.headDim]),
      [GRAPH_INPUTS.pastMask]: new ort.Tensor('float32', pastMask, [batch, 1, 1, width]),
      [GRAPH_INPUTS.selfMask]: new ort.Tensor('float32', selfMask, [batch, 1, groupSize * tokens, tokens]),
      [GRAPH_INPUTS.attentionSplit]: new ort.Tensor('int64', BigInt64Array.of(BigInt(width), BigInt(tokens)), [2]),
      [GRAPH_INPUTS.logitsPosition]: new ort.Tensor('int64', logitsPosition, [batch, 1, c.hiddenSize]),
    };
    const stride = cache.rowStride;
    for (let l = 0; l < c.numLayers; l++) {
      const range = [firstRow * stride, (firstRow + batch) * stride] as const;
      feeds[GRAPH_INPUTS.pastKey(l)] = new ort.Tensor('float32', cache.keys[l].subarray(...range), [batch, c.numKvHeads, c.headDim, width]);
      feeds[GRAPH_INPUTS.pastValue(l)] = new ort.Tensor('float32', cache.values[l].subarray(...range), [batch, c.numKvHeads, width, c.headDim]);
    }
    const plan = adapters.prepare(rows.map((r) => r.slot), tokens, firstRow === 0);
    feeds[LORA_SEGMENT_INPUTS.segmentRows] = new ort.Tensor('int64', plan.rows, [plan.adapters, plan.segmentRows]);
    feeds[LORA_SEGMENT_INPUTS.resultIndex] = new ort.Tensor('int64', plan.resultIndex, [batch, tokens]);
    feeds[LORA_SEGMENT_INPUTS.rowMask] = new ort.Tensor('float32', plan.rowMask, [batch, 1, 1]);
    for (let l = 0; l < c.numLayers; l++) {
      for (const [key, nameOf] of Object.entries(LORA_INPUTS) as [keyof typeof LORA_INPUTS, (l: number) => string][]) {
        const name = nameOf(l);
        if (plan.rank > 0) {
          const { data, shape, size } = adapters.buffers.get(name)!;
          feeds[name] = new ort.Tensor('float32', data.subarray(0, plan.adapters * size), [plan.adapters, ...shape]);
        } else {
          feeds[name] = new ort.Tensor('float32', EMPTY, [1, ...this.rankZeroShapes[key]]);
        }
      }
    }

    const result = await this.session.run(feeds);
    const newKeyValues = result[GRAPH_OUTPUTS.newKeyValues].data as Float32Array;
    cache.writeStep(newKeyValues, firstRow, batch, tokens, rows.map((r) => r.position), rows.map((r) => r.tokens.length));
    return result[GRAPH_OUTPUTS.logits].data as Float32Array;
  }

  /** Moves a sequence's cache row within a lane (to keep the lane's rows contiguous); its adapter follows its slot. */
  moveRow(from: number, to: number, lane = 0): void {
    this.lanes[lane].cache.moveRow(from, to);
  }

  /**
   * Copies a sequence's `positions` cached tokens to a row of another lane. Its adapter joins that lane's stacks
   * at the lane's next forward pass.
   */
  moveToLane(fromLane: number, fromRow: number, toLane: number, toRow: number, positions: number): void {
    this.lanes[toLane].cache.copyRowFrom(this.lanes[fromLane].cache, fromRow, toRow, positions);
  }

  async close(): Promise<void> {
    await this.session.release();
  }
}

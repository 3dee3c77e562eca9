/**
 * The inputs of a forward pass that the runner does not build itself: token ids and RoPE tables, each row group's
 * view of the KV cache and its mask, and the adapters' inputs (LoRA by segment, the other families per row, soft
 * prompts), with the stand-ins fed when no row of a pass uses an input. Every tensor views the caller's arrays (the
 * cache, the slots' buffers) without copying them.
 */
import * as ort from 'onnxruntime-node';
import { GRAPH_INPUTS } from '../graph/decoder-graph.ts';
import { LORA_INPUTS, LORA_SEGMENT_INPUTS } from '../graph/lora-delta.ts';
import { PEFT_INPUTS, PROBE_SITES, probeSiteWidths, type ProbeSite } from '../graph/peft-blocks.ts';
import { TOKEN_GROUP_INPUTS } from '../graph/token-groups.ts';
import type { LlamaConfig } from '../model/types.ts';
import type { AdapterSegments } from './adapter-segments.ts';
import type { AdapterSlots } from './adapter-slots.ts';
import type { KvCache } from './kv-cache.ts';
import type { RowRange, StepRow } from './model-runner.ts';
import type { RowFamilyWeights } from './row-family-weights.ts';
import { loraInputShapes } from './slot-layout.ts';

/** The input names of one group's cache view and mask (the decode group's are the other graphs' own). */
export interface CacheInputNames {
  attentionMask: string;
  attentionSplit: string;
  pastKey(layer: number): string;
  pastValue(layer: number): string;
}

/** The mixed graph's prefill group's cache view and mask. */
export const PREFILL_CACHE_INPUTS: CacheInputNames = {
  attentionMask: TOKEN_GROUP_INPUTS.prefillMask,
  attentionSplit: TOKEN_GROUP_INPUTS.prefillSplit,
  pastKey: TOKEN_GROUP_INPUTS.prefillPastKey,
  pastValue: TOKEN_GROUP_INPUTS.prefillPastValue,
};

/** An attention mask's value for a position a query must not attend to. */
export const MASKED = Number.NEGATIVE_INFINITY;
/** One broadcast element standing for a whole per-row input that no row of the step uses. */
const BROADCAST_IDENTITY = { 0: new Float32Array([0]), 1: new Float32Array([1]) } as const;

const EMPTY = new Float32Array(0);

export class PassFeeds {
  /**
   * Rank-0 stand-ins fed to the adapter graph when no row of its pass uses LoRA (other families only, or the probe
   * pass), so the LoRA nodes cost almost nothing; made once, since every input fed costs the binding a few
   * microseconds of its own.
   */
  private readonly rankZeroLora: Record<string, ort.Tensor> = {};
  /** Soft-prompt inputs of a pass with no virtual token: one broadcast identity element each. */
  readonly noSoftPrompts = {
    [PEFT_INPUTS.softPrompt]: new ort.Tensor('float32', BROADCAST_IDENTITY[0], [1, 1, 1]),
    [PEFT_INPUTS.tokenEmbeddingKept]: new ort.Tensor('float32', BROADCAST_IDENTITY[1], [1, 1, 1]),
  };
  /** Probe inputs with no rows: ordinary passes push nothing through the base projections. */
  readonly noProbes: Record<string, ort.Tensor>;
  /** Input width of each probe site. */
  readonly probeWidths: Record<ProbeSite, number>;

  constructor(
    private readonly config: LlamaConfig,
    private readonly slots: AdapterSlots,
  ) {
    const rankZeroShapes = loraInputShapes(config, 0);
    for (let l = 0; l < config.numLayers; l++) {
      for (const [key, nameOf] of Object.entries(LORA_INPUTS) as [keyof typeof LORA_INPUTS, (l: number) => string][]) {
        this.rankZeroLora[nameOf(l)] = new ort.Tensor('float32', EMPTY, [1, ...rankZeroShapes[key]]);
      }
    }
    this.probeWidths = Object.fromEntries(PROBE_SITES.map((site) => [site, probeSiteWidths(config)[site].in])) as Record<ProbeSite, number>;
    this.noProbes = { [PEFT_INPUTS.probing]: new ort.Tensor('bool', [false], [1]) };
    for (const site of PROBE_SITES) this.noProbes[PEFT_INPUTS.probe(site)] = new ort.Tensor('float32', EMPTY, [0, this.probeWidths[site]]);
  }

  /** Token ids `[shape]` and their RoPE tables `[shape, fused_heads, head_dim]`. */
  tokens(inputIds: BigInt64Array, cos: Float32Array, sin: Float32Array, shape: [number, number]): Record<string, ort.Tensor> {
    const c = this.config;
    const tables = [...shape, c.numHeads + 2 * c.numKvHeads, c.headDim];
    return {
      [GRAPH_INPUTS.inputIds]: new ort.Tensor('int64', inputIds, shape),
      [GRAPH_INPUTS.ropeCos]: new ort.Tensor('float32', cos, tables),
      [GRAPH_INPUTS.ropeSin]: new ort.Tensor('float32', sin, tables),
    };
  }

  /**
   * A group of rows' view of the cache (zero-copy, their rows of every layer) and its attention mask, for `tokens`
   * tokens per row, under the input names of that group.
   */
  cache(
    cache: KvCache,
    { firstRow, rows }: RowRange,
    tokens: number,
    names: CacheInputNames,
  ): Record<string, ort.Tensor> {
    const c = this.config;
    const { width, rowStride: stride } = cache;
    const batch = rows.length;
    const groupSize = c.numHeads / c.numKvHeads;
    const attended = width + tokens;
    const mask = new Float32Array(batch * groupSize * tokens * attended);
    rows.forEach((row, b) => {
      // Per grouped query: the cache positions past the row's length, then the step's later tokens.
      for (let gq = 0; gq < groupSize * tokens; gq++) {
        const start = (b * groupSize * tokens + gq) * attended;
        mask.fill(MASKED, start + row.position, start + width);
        mask.fill(MASKED, start + width + (gq % tokens) + 1, start + attended);
      }
    });
    const feeds: Record<string, ort.Tensor> = {
      [names.attentionMask]: new ort.Tensor('float32', mask, [batch, 1, groupSize * tokens, attended]),
      [names.attentionSplit]: new ort.Tensor('int64', BigInt64Array.of(BigInt(width), BigInt(tokens)), [2]),
    };
    const range = [firstRow * stride, (firstRow + batch) * stride] as const;
    for (let l = 0; l < c.numLayers; l++) {
      feeds[names.pastKey(l)] = new ort.Tensor('float32', cache.keys[l].subarray(...range), [batch, c.numKvHeads, c.headDim, width]);
      feeds[names.pastValue(l)] = new ort.Tensor('float32', cache.values[l].subarray(...range), [batch, c.numKvHeads, width, c.headDim]);
    }
    return feeds;
  }

  /** Soft prompts' inputs: their virtual tokens are the sequence's first positions, fed as embeddings. */
  softPrompts(rows: StepRow[], tokens: number): Record<string, ort.Tensor> {
    const c = this.config;
    const batch = rows.length;
    const prompts = rows.map((row) => this.slots.promptOf(row.slot));
    if (!rows.some((row, b) => prompts[b].softPrompt && row.position < prompts[b].virtualTokens)) return this.noSoftPrompts;
    const softPrompt = new Float32Array(batch * tokens * c.hiddenSize);
    const tokenEmbeddingKept = new Float32Array(batch * tokens).fill(1);
    rows.forEach((row, b) => {
      const { softPrompt: embeddings, virtualTokens } = prompts[b];
      if (!embeddings) return;
      for (let t = 0; t < row.tokens.length && row.position + t < virtualTokens; t++) {
        const from = (row.position + t) * c.hiddenSize;
        softPrompt.set(embeddings.subarray(from, from + c.hiddenSize), (b * tokens + t) * c.hiddenSize);
        tokenEmbeddingKept[b * tokens + t] = 0;
      }
    });
    return {
      [PEFT_INPUTS.softPrompt]: new ort.Tensor('float32', softPrompt, [batch, tokens, c.hiddenSize]),
      [PEFT_INPUTS.tokenEmbeddingKept]: new ort.Tensor('float32', tokenEmbeddingKept, [batch, tokens, 1]),
    };
  }

  /**
   * Feeds every adapter input for rows [firstRow, firstRow + slots.length): LoRA by segment, the other families
   * per row, each with a stand-in that costs almost nothing when no row of the pass uses it (rank 0 for LoRA and
   * bottleneck matrices, one identity element for scales and biases).
   */
  adapters(
    feeds: Record<string, ort.Tensor>,
    { adapters, families }: { adapters: AdapterSegments; families: RowFamilyWeights },
    firstRow: number,
    slots: number[],
    tokens: number,
  ): void {
    const batch = slots.length;
    this.lora(feeds, adapters, slots, tokens, firstRow === 0);
    const layout = families.prepare(firstRow, slots);
    const rowsOf = (name: string) => {
      const { data, shape, size } = families.buffers.get(name)!;
      return new ort.Tensor('float32', data.subarray(firstRow * size, (firstRow + batch) * size), [batch, ...shape]);
    };
    for (const [name, { group }] of families.inputs) {
      if (group === 'fixed') {
        // The activation choice is contracted by a MatMul, which does not broadcast its contracted axis.
        const whole = layout.fixed || name === PEFT_INPUTS.bnActivation;
        const identity = whole ? undefined : families.broadcastIdentity(name);
        feeds[name] = identity ? new ort.Tensor('float32', identity.data, identity.dims) : rowsOf(name);
      } else {
        feeds[name] = layout.bottleneckWidth > 0 ? rowsOf(name) : new ort.Tensor('float32', EMPTY, [batch, ...families.shapeAt(name, 0)]);
      }
    }
  }

  /** Feeds LoRA for a pass whose rows use `slots` with `tokens` tokens each: the stacked adapters and segments. */
  lora(feeds: Record<string, ort.Tensor>, adapters: AdapterSegments, slots: number[], tokens: number, mayShrink: boolean): void {
    const batch = slots.length;
    const plan = adapters.prepare(slots, tokens, mayShrink);
    feeds[LORA_SEGMENT_INPUTS.segmentRows] = new ort.Tensor('int64', plan.rows, [plan.adapters, plan.segmentRows]);
    feeds[LORA_SEGMENT_INPUTS.resultIndex] = new ort.Tensor('int64', plan.resultIndex, [batch, tokens]);
    feeds[LORA_SEGMENT_INPUTS.rowMask] = new ort.Tensor('float32', plan.rowMask, [batch, 1, 1]);
    if (plan.rank === 0) Object.assign(feeds, this.rankZeroLora);
    else {
      for (let l = 0; l < this.config.numLayers; l++) {
        for (const nameOf of Object.values(LORA_INPUTS)) {
          const { data, shape, size } = adapters.buffers.get(nameOf(l))!;
          feeds[nameOf(l)] = new ort.Tensor('float32', data.subarray(0, plan.adapters * size), [plan.adapters, ...shape]);
        }
      }
    }
  }
}

/**
 * Attention for the mixed graph's two groups of tokens: a pass whose tokens are laid out flat (`[N, 1, …]`, one
 * token a row) so that the projections and LoRA run once over every token of a step, while attention splits them
 * back into the rows they belong to. The first group is decode rows, one token each; the second is prefill rows,
 * each fed the same number of tokens (shorter prompts padded), flat row after row. Each group attends over its own
 * rows of the KV cache under its own mask, exactly as a pass of that group alone would, so a step carries its
 * decode rows and a prompt chunk in one pass instead of two (a pass's fixed cost, and the weights it streams, paid
 * once). Either group may be empty.
 */
import type { LlamaConfig } from '../model/types.ts';
import type { Dim, OnnxGraphBuilder } from './onnx-builder.ts';

export const TOKEN_GROUP_INPUTS = {
  /** `[2]` int64: tokens of the decode group (its rows) and of the prefill group (rows × width). */
  groupTokens: 'token_groups',
  /** `[2]` int64: the prefill group's rows and the tokens each is fed. */
  prefillShape: 'prefill_shape',
  prefillMask: 'prefill_attention_mask',
  prefillSplit: 'prefill_attention_split',
  prefillPastKey: (layer: number) => `prefill_past_key_t.${layer}`,
  prefillPastValue: (layer: number) => `prefill_past_value.${layer}`,
  /** `[R]` int64: the flat tokens whose logits the pass returns (each decode row's, each prefill row's last real one). */
  logitsTokens: 'logits_tokens',
} as const;

/**
 * Symbolic axes: the pass's flat tokens (the mixed graph's batch axis), the decode group's rows (its cache rows),
 * the prefill group's rows, the tokens each is fed (its width), their product, and the grouped queries' width.
 */
const FLAT_TOKENS = 'batch';
export const DECODE_ROWS = 'decode_rows';
export const PREFILL_ROWS = 'prefill_rows';
export const PREFILL_WIDTH = 'prefill_tokens';
const PREFILL_FLAT = 'prefill_flat_tokens';
const PREFILL_GROUP_TOKENS = 'prefill_group_tokens';

/** `[prefill rows, layers·2·kv_heads, width, head_dim]`: the prefill group's new keys and values. */
export const PREFILL_NEW_KEY_VALUES = 'prefill_new_key_values';

/** One group's view of the KV cache and its mask, as `attendOverCache` reads them. */
export interface CacheView {
  pastKeyT: string;
  pastValue: string;
  mask: string;
  split: string;
}

export type AttendOverCache = (queriesGrouped: string, keys: string, values: string, cache: CacheView) => string;

export class TokenGroups {
  /** Per layer, each group's rotated keys and values (`[rows, kv_heads, tokens, head_dim]`), for the cache. */
  readonly decodeKeyValues: string[] = [];
  readonly prefillKeyValues: string[] = [];
  private readonly groupTokens: string;
  private readonly prefillMask: string;
  private readonly prefillSplit: string;
  private readonly shapes: Record<'queries' | 'queriesGrouped' | 'keys' | 'context' | 'contextFlat', string>;

  constructor(
    private readonly g: OnnxGraphBuilder,
    private readonly c: LlamaConfig,
  ) {
    const group = c.numHeads / c.numKvHeads;
    this.groupTokens = g.input(TOKEN_GROUP_INPUTS.groupTokens, 'int64', [2]);
    const prefillShape = g.input(TOKEN_GROUP_INPUTS.prefillShape, 'int64', [2]);
    this.prefillMask = g.input(TOKEN_GROUP_INPUTS.prefillMask, 'float32', [PREFILL_ROWS, 1, PREFILL_GROUP_TOKENS, 'prefill_attended']);
    this.prefillSplit = g.input(TOKEN_GROUP_INPUTS.prefillSplit, 'int64', [2]);
    // The prefill group's shapes, from its rows and width (computed once a pass, shared by every layer). Reshape's
    // 0 copies the input's dimension, which an empty group's is too.
    const rows = g.op('Slice', [prefillShape, g.constInt64([0]), g.constInt64([1])]);
    const width = g.op('Slice', [prefillShape, g.constInt64([1]), g.constInt64([2])]);
    const dims = (...parts: (string | number[])[]) => g.op('Concat', parts.map((part) => (typeof part === 'string' ? part : g.constInt64(part))), { axis: 0 });
    this.shapes = {
      queries: dims(rows, width, [c.numKvHeads, group, c.headDim]),
      queriesGrouped: dims(rows, [c.numKvHeads], g.op('Mul', [width, g.constInt64([group])]), [c.headDim]),
      keys: dims(rows, width, [c.numKvHeads, c.headDim]),
      context: dims(rows, [c.numKvHeads, group], width, [c.headDim]),
      contextFlat: dims(g.op('Mul', [rows, width]), [c.numKvHeads, group, c.headDim]),
    };
  }

  /**
   * Attention context `[N, kv_heads, group, head_dim]` of the flat tokens' grouped queries `[N, kv_heads, group,
   * head_dim]` and keys and values `[N, kv_heads, 1, head_dim]`: the decode group against `decodeCache`, the prefill
   * group, regrouped by row, against layer `layer`'s prefill cache view.
   */
  attend(layer: number, queries: string, keys: string, values: string, decodeCache: CacheView, attendOverCache: AttendOverCache): string {
    const { g, c } = this;
    const group = c.numHeads / c.numKvHeads;
    // Shapes declared: inference cannot name the axes of a Split by sizes fed or a Reshape to a computed shape (see
    // declareShape).
    const shaped = (value: string, ...dims: Dim[]) => g.declareShape(value, 'float32', dims);
    const split = (x: string, perToken: number) => {
      const [decode, prefill] = g.opMulti('Split', [x, this.groupTokens], 2, { axis: 0 });
      return [shaped(decode, DECODE_ROWS, c.numKvHeads, perToken, c.headDim), shaped(prefill, PREFILL_FLAT, c.numKvHeads, perToken, c.headDim)];
    };
    const [decodeQueries, prefillQueries] = split(queries, group);
    const [decodeKeys, prefillTokenKeys] = split(keys, 1);
    const [decodeValues, prefillTokenValues] = split(values, 1);
    this.decodeKeyValues.push(decodeKeys, decodeValues);
    const decodeContext = attendOverCache(decodeQueries, decodeKeys, decodeValues, decodeCache);

    // [rows·width, kv_heads, group, head_dim] → [rows, kv_heads, group·width, head_dim], grouped as a pass of its own.
    const rowQueries = shaped(g.op('Reshape', [prefillQueries, this.shapes.queries]), PREFILL_ROWS, PREFILL_WIDTH, c.numKvHeads, group, c.headDim);
    const groupedQueries = shaped(
      g.op('Reshape', [g.op('Transpose', [rowQueries], { perm: [0, 2, 3, 1, 4] }), this.shapes.queriesGrouped]),
      PREFILL_ROWS, c.numKvHeads, PREFILL_GROUP_TOKENS, c.headDim,
    );
    const byRow = (x: string) => g.op('Transpose', [shaped(g.op('Reshape', [x, this.shapes.keys]), PREFILL_ROWS, PREFILL_WIDTH, c.numKvHeads, c.headDim)], { perm: [0, 2, 1, 3] });
    const [prefillKeys, prefillValues] = [byRow(prefillTokenKeys), byRow(prefillTokenValues)];
    this.prefillKeyValues.push(prefillKeys, prefillValues);
    const prefillCache: CacheView = {
      pastKeyT: g.input(TOKEN_GROUP_INPUTS.prefillPastKey(layer), 'float32', [PREFILL_ROWS, c.numKvHeads, c.headDim, 'cache_len']),
      pastValue: g.input(TOKEN_GROUP_INPUTS.prefillPastValue(layer), 'float32', [PREFILL_ROWS, c.numKvHeads, 'cache_len', c.headDim]),
      mask: this.prefillMask,
      split: this.prefillSplit,
    };
    const prefillContext = attendOverCache(groupedQueries, prefillKeys, prefillValues, prefillCache);
    // And back: [rows, kv_heads, group·width, head_dim] → [rows·width, kv_heads, group, head_dim].
    const contextByRow = shaped(g.op('Reshape', [prefillContext, this.shapes.context]), PREFILL_ROWS, c.numKvHeads, group, PREFILL_WIDTH, c.headDim);
    const flatContext = shaped(g.op('Reshape', [g.op('Transpose', [contextByRow], { perm: [0, 3, 1, 2, 4] }), this.shapes.contextFlat]), PREFILL_FLAT, c.numKvHeads, group, c.headDim);
    return shaped(g.op('Concat', [decodeContext, flatContext], { axis: 0 }), FLAT_TOKENS, c.numKvHeads, group, c.headDim);
  }
}

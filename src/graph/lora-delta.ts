/**
 * The LoRA part of the decoder graph: every adapted projection's `scale·(x·Aᵀ)·Bᵀ` for a batch whose rows use
 * different adapters, or none, reading each distinct adapter's weights once per pass however many rows use it.
 *
 * Rows are grouped by adapter segment, as Punica's SGMV does: the pass is fed a stack of the N distinct adapters
 * its rows use (`[N, blocks, in, R]` for A, `[N, blocks, R, width]` for B) and, per segment, the batch rows on it
 * (`[N, M]`, M the most rows any adapter has; shorter segments repeat a row, whose extra result is never read).
 * The delta is then one batched matmul per weight over the segments — each segment's rows against its own
 * adapter, read once — and a Gather puts every row's result back in batch order; rows on no adapter are
 * multiplied by zero. With 16 rows on 16 adapters this reads what one copy per row reads; with 16 rows on 4
 * adapters it reads a quarter of it.
 *
 * The other formulations measured against this one (concatenated or transposed A, one GEMV per row, per-row
 * copies, a masked product over all adapters) and what each cost are in src/graph/README.md: with 16 distinct
 * adapters every layout ran at about 1.3× the time of reading the weights once, the rest being the fixed cost of
 * 240 small MatMuls a step; the 7/4/3/2 mix stays at 2.5–3.4×, and without its padding (4 segments of 4 rows)
 * only 13–16 % less: the same fixed cost weighs against a quarter of the bytes.
 */
import type { Dim, OnnxGraphBuilder } from './onnx-builder.ts';

/** Per layer: the stacked A and B inputs of each group of projections that read the same activation. */
export const LORA_INPUTS = {
  aQkv: (layer: number) => `lora_a_qkv.${layer}`,
  bQkv: (layer: number) => `lora_b_qkv.${layer}`,
  aO: (layer: number) => `lora_a_o.${layer}`,
  bO: (layer: number) => `lora_b_o.${layer}`,
  aGateUp: (layer: number) => `lora_a_gate_up.${layer}`,
  bGateUp: (layer: number) => `lora_b_gate_up.${layer}`,
  aDown: (layer: number) => `lora_a_down.${layer}`,
  bDown: (layer: number) => `lora_b_down.${layer}`,
} as const;

/** Per pass, shared by every layer: how batch rows map onto adapter segments. */
export const LORA_SEGMENT_INPUTS = {
  /** `[N, M]` int64: the batch rows of each segment (segment n uses the n-th adapter of the stacks). */
  segmentRows: 'lora_segment_rows',
  /** `[B, T]` int64: where each row's token finds its delta among the segments' `[N·M·T]` results. */
  resultIndex: 'lora_result_index',
  /** `[B, 1, 1]`: 1 for rows on an adapter, 0 for rows on the base model. */
  rowMask: 'lora_row_mask',
} as const;

/**
 * Symbolic axes: distinct adapters of the pass, the rank they are laid out at, the tokens of a segment (M·T) and
 * of all segments (N·M·T).
 */
const N = 'lora_adapters';
const R = 'lora_rank';
const SEGMENT_TOKENS = 'lora_segment_tokens';
const SEGMENT_RESULTS = 'lora_segment_results';

/** One group of projections sharing an activation: A blocks `[in, R]`, B blocks `[R, width]`. */
export interface LoraGroup {
  a: string;
  b: string;
  inDim: number;
  aBlocks: number;
  bBlocks: number;
  width: number;
  /**
   * Which A block's activation each B block reads, when they differ from one to one (q|k|v: q's columns span
   * several B blocks of k's width, each reading q's activation).
   */
  blockSources?: number[];
}

export class LoraDelta {
  private readonly segmentRows: string;
  private readonly resultIndex: string;
  private readonly rowMask: string;
  private readonly constants = new Map<string, string>();

  constructor(private readonly g: OnnxGraphBuilder) {
    this.segmentRows = g.input(LORA_SEGMENT_INPUTS.segmentRows, 'int64', [N, 'lora_segment_rows']);
    this.resultIndex = g.input(LORA_SEGMENT_INPUTS.resultIndex, 'int64', ['batch', 'tokens']);
    this.rowMask = g.input(LORA_SEGMENT_INPUTS.rowMask, 'float32', ['batch', 1, 1]);
  }

  /** The delta of a group for activation `x` `[B, T, in]`: `[B, T, bBlocks·width]`, B blocks side by side. */
  apply(x: string, group: LoraGroup): string {
    const g = this.g;
    const a = g.input(group.a, 'float32', [N, group.aBlocks, group.inDim, R]);
    const b = g.input(group.b, 'float32', [N, group.bBlocks, R, group.width]);
    // Shapes declared: inference cannot name the axis of Reshape's -1 (see declareShape).
    const shaped = (value: string, ...dims: Dim[]) => g.declareShape(value, 'float32', dims);
    // [N, M, T, in] → [N, 1, M·T, in]: each segment's tokens as the rows of one matmul per A block.
    const segmentX = shaped(g.op('Reshape', [g.op('Gather', [x, this.segmentRows], { axis: 0 }), this.constant([0, 1, -1, group.inDim])]), N, 1, SEGMENT_TOKENS, group.inDim);
    let u = shaped(g.op('MatMul', [segmentX, a]), N, group.aBlocks, SEGMENT_TOKENS, R);
    if (group.blockSources) u = shaped(g.op('Gather', [u, this.constant(group.blockSources)], { axis: 1 }), N, group.bBlocks, SEGMENT_TOKENS, R);
    let delta = shaped(g.op('MatMul', [u, b]), N, group.bBlocks, SEGMENT_TOKENS, group.width);
    if (group.bBlocks > 1) delta = shaped(g.op('Transpose', [delta], { perm: [0, 2, 1, 3] }), N, SEGMENT_TOKENS, group.bBlocks, group.width);
    const results = shaped(g.op('Reshape', [delta, this.constant([-1, group.bBlocks * group.width])]), SEGMENT_RESULTS, group.bBlocks * group.width);
    return g.op('Mul', [g.op('Gather', [results, this.resultIndex], { axis: 0 }), this.rowMask]);
  }

  /** One initializer per distinct constant, shared by every layer. */
  private constant(values: number[]): string {
    const key = values.join(',');
    let name = this.constants.get(key);
    if (!name) {
      name = this.g.constInt64(values, `lora_const_${this.constants.size}`);
      this.constants.set(key, name);
    }
    return name;
  }
}

/**
 * The decoder graph's inputs for the PEFT families beside LoRA, each per batch row so that one batch mixes
 * families; a row without a family feeds the identity (ones for scales, zeros for additive terms), and when no
 * row of a step uses an input the runner feeds a single broadcast identity element instead of a full tensor.
 *
 * - Soft prompts (prompt tuning, p-tuning): embeddings that replace the token embedding at virtual positions.
 * - Scales (IA3, DoRA): an input scale on o_proj and down_proj (IA3 feedforward modules) and an output scale on
 *   every projection group (IA3's other modules; DoRA's magnitude / ‖W + s·B·A‖, which multiplies base + LoRA).
 * - Bottleneck adapters: after attention and after the MLP, x ← x + h + up(f(down(α·h + γ·x))), the bottleneck
 *   width on the same per-row axis as LoRA ranks, f a per-row blend of the served non-linearities.
 * - Base probes: rows pushed through a layer's base projections, to compute DoRA's weight norms once per adapter
 *   from the weights the graph itself uses (empty at ordinary steps).
 */
import type { LlamaConfig } from '../model/types.ts';
import type { Dim, OnnxGraphBuilder } from './onnx-builder.ts';

export type ScaledInput = 'o' | 'down';
export type ScaledOutput = 'qkv' | 'o' | 'gate_up' | 'down';
export type BottleneckSite = 'attention' | 'output';
export type ProbeSite = 'qkv' | 'o' | 'gate_up' | 'down';

export const PROBE_SITES: readonly ProbeSite[] = ['qkv', 'o', 'gate_up', 'down'];
export const SCALED_INPUTS: readonly ScaledInput[] = ['o', 'down'];
export const SCALED_OUTPUTS: readonly ScaledOutput[] = ['qkv', 'o', 'gate_up', 'down'];
export const BOTTLENECK_SITES: readonly BottleneckSite[] = ['attention', 'output'];

/** Non-linearities a bottleneck row may select, in the order of the `bn_activation` weights. */
export const BLENDED_ACTIVATIONS = ['relu', 'gelu', 'gelu_new', 'silu', 'tanh'] as const;

export const PEFT_INPUTS = {
  /** [B, T, hidden]: a virtual token's embedding, zeros elsewhere. */
  softPrompt: 'soft_prompt',
  /** [B, T, 1]: 0 at virtual tokens (the token embedding is dropped), 1 elsewhere. */
  tokenEmbeddingKept: 'token_embedding_kept',
  scaleIn: (site: ScaledInput, layer: number) => `scale_in_${site}.${layer}`,
  scaleOut: (site: ScaledOutput, layer: number) => `scale_out_${site}.${layer}`,
  /** Per layer [B, hidden, R] / [B, 1, R] / [B, 1, R, hidden] / [B, 1, hidden] (see familyGraphInput). */
  bnDown: (site: BottleneckSite, layer: number) => `bn_down_${site}.${layer}`,
  bnDownBias: (site: BottleneckSite, layer: number) => `bn_down_bias_${site}.${layer}`,
  bnUp: (site: BottleneckSite, layer: number) => `bn_up_${site}.${layer}`,
  bnUpBias: (site: BottleneckSite, layer: number) => `bn_up_bias_${site}.${layer}`,
  /** [B, 1, 1]: α (weight of the sub-layer output) and γ (of the residual stream) in the adapter's input. */
  bnFromSublayer: 'bn_from_sublayer',
  bnFromResidual: 'bn_from_residual',
  /** [B, 1, 1, BLENDED_ACTIVATIONS.length]: one-hot choice of non-linearity. */
  bnActivation: 'bn_activation',
  /** [layers·P, in]: rows to push through each layer's base projection group, layer by layer. */
  probe: (site: ProbeSite) => `probe_${site}`,
  /** [1] bool: true on the pass that pushes probe rows (DoRA's weight norms), which then runs their matmuls. */
  probing: 'probing',
} as const;

/**
 * The graph input that carries a per-layer family block: every layer's blocks of one kind travel in one input,
 * stacked on the first axis after the batch (`scale_out_qkv.3` is layer 3's part of `scale_out_qkv`), since
 * onnxruntime-node spends a few microseconds on every input of every run whatever its size (measured: 850 inputs
 * cost about 5 ms of CPU a run). Blocks that are not per layer are their own input (`layer` undefined).
 */
export function familyGraphInput(blockName: string): { input: string; layer?: number } {
  const match = /^(.+)\.(\d+)$/.exec(blockName);
  return match ? { input: match[1], layer: Number(match[2]) } : { input: blockName };
}

/** Input and output widths of each probe site (the base projection group it goes through). */
export function probeSiteWidths(c: LlamaConfig): Record<ProbeSite, { in: number; out: number }> {
  const qDim = c.numHeads * c.headDim;
  const kvDim = c.numKvHeads * c.headDim;
  return {
    qkv: { in: c.hiddenSize, out: qDim + 2 * kvDim },
    o: { in: qDim, out: c.hiddenSize },
    gate_up: { in: c.hiddenSize, out: 2 * c.intermediateSize },
    down: { in: c.intermediateSize, out: c.hiddenSize },
  };
}

/** [layers·P, out] per site: every layer's probe rows through its base weights. */
export const PROBE_OUTPUT = (site: ProbeSite) => `probe_out_${site}`;

/** The widths of the activations the scales multiply: a projection group's input (`inWidth`) or output. */
function scaledWidths(c: LlamaConfig): { inWidth: Record<ScaledInput, number>; outWidth: Record<ScaledOutput, number> } {
  const widths = probeSiteWidths(c);
  return { inWidth: { o: widths.o.in, down: widths.down.in }, outWidth: { qkv: widths.qkv.out, o: widths.o.out, gate_up: widths.gate_up.out, down: widths.down.out } };
}

/** Per-row widths of the fixed-width family inputs (one batch row's block, without the batch axis). */
export function peftInputShapes(c: LlamaConfig): Map<string, { shape: number[]; identity: 0 | 1 }> {
  const shapes = new Map<string, { shape: number[]; identity: 0 | 1 }>();
  const { inWidth, outWidth } = scaledWidths(c);
  for (let l = 0; l < c.numLayers; l++) {
    for (const site of SCALED_INPUTS) shapes.set(PEFT_INPUTS.scaleIn(site, l), { shape: [1, inWidth[site]], identity: 1 });
    for (const site of SCALED_OUTPUTS) shapes.set(PEFT_INPUTS.scaleOut(site, l), { shape: [1, outWidth[site]], identity: 1 });
    for (const site of BOTTLENECK_SITES) shapes.set(PEFT_INPUTS.bnUpBias(site, l), { shape: [1, c.hiddenSize], identity: 0 });
  }
  shapes.set(PEFT_INPUTS.bnFromSublayer, { shape: [1, 1], identity: 0 });
  shapes.set(PEFT_INPUTS.bnFromResidual, { shape: [1, 1], identity: 0 });
  shapes.set(PEFT_INPUTS.bnActivation, { shape: [1, 1, BLENDED_ACTIVATIONS.length], identity: 0 });
  return shapes;
}

/**
 * Per-row shapes of the bottleneck inputs at width `rank`, and where their width axis lies: the last axis
 * (`columns`) or the second to last (`rows`).
 */
export function bottleneckInputShapes(c: LlamaConfig, rank: number): Map<string, { shape: number[]; axis: 'columns' | 'rows' }> {
  const shapes = new Map<string, { shape: number[]; axis: 'columns' | 'rows' }>();
  for (let l = 0; l < c.numLayers; l++) {
    for (const site of BOTTLENECK_SITES) {
      shapes.set(PEFT_INPUTS.bnDown(site, l), { shape: [c.hiddenSize, rank], axis: 'columns' });
      shapes.set(PEFT_INPUTS.bnDownBias(site, l), { shape: [1, rank], axis: 'columns' });
      shapes.set(PEFT_INPUTS.bnUp(site, l), { shape: [1, rank, c.hiddenSize], axis: 'rows' });
    }
  }
  return shapes;
}

/** The decoder graph's batch and token axes (decoder-graph.ts), which the family blocks' results keep. */
const ROW_AXES = ['batch', 'tokens'];
/** The symbolic width of every bottleneck input of a pass (the widest bottleneck among its rows). */
const BOTTLENECK_WIDTH = 'bottleneck_width';

/** The graph pieces, bound to one builder. */
export function peftBlocks(g: OnnxGraphBuilder, c: LlamaConfig) {
  /** A per-row input that may also be fed as one broadcast element: every axis symbolic. */
  const broadcastable = (name: string, rank: number) =>
    g.input(name, 'float32', Array.from({ length: rank }, (_, axis) => `${name}:${axis}`));
  const shared = new Map<string, string[]>();
  /** A family block as the graph reads it: the input, or its layer's part of the stacked input (split once). */
  const sharedInput = (blockName: string, rank: number) => {
    const { input, layer } = familyGraphInput(blockName);
    if (!shared.has(input)) {
      const value = broadcastable(input, rank);
      shared.set(input, layer === undefined ? [value] : g.opMulti('Split', [value], c.numLayers, { axis: 1, num_outputs: c.numLayers }));
    }
    return shared.get(input)![layer ?? 0];
  };
  const probeWidths = probeSiteWidths(c);
  const { inWidth, outWidth } = scaledWidths(c);
  /**
   * Declares `[batch, tokens, ...last]` as the shape of a value that broadcasts an activation against a family
   * input: inference cannot name its axes, as the input's are symbolic so that one element may stand in for it (see
   * declareShape; on SmolLM2-135M's shape the adapter graph's memory plan took about 1.7 s more without).
   */
  const rowsOf = (value: string, ...last: Dim[]) => g.declareShape(value, 'float32', [...ROW_AXES, ...last]);
  const unsqueezeBlend = g.constInt64([2], 'bn_blend_axis');
  const flatten = g.constInt64([0, 0, c.hiddenSize], 'bn_flat_shape');

  return {
    /** Token embeddings with virtual tokens' embeddings in their place (exact: one of the two terms is zero). */
    embed(tokenEmbeddings: string): string {
      const kept = broadcastable(PEFT_INPUTS.tokenEmbeddingKept, 3);
      return rowsOf(g.op('Add', [rowsOf(g.op('Mul', [tokenEmbeddings, kept]), c.hiddenSize), broadcastable(PEFT_INPUTS.softPrompt, 3)]), c.hiddenSize);
    },

    scaleInput(x: string, site: ScaledInput, layer: number): string {
      return rowsOf(g.op('Mul', [x, sharedInput(PEFT_INPUTS.scaleIn(site, layer), 3)]), inWidth[site]);
    },

    scaleOutput(y: string, site: ScaledOutput, layer: number): string {
      return rowsOf(g.op('Mul', [y, sharedInput(PEFT_INPUTS.scaleOut(site, layer), 3)]), outWidth[site]);
    },

    /** What joins the residual stream `x` after a sub-layer whose output is `h`: `h` and the row's bottleneck adapter there. */
    bottleneckResidualTerm(x: string, h: string, site: BottleneckSite, layer: number): string {
      const input = g.op('Add', [
        rowsOf(g.op('Mul', [h, sharedInput(PEFT_INPUTS.bnFromSublayer, 3)]), c.hiddenSize),
        rowsOf(g.op('Mul', [x, sharedInput(PEFT_INPUTS.bnFromResidual, 3)]), c.hiddenSize),
      ]);
      const down = sharedInput(PEFT_INPUTS.bnDown(site, layer), 3);
      const downBias = sharedInput(PEFT_INPUTS.bnDownBias(site, layer), 3);
      // [B, T, 1, R]: each non-linearity of the bottleneck, stacked on axis 2, blended by the row's one-hot choice.
      const z = g.op('Unsqueeze', [rowsOf(g.op('Add', [rowsOf(g.op('MatMul', [input, down]), BOTTLENECK_WIDTH), downBias]), BOTTLENECK_WIDTH), unsqueezeBlend]);
      const activations = [
        g.op('Relu', [z]),
        g.op('Gelu', [z]),
        g.op('Gelu', [z], { approximate: 'tanh' }),
        g.op('Mul', [z, g.op('Sigmoid', [z])]),
        g.op('Tanh', [z]),
      ];
      const blended = rowsOf(g.op('MatMul', [sharedInput(PEFT_INPUTS.bnActivation, 4), g.op('Concat', activations, { axis: 2 })]), 1, BOTTLENECK_WIDTH);
      const up = sharedInput(PEFT_INPUTS.bnUp(site, layer), 4);
      const delta = rowsOf(
        g.op('Add', [g.op('Reshape', [rowsOf(g.op('MatMul', [blended, up]), 1, c.hiddenSize), flatten]), sharedInput(PEFT_INPUTS.bnUpBias(site, layer), 3)]),
        c.hiddenSize,
      );
      return g.op('Add', [h, delta]);
    },

    /**
     * Per site (PROBE_SITES' order), every layer's probe rows through `project`, the layer's own base projection
     * of that group: `[layers·P, out]`.
     */
    probeResults(project: (site: ProbeSite, layer: number, rows: string) => string): string[] {
      return PROBE_SITES.map((site) => {
        const stacked = g.input(PEFT_INPUTS.probe(site), 'float32', ['probe_rows', probeWidths[site].in]);
        const perLayer = g.opMulti('Split', [stacked], c.numLayers, { axis: 0, num_outputs: c.numLayers });
        return g.op('Concat', perLayer.map((rows, l) => project(site, l, rows)), { axis: 0 });
      });
    },
  };
}

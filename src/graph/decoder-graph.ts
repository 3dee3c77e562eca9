/**
 * Builds the ONNX graph of a Llama-family decoder from its weights, with a JavaScript-managed KV cache and
 * multi-adapter inputs built in. Read `decoderLayer` then `buildDecoderGraph` top to bottom: they are the Llama
 * forward pass. `decoderLayer` is the one description of a layer: the serving graph here and the training graphs
 * (src/training/training-graph.ts) both build their layers with it, supplying only what differs between them
 * (`LayerImplementation`: weight storage, how adapters apply, what attention attends over).
 *
 * Design (the measurements behind each choice are given where it is made):
 * - The KV cache lives in JavaScript and is fed zero-copy as plain inputs: per layer, keys transposed
 *   `[B, kv_heads, head_dim, S]` and values `[B, kv_heads, S, head_dim]`, where S is the cache bucket width.
 *   The graph returns only the new keys/values of this step, which the runtime writes into the cache. This
 *   avoids returning (and so copying) the whole cache each step.
 * - Attention runs over the whole bucket with an additive mask `[B,1,1,S]` shared by all layers, plus the
 *   step's own tokens with a causal mask, joined in one softmax.
 * - RoPE tables come in as inputs (rotate-half order, one row per head of the fused q|k|v projection: value
 *   heads get cos=1, sin=0 and query heads carry the 1/sqrt(head_dim) attention scale), so the graph is
 *   independent of context length and RoPE scaling variants.
 * - LoRA: every projection has per-row A and B inputs `[B, in, R]` / `[B, R, out]` (rank zero-padded to the
 *   slot rank R, the adapter's scale folded into B; projections grouped as LORA_INPUTS says), applied as
 *   batched matmuls, so each row of one batch may use a different adapter, or none (zeros). The runtime
 *   copies an adapter's weights into a row when a sequence joins the batch, not every step: gathering
 *   per-slot weights inside the graph would copy every row's adapter on every step, which measured ~15 %
 *   slower at 16 rows. The same per-row scheme carries the other PEFT families (peft-blocks.ts): soft prompts
 *   at the embedding, IA3 and DoRA scales around the projections, bottleneck adapters on the residual stream.
 */
import type { BaseModel, LlamaConfig } from '../model/types.ts';
import { type BuiltModel, OnnxGraphBuilder } from './onnx-builder.ts';
import { peftBlocks, type BottleneckSite } from './peft-blocks.ts';

export const GRAPH_INPUTS = {
  inputIds: 'input_ids',
  ropeCos: 'rope_cos',
  ropeSin: 'rope_sin',
  pastMask: 'past_mask',
  selfMask: 'self_mask',
  attentionSplit: 'attention_split',
  /** Per row, the step position whose logits are returned (rows of one step may feed different token counts). */
  logitsPosition: 'logits_position',
  pastKey: (layer: number) => `past_key_t.${layer}`,
  pastValue: (layer: number) => `past_value.${layer}`,
} as const;

export const GRAPH_OUTPUTS = { logits: 'logits', newKeyValues: 'new_key_values' } as const;

/**
 * LoRA inputs per layer, one row per batch row. Projections that read the same activation share one stacked A
 * (q|k|v and gate|up). B is grouped into blocks of equal width, `[B, 1, groups, R, width]`, so one matmul
 * applies several projections' B: gate|up as two blocks, and q|k|v as `heads/kv_heads` blocks of q's columns
 * (q's activation repeated for each) then k and v. At decode each LoRA matmul is a stream over the rows'
 * weights and a node's fixed cost is comparable to streaming a small B, so a layer's adapter costs few, large
 * matmuls (measured ~3 ms less per 16-row step than one B per projection on SmolLM2-135M's shape).
 */
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

// Opset 23 brings RMSNormalization, one fused node per norm.
export const OPSET = [{ domain: '', version: 23 }];

/** Symbolic axis names; the runtime feeds any size. */
const B = 'batch';
const T = 'tokens';
const S = 'cache_len';
const R = 'lora_rank';
const BN = 'bottleneck_width';

/**
 * The parts of a layer that differ between the serving graph and the training graph (src/training/): where
 * weights come from (initializers or inputs), how adapters apply (per-row slots or one trainable adapter), and
 * what attention sees (a KV cache or only the sequence itself). Everything else about a layer is `decoderLayer`.
 */
export interface LayerImplementation {
  /** The RMSNorm scale vector named `name` (a Hugging Face weight name). */
  normWeight(name: string): string;
  /** q|k|v projections of the normed input, concatenated: `[B, T, (heads + 2·kv_heads)·head_dim]`. */
  qkv(layer: number, h: string): string;
  /** Output projection of the merged heads: `[B, T, hidden]`. */
  o(layer: number, merged: string): string;
  /** gate|up projections, concatenated: `[B, T, 2·ffn]`. */
  gateUp(layer: number, h: string): string;
  /** Down projection: `[B, T, hidden]`. */
  down(layer: number, act: string): string;
  /** Attention context `[B, kv_heads, group·T, head_dim]` of the grouped queries over the keys and values. */
  attend(layer: number, queriesGrouped: string, keys: string, values: string): string;
  /** The residual stream after a sub-layer's output `h` joins `x`; `x + h` when absent (bottleneck adapters hook in here). */
  residual?(layer: number, site: BottleneckSite, x: string, h: string): string;
}

/** Constants and RoPE tables that every layer of one graph shares. */
export interface DecoderContext {
  g: OnnxGraphBuilder;
  config: LlamaConfig;
  ropeCosHalves: string;
  ropeSinHalves: string;
  shapes: Record<'halves' | 'heads' | 'grouped' | 'perHead' | 'merged' | 'headSplit' | 'ffnSplit', string>;
}

/** `ropeCos`/`ropeSin` are `[B or 1, T, fused_heads, head_dim]` tables as src/runtime/rope.ts fills them. */
export function decoderContext(g: OnnxGraphBuilder, c: LlamaConfig, ropeCos: string, ropeSin: string): DecoderContext {
  const fusedHeads = c.numHeads + 2 * c.numKvHeads;
  // RoPE works on heads viewed as [2, head_dim/2]: swapping the two halves (a reversed Slice, a block copy)
  // turns rotate_half(x) into swap(x) * [-sin, sin]. A Gather over the last axis did the same 3x slower.
  const halves = g.constInt64([0, 0, fusedHeads, 2, c.headDim / 2], 'shape_head_halves');
  return {
    g,
    config: c,
    ropeCosHalves: g.op('Reshape', [ropeCos, halves]),
    ropeSinHalves: g.op('Reshape', [ropeSin, halves]),
    shapes: {
      halves,
      heads: g.constInt64([0, 0, fusedHeads, c.headDim], 'shape_fused_heads'),
      grouped: g.constInt64([0, c.numKvHeads, -1, c.headDim], 'shape_grouped_queries'),
      perHead: g.constInt64([0, c.numHeads, -1, c.headDim], 'shape_query_heads'),
      merged: g.constInt64([0, 0, c.numHeads * c.headDim], 'shape_merged_heads'),
      headSplit: g.constInt64([c.numHeads, c.numKvHeads, c.numKvHeads], 'split_q_k_v'),
      ffnSplit: g.constInt64([c.intermediateSize, c.intermediateSize], 'split_gate_up'),
    },
  };
}

/**
 * One Llama decoder layer on `x` `[B, T, hidden]`: returns the layer's output and its rotated keys and the values
 * `[B, kv_heads, T, head_dim]` (which serving writes into its cache).
 */
export function decoderLayer(ctx: DecoderContext, impl: LayerImplementation, l: number, x: string): { x: string; keys: string; values: string } {
  const { g, shapes } = ctx;
  const p = `model.layers.${l}`;

  // ---- attention ----
  const h = rmsNorm(g, ctx.config, x, impl.normWeight(`${p}.input_layernorm.weight`));
  const qkv = g.op('Reshape', [impl.qkv(l, h), shapes.halves]);
  const swapHalves = g.op('Slice', [qkv, g.constInt64([-1]), g.constInt64([-Number.MAX_SAFE_INTEGER]), g.constInt64([3]), g.constInt64([-1])]);
  const rotated = g.op('Reshape', [
    g.op('Add', [g.op('Mul', [qkv, ctx.ropeCosHalves]), g.op('Mul', [swapHalves, ctx.ropeSinHalves])]),
    shapes.heads,
  ]);
  const [q, k, v] = g.opMulti('Split', [g.op('Transpose', [rotated], { perm: [0, 2, 1, 3] }), shapes.headSplit], 3, { axis: 1 });
  // Queries grouped by the key/value head they share (GQA): [B, kv_heads, group*T, head_dim].
  const context = impl.attend(l, g.op('Reshape', [q, shapes.grouped]), k, v);
  const merged = g.op('Reshape', [
    g.op('Transpose', [g.op('Reshape', [context, shapes.perHead])], { perm: [0, 2, 1, 3] }),
    shapes.merged,
  ]);
  const residual = (site: BottleneckSite, from: string, h: string) => (impl.residual ? impl.residual(l, site, from, h) : g.op('Add', [from, h]));
  const attended = residual('attention', x, impl.o(l, merged));

  // ---- feed-forward (SwiGLU) ----
  const h2 = rmsNorm(g, ctx.config, attended, impl.normWeight(`${p}.post_attention_layernorm.weight`));
  const [gate, up] = g.opMulti('Split', [impl.gateUp(l, h2), shapes.ffnSplit], 2, { axis: 2 });
  const act = g.op('Mul', [g.op('Mul', [gate, g.op('Sigmoid', [gate])]), up]);
  return { x: residual('output', attended, impl.down(l, act)), keys: k, values: v };
}

export function rmsNorm(g: OnnxGraphBuilder, c: LlamaConfig, x: string, scale: string): string {
  return g.op('RMSNormalization', [x, scale], { axis: -1, epsilon: { float: c.rmsNormEps } });
}

export function buildDecoderGraph(model: BaseModel): BuiltModel {
  const c = model.config;
  const g = new OnnxGraphBuilder('llama_decoder');
  const w = (name: string) => {
    const tensor = model.weights.get(name);
    if (!tensor) throw new Error(`weight ${name} missing from the loaded model`);
    return tensor;
  };
  const qDim = c.numHeads * c.headDim;
  const kvDim = c.numKvHeads * c.headDim;
  const fusedHeads = c.numHeads + 2 * c.numKvHeads;

  const inputIds = g.input(GRAPH_INPUTS.inputIds, 'int64', [B, T]);
  const ropeCos = g.input(GRAPH_INPUTS.ropeCos, 'float32', [B, T, fusedHeads, c.headDim]);
  const ropeSin = g.input(GRAPH_INPUTS.ropeSin, 'float32', [B, T, fusedHeads, c.headDim]);
  const pastMask = g.input(GRAPH_INPUTS.pastMask, 'float32', [B, 1, 1, S]);
  const selfMask = g.input(GRAPH_INPUTS.selfMask, 'float32', [B, 1, 'group_tokens', T]);
  const attentionSplit = g.input(GRAPH_INPUTS.attentionSplit, 'int64', [2]);
  // LoRA activations of stacked projections, [B, T, n*R], as n blocks [B, T, n, 1, R] for a grouped B.
  const [threeLoraBlocks, twoLoraBlocks] = [3, 2].map((n) => g.constInt64([0, 0, n, 1, -1], `shape_lora_${n}_blocks`));
  // Which q|k|v activation block each block of the grouped q|k|v B reads: q for each of q's blocks, then k, v.
  const qBlocks = c.numHeads / c.numKvHeads;
  const qkvBlockSources = g.constInt64([...new Array<number>(qBlocks).fill(0), 1, 2], 'lora_qkv_block_sources');

  const embedding = g.initializer('model.embed_tokens.weight', w('model.embed_tokens.weight').data, [c.vocabSize, c.hiddenSize]);
  const ctx = decoderContext(g, c, ropeCos, ropeSin);

  const peft = peftBlocks(g, c, B, BN);
  const loraWeights = (name: string, ...dims: (number | string)[]) => g.input(name, 'float32', [B, ...dims]);
  /** LoRA delta from activation blocks `[B, T, n, 1, R]` and a B of n blocks of `width` columns: `[B, T, n*width]`. */
  const groupedLoraDelta = (blocks: string, name: string, n: number, width: number) =>
    g.op('Reshape', [g.op('MatMul', [blocks, loraWeights(name, 1, n, R, width)]), g.constInt64([0, 0, n * width])]);
  /** A base projection as one transposed (and, for fused projections, concatenated) initializer. */
  const baseWeight = (name: string, parts: string[], inDim: number, outDims: number[]) =>
    g.initializer(name, transposeConcat(parts.map((part) => w(part).data), inDim, outDims), [inDim, outDims.reduce((a, b) => a + b, 0)]);
  const layerWeight = (l: number, module: string) => `model.layers.${l}.${module}.weight`;

  const serving: LayerImplementation = {
    normWeight: (name) => g.initializer(name, w(name).data, [c.hiddenSize]),
    qkv(l, h) {
      const modules = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'].map((m) => layerWeight(l, m));
      const wQkv = baseWeight(`model.layers.${l}.self_attn.qkv_proj.weight_t`, modules, c.hiddenSize, [qDim, kvDim, kvDim]);
      const uQkv = g.op('Reshape', [g.op('MatMul', [h, loraWeights(LORA_INPUTS.aQkv(l), c.hiddenSize, `3*${R}`)]), threeLoraBlocks]);
      const loraQkv = groupedLoraDelta(g.op('Gather', [uQkv, qkvBlockSources], { axis: 2 }), LORA_INPUTS.bQkv(l), qBlocks + 2, kvDim);
      peft.probe('qkv', l, wQkv);
      return peft.scaleOutput(g.op('Add', [g.op('MatMul', [h, wQkv]), loraQkv]), 'qkv', l);
    },
    o(l, unscaled) {
      const merged = peft.scaleInput(unscaled, 'o', l);
      const wO = baseWeight(`model.layers.${l}.self_attn.o_proj.weight_t`, [layerWeight(l, 'self_attn.o_proj')], qDim, [c.hiddenSize]);
      const loraO = g.op('MatMul', [g.op('MatMul', [merged, loraWeights(LORA_INPUTS.aO(l), qDim, R)]), loraWeights(LORA_INPUTS.bO(l), R, c.hiddenSize)]);
      peft.probe('o', l, wO);
      return peft.scaleOutput(g.op('Add', [g.op('MatMul', [merged, wO]), loraO]), 'o', l);
    },
    gateUp(l, h2) {
      const modules = [layerWeight(l, 'mlp.gate_proj'), layerWeight(l, 'mlp.up_proj')];
      const wGateUp = baseWeight(`model.layers.${l}.mlp.gate_up_proj.weight_t`, modules, c.hiddenSize, [c.intermediateSize, c.intermediateSize]);
      const u2 = g.op('MatMul', [h2, loraWeights(LORA_INPUTS.aGateUp(l), c.hiddenSize, `2*${R}`)]);
      const loraGateUp = groupedLoraDelta(g.op('Reshape', [u2, twoLoraBlocks]), LORA_INPUTS.bGateUp(l), 2, c.intermediateSize);
      peft.probe('gate_up', l, wGateUp);
      return peft.scaleOutput(g.op('Add', [g.op('MatMul', [h2, wGateUp]), loraGateUp]), 'gate_up', l);
    },
    down(l, unscaled) {
      const act = peft.scaleInput(unscaled, 'down', l);
      const wDown = baseWeight(`model.layers.${l}.mlp.down_proj.weight_t`, [layerWeight(l, 'mlp.down_proj')], c.intermediateSize, [c.hiddenSize]);
      const loraDown = g.op('MatMul', [g.op('MatMul', [act, loraWeights(LORA_INPUTS.aDown(l), c.intermediateSize, R)]), loraWeights(LORA_INPUTS.bDown(l), R, c.hiddenSize)]);
      peft.probe('down', l, wDown);
      return peft.scaleOutput(g.op('Add', [g.op('MatMul', [act, wDown]), loraDown]), 'down', l);
    },
    // The cached keys (transposed) and values, then this step's own tokens under a causal mask, in one softmax.
    attend(l, qGrouped, k, v) {
      const pastKeyT = g.input(GRAPH_INPUTS.pastKey(l), 'float32', [B, c.numKvHeads, c.headDim, S]);
      const pastValue = g.input(GRAPH_INPUTS.pastValue(l), 'float32', [B, c.numKvHeads, S, c.headDim]);
      const scoresPast = g.op('Add', [g.op('MatMul', [qGrouped, pastKeyT]), pastMask]);
      const scoresSelf = g.op('Add', [g.op('MatMul', [qGrouped, g.op('Transpose', [k], { perm: [0, 1, 3, 2] })]), selfMask]);
      const probs = g.op('Softmax', [g.op('Concat', [scoresPast, scoresSelf], { axis: 3 })], { axis: 3 });
      const [probsPast, probsSelf] = g.opMulti('Split', [probs, attentionSplit], 2, { axis: 3 });
      return g.op('Add', [g.op('MatMul', [probsPast, pastValue]), g.op('MatMul', [probsSelf, v])]);
    },
    residual: (l, site, x, h) => peft.residualWithBottleneck(x, h, site, l),
  };

  let x = peft.embed(g.op('Gather', [embedding, inputIds], { axis: 0 }));
  const newKeyValues: string[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    const layer = decoderLayer(ctx, serving, l, x);
    x = layer.x;
    newKeyValues.push(layer.keys, layer.values);
  }
  peft.finishProbes();

  // Only one position's logits per row leave the graph (outputs are copied by the binding, so keep them small):
  // each row's last real token, as rows of a batched prefill are padded to the longest.
  const last = g.op('GatherElements', [x, g.input(GRAPH_INPUTS.logitsPosition, 'int64', [B, 1, c.hiddenSize])], { axis: 1 });
  const lastFlat = g.op('Reshape', [rmsNorm(g, c, last, serving.normWeight('model.norm.weight')), g.constInt64([-1, c.hiddenSize])]);
  const lmHead = c.tieWordEmbeddings
    ? embedding
    : g.initializer('lm_head.weight', w('lm_head.weight').data, [c.vocabSize, c.hiddenSize]);
  g.output(g.op('Gemm', [lastFlat, lmHead], { transB: 1 }), GRAPH_OUTPUTS.logits, 'float32', [B, c.vocabSize]);
  // All layers' new keys and values in one output: [B, layers*2*kv_heads, T, head_dim], k then v per layer.
  g.output(g.op('Concat', newKeyValues, { axis: 1 }), GRAPH_OUTPUTS.newKeyValues, 'float32', [B, c.numLayers * 2 * c.numKvHeads, T, c.headDim]);
  return g.build(OPSET);
}

/** Transposes PyTorch `[out, in]` weights to `[in, out]` and joins several along the output axis. */
function transposeConcat(weights: Float32Array[], inDim: number, outDims: number[]): Float32Array {
  const totalOut = outDims.reduce((a, b) => a + b, 0);
  const result = new Float32Array(inDim * totalOut);
  let column = 0;
  weights.forEach((weight, index) => {
    const outDim = outDims[index];
    for (let o = 0; o < outDim; o++) {
      for (let i = 0; i < inDim; i++) result[i * totalOut + column + o] = weight[o * inDim + i];
    }
    column += outDim;
  });
  return result;
}

/**
 * Builds the ONNX graph of a Llama-family decoder from its weights, with a JavaScript-managed KV cache and
 * multi-adapter inputs built in. Read `decoderLayer` then `servingGraph` top to bottom: they are the Llama
 * forward pass. `decoderLayer` is the one description of a layer: the serving graph here and the training graphs
 * (src/training/training-graph.ts) both build their layers with it, supplying only what differs between them
 * (`LayerImplementation`: weight storage, how adapters apply, what attention attends over).
 *
 * Design (the measurements behind each choice are given where it is made):
 * - The KV cache lives in JavaScript and is fed zero-copy as plain inputs: per layer, keys transposed
 *   `[B, kv_heads, head_dim, S]` and values `[B, kv_heads, S, head_dim]`, where S is the cache bucket width.
 *   The graph returns only the new keys/values of this step, which the runtime writes into the cache. This
 *   avoids returning (and so copying) the whole cache each step.
 * - Attention runs over the whole bucket plus the step's own tokens, joined in one softmax under one additive
 *   mask `[B, 1, group·T, S + T]` shared by all layers (cache positions past a row's length, and causal).
 * - RoPE tables come in as inputs (rotate-half order, one row per head of the fused q|k|v projection: value
 *   heads get cos=1, sin=0 and query heads carry the 1/sqrt(head_dim) attention scale), so the graph is
 *   independent of context length and RoPE scaling variants.
 * - LoRA: every adapted projection adds the delta of `LoraDelta` (lora-delta.ts), which groups the batch rows by
 *   adapter so that each distinct adapter's weights are read once per pass, while rows on different adapters,
 *   ranks and the base model share the pass. Projections that read the same activation share one stacked A
 *   (q|k|v and gate|up) and one matmul over B blocks of equal width (gate|up as two blocks; q|k|v as
 *   `heads/kv_heads` blocks of q's columns, each reading q's activation, then k and v): at decode each LoRA
 *   matmul is a stream over the adapters' weights and a node's fixed cost is comparable to streaming a small B,
 *   so a layer's adapters cost few, large matmuls (measured ~3 ms less per 16-row step than one B per projection
 *   on SmolLM2-135M's shape).
 * - The other PEFT families have per-row inputs (peft-blocks.ts): soft prompts at the embedding, IA3 and DoRA
 *   scales around the projections, bottleneck adapters on the residual stream, and DoRA's base probes.
 * - Three graphs serve (`buildDecoderGraphs`): one with every family's nodes, for passes with a row on a family
 *   beside LoRA; one with LoRA over flat tokens, whose attention splits them into decode rows and prefill rows
 *   (token-groups.ts), so that a step's decode rows and prompt chunk share a pass; and one with the base layers
 *   alone, for passes without adapters; all reading one copy of the weights. Profiled at one row, the families'
 *   nodes (about 80 of a layer's 115, fed empty stand-ins) took longer than a quantized base's matmuls, and their
 *   inputs (about 270) cost the binding a few microseconds each per run.
 */
import type { BaseModel, LlamaConfig } from '../model/types.ts';
import { baseProjection, CONTRIB_DOMAIN, CONTRIB_OPSET, quantizedMatMul } from './base-projection.ts';
import { LORA_INPUTS, LoraDelta } from './lora-delta.ts';
import { OnnxGraphBuilder, SharedInitializers } from './onnx-builder.ts';
import { PEFT_INPUTS, peftBlocks, PROBE_OUTPUT, PROBE_SITES, probeSiteWidths, type BottleneckSite, type ProbeSite } from './peft-blocks.ts';
import { DECODE_ROWS, PREFILL_NEW_KEY_VALUES, PREFILL_ROWS, PREFILL_WIDTH, TOKEN_GROUP_INPUTS, TokenGroups, type CacheView } from './token-groups.ts';

export const GRAPH_INPUTS = {
  inputIds: 'input_ids',
  ropeCos: 'rope_cos',
  ropeSin: 'rope_sin',
  /**
   * `[B, 1, group·T, S + T]`: the additive mask over the cache bucket then the step's own tokens, for each grouped
   * query (one Add a layer over the joined scores instead of one for each part).
   */
  attentionMask: 'attention_mask',
  attentionSplit: 'attention_split',
  /** Per row, the step position whose logits are returned (rows of one step may feed different token counts). */
  logitsPosition: 'logits_position',
  pastKey: (layer: number) => `past_key_t.${layer}`,
  pastValue: (layer: number) => `past_value.${layer}`,
} as const;

export const GRAPH_OUTPUTS = { logits: 'logits', newKeyValues: 'new_key_values' } as const;

// Opset 23 brings RMSNormalization, one fused node per norm; onnxruntime's contrib domain, MatMulNBits.
export const OPSET = [{ domain: '', version: 23 }, CONTRIB_OPSET];

/** Each projection group's fused initializer name and the Hugging Face modules it joins (probe sites are groups). */
const PROJECTION_GROUPS: Record<ProbeSite, [fused: string, modules: string[]]> = {
  qkv: ['self_attn.qkv_proj', ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj']],
  o: ['self_attn.o_proj', ['self_attn.o_proj']],
  gate_up: ['mlp.gate_up_proj', ['mlp.gate_proj', 'mlp.up_proj']],
  down: ['mlp.down_proj', ['mlp.down_proj']],
};

/** Symbolic axis names; the runtime feeds any size. */
const B = 'batch';
const T = 'tokens';
const S = 'cache_len';

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
  /**
   * What a sub-layer adds to the residual stream `x`, given its output `h`: `h` when absent (bottleneck adapters
   * add theirs here).
   */
  residualTerm?(layer: number, site: BottleneckSite, x: string, h: string): string;
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
 * The residual stream as `x + added`, the sum not taken yet: the next RMSNorm takes it with the norm in one node
 * (`normAfterResidual`), since at one row each node costs a few microseconds whatever it computes.
 */
export interface ResidualStream {
  x: string;
  added?: string;
}

/**
 * One Llama decoder layer on the residual stream `[B, T, hidden]`: returns the stream after the layer (its last
 * sum still to be taken, by the next layer's norm or `residualSum`) and the rotated keys and the values
 * `[B, kv_heads, T, head_dim]` (which serving writes into its cache).
 */
export function decoderLayer(ctx: DecoderContext, impl: LayerImplementation, l: number, stream: ResidualStream): { stream: ResidualStream; keys: string; values: string } {
  const { g, shapes, config } = ctx;
  const p = `model.layers.${l}`;
  const term = (site: BottleneckSite, x: string, h: string) => (impl.residualTerm ? impl.residualTerm(l, site, x, h) : h);

  // ---- attention ----
  const { normed: h, sum: x } = normAfterResidual(g, config, stream, impl.normWeight(`${p}.input_layernorm.weight`));
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
  const afterAttention = { x, added: term('attention', x, impl.o(l, merged)) };

  // ---- feed-forward (SwiGLU) ----
  const { normed: h2, sum: attended } = normAfterResidual(g, config, afterAttention, impl.normWeight(`${p}.post_attention_layernorm.weight`));
  const [gate, up] = g.opMulti('Split', [impl.gateUp(l, h2), shapes.ffnSplit], 2, { axis: 2 });
  const act = g.op('Mul', [g.op('Mul', [gate, g.op('Sigmoid', [gate])]), up]);
  return { stream: { x: attended, added: term('output', attended, impl.down(l, act)) }, keys: k, values: v };
}

/** The residual stream's value, its last sum taken. */
export function residualSum(g: OnnxGraphBuilder, stream: ResidualStream): string {
  return stream.added ? g.op('Add', [stream.x, stream.added]) : stream.x;
}

/**
 * RMSNorm of the residual stream, and the stream's value: with a sum still to take, onnxruntime's
 * `SkipSimplifiedLayerNormalization` takes it and the norm in one node (its fourth output is the sum).
 */
export function normAfterResidual(g: OnnxGraphBuilder, c: LlamaConfig, stream: ResidualStream, scale: string): { normed: string; sum: string } {
  if (!stream.added) return { normed: rmsNorm(g, c, stream.x, scale), sum: stream.x };
  const [normed, , , sum] = g.opMulti('SkipSimplifiedLayerNormalization', [stream.x, stream.added, scale], 4, { epsilon: { float: c.rmsNormEps } }, undefined, CONTRIB_DOMAIN);
  return { normed, sum };
}

export function rmsNorm(g: OnnxGraphBuilder, c: LlamaConfig, x: string, scale: string): string {
  return g.op('RMSNormalization', [x, scale], { axis: -1, epsilon: { float: c.rmsNormEps } });
}

/**
 * The serving graphs: `adapters` runs passes with a row on an adapter of a family beside LoRA (every family's
 * nodes, rows on no adapter getting exactly their base result) and DoRA's probe pass; `mixed` runs passes whose
 * rows are on LoRA adapters or the base model, with the decode rows and a prompt chunk in one pass (flat tokens,
 * token-groups.ts); `base` runs passes whose rows all use the base model, with only the inputs the base layers
 * read (66 of the adapter graph's 333 on SmolLM2-135M's shape, each of which costs onnxruntime-node a few
 * microseconds a run whatever its size). All are built from the same `decoderLayer` and base projections, and
 * their weights are stored once in the buffer they all reference.
 */
export type ServingGraph = 'adapters' | 'mixed' | 'base';
export const SERVING_GRAPHS: readonly ServingGraph[] = ['adapters', 'mixed', 'base'];

export interface DecoderGraphs {
  /** Serialised ModelProto of each serving graph. */
  models: Record<ServingGraph, Uint8Array>;
  /** The initializers' bytes, which every graph references by offset (`EXTERNAL_DATA_FILE`). */
  weights: Uint8Array;
}

export function buildDecoderGraphs(model: BaseModel): DecoderGraphs {
  const shared = new SharedInitializers();
  const builders = SERVING_GRAPHS.map((kind) => servingGraph(model, kind, new OnnxGraphBuilder(`llama_decoder_${kind}`, shared)));
  const { models, weights } = OnnxGraphBuilder.buildTogether(builders, OPSET);
  return { models: Object.fromEntries(SERVING_GRAPHS.map((kind, i) => [kind, models[i]])) as Record<ServingGraph, Uint8Array>, weights };
}

function servingGraph(model: BaseModel, kind: ServingGraph, g: OnnxGraphBuilder): OnnxGraphBuilder {
  const c = model.config;
  const w = (name: string) => {
    const tensor = model.weights.get(name);
    if (!tensor) throw new Error(`weight ${name} missing from the loaded model`);
    return tensor;
  };
  const qDim = c.numHeads * c.headDim;
  const kvDim = c.numKvHeads * c.headDim;
  const fusedHeads = c.numHeads + 2 * c.numKvHeads;

  // The mixed graph's batch axis is flat tokens (one a row); its decode group's rows are the cache's.
  const mixed = kind === 'mixed';
  const cacheRows = mixed ? DECODE_ROWS : B;
  const inputIds = g.input(GRAPH_INPUTS.inputIds, 'int64', [B, T]);
  const ropeCos = g.input(GRAPH_INPUTS.ropeCos, 'float32', [B, T, fusedHeads, c.headDim]);
  const ropeSin = g.input(GRAPH_INPUTS.ropeSin, 'float32', [B, T, fusedHeads, c.headDim]);
  const attentionMask = g.input(GRAPH_INPUTS.attentionMask, 'float32', [cacheRows, 1, 'group_tokens', 'attended']);
  const attentionSplit = g.input(GRAPH_INPUTS.attentionSplit, 'int64', [2]);
  const qBlocks = c.numHeads / c.numKvHeads;

  const embedding = g.sharedInitializer('model.embed_tokens.weight', () => w('model.embed_tokens.weight').data, [c.vocabSize, c.hiddenSize]);
  const ctx = decoderContext(g, c, ropeCos, ropeSin);

  /** Base projections of `x` (fused when several), with each weight as served: block-quantized or float32. */
  const base = (x: string, l: number, fused: string, modules: string[], inputRank = 3) =>
    baseProjection(g, x, modules.map((m) => model.quantized?.get(`model.layers.${l}.${m}.weight`) ?? w(`model.layers.${l}.${m}.weight`)), `model.layers.${l}.${fused}`, { inputRank });

  const group = (site: ProbeSite) => (l: number, x: string) => base(x, l, ...PROJECTION_GROUPS[site]);
  const plain: LayerImplementation = {
    normWeight: (name) => g.sharedInitializer(name, () => w(name).data, [c.hiddenSize]),
    qkv: group('qkv'),
    o: group('o'),
    gateUp: group('gate_up'),
    down: group('down'),
    attend: (l, qGrouped, k, v) => attendOverCache(qGrouped, k, v, decodeCache(l)),
  };

  /**
   * Each projection group's LoRA delta: q's activation feeds each of q's B blocks, then k's and v's their own;
   * gate|up share one activation.
   */
  const loraDeltas = (lora: LoraDelta) => ({
    qkv: (l: number, h: string) =>
      lora.apply(h, {
        a: LORA_INPUTS.aQkv(l), b: LORA_INPUTS.bQkv(l), inDim: c.hiddenSize, aBlocks: 3, bBlocks: qBlocks + 2, width: kvDim,
        blockSources: [...new Array<number>(qBlocks).fill(0), 1, 2],
      }),
    o: (l: number, x: string) => lora.apply(x, { a: LORA_INPUTS.aO(l), b: LORA_INPUTS.bO(l), inDim: qDim, aBlocks: 1, bBlocks: 1, width: c.hiddenSize }),
    gateUp: (l: number, h: string) =>
      lora.apply(h, { a: LORA_INPUTS.aGateUp(l), b: LORA_INPUTS.bGateUp(l), inDim: c.hiddenSize, aBlocks: 2, bBlocks: 2, width: c.intermediateSize }),
    down: (l: number, x: string) =>
      lora.apply(x, { a: LORA_INPUTS.aDown(l), b: LORA_INPUTS.bDown(l), inDim: c.intermediateSize, aBlocks: 1, bBlocks: 1, width: c.hiddenSize }),
  });

  /** The layers with every adapter family's nodes, each around `plain`'s base projections. */
  function adapterLayers(lora: LoraDelta, peft: ReturnType<typeof peftBlocks>): LayerImplementation {
    const delta = loraDeltas(lora);
    return {
      normWeight: plain.normWeight,
      qkv: (l, h) => peft.scaleOutput(g.op('Add', [plain.qkv(l, h), delta.qkv(l, h)]), 'qkv', l),
      o(l, unscaled) {
        const merged = peft.scaleInput(unscaled, 'o', l);
        return peft.scaleOutput(g.op('Add', [plain.o(l, merged), delta.o(l, merged)]), 'o', l);
      },
      gateUp: (l, h2) => peft.scaleOutput(g.op('Add', [plain.gateUp(l, h2), delta.gateUp(l, h2)]), 'gate_up', l),
      down(l, unscaled) {
        const act = peft.scaleInput(unscaled, 'down', l);
        return peft.scaleOutput(g.op('Add', [plain.down(l, act), delta.down(l, act)]), 'down', l);
      },
      attend: plain.attend,
      residualTerm: (l, site, x, h) => peft.bottleneckResidualTerm(x, h, site, l),
    };
  }

  /** The mixed graph's layers: LoRA around the base projections, over flat tokens, attending by token group. */
  function mixedLayers(lora: LoraDelta, groups: TokenGroups): LayerImplementation {
    const delta = loraDeltas(lora);
    return {
      normWeight: plain.normWeight,
      qkv: (l, h) => g.op('Add', [plain.qkv(l, h), delta.qkv(l, h)]),
      o: (l, x) => g.op('Add', [plain.o(l, x), delta.o(l, x)]),
      gateUp: (l, h) => g.op('Add', [plain.gateUp(l, h), delta.gateUp(l, h)]),
      down: (l, x) => g.op('Add', [plain.down(l, x), delta.down(l, x)]),
      attend: (l, qGrouped, k, v) => groups.attend(l, qGrouped, k, v, decodeCache(l), attendOverCache),
    };
  }

  // The cached keys (transposed) and values, then this step's own tokens under a causal mask, in one softmax.
  const pastKeysT = Array.from({ length: c.numLayers }, (_, l) => g.input(GRAPH_INPUTS.pastKey(l), 'float32', [cacheRows, c.numKvHeads, c.headDim, S]));
  const pastValues = Array.from({ length: c.numLayers }, (_, l) => g.input(GRAPH_INPUTS.pastValue(l), 'float32', [cacheRows, c.numKvHeads, S, c.headDim]));
  const decodeCache = (l: number): CacheView => ({ pastKeyT: pastKeysT[l], pastValue: pastValues[l], mask: attentionMask, split: attentionSplit });
  function attendOverCache(qGrouped: string, k: string, v: string, { pastKeyT, pastValue, mask, split }: CacheView): string {
    const scoresPast = g.op('MatMul', [qGrouped, pastKeyT]);
    const scoresSelf = g.op('MatMul', [qGrouped, g.op('Transpose', [k], { perm: [0, 1, 3, 2] })]);
    const probs = g.op('Softmax', [g.op('Add', [g.op('Concat', [scoresPast, scoresSelf], { axis: 3 }), mask])], { axis: 3 });
    const [probsPast, probsSelf] = g.opMulti('Split', [probs, split], 2, { axis: 3 });
    return g.op('Add', [g.op('MatMul', [probsPast, pastValue]), g.op('MatMul', [probsSelf, v])]);
  }

  /** The decoder layers over `x`: the final hidden states, and every layer's new keys and values (k then v). */
  const layers = (impl: LayerImplementation, x: string): { hidden: string; keyValues: string[] } => {
    const keyValues: string[] = [];
    let stream: ResidualStream = { x };
    for (let l = 0; l < c.numLayers; l++) {
      const layer = decoderLayer(ctx, impl, l, stream);
      stream = layer.stream;
      keyValues.push(layer.keys, layer.values);
    }
    return { hidden: residualSum(g, stream), keyValues };
  };
  /** All layers' new keys and values in one tensor, `[rows, layers·2·kv_heads, tokens, head_dim]`. */
  const joined = (keyValues: string[]) => g.op('Concat', keyValues, { axis: 1 });
  const tokenEmbeddings = g.op('Gather', [embedding, inputIds], { axis: 0 });
  const [x, newKeyValues] = kind === 'base' ? basePass() : kind === 'adapters' ? adapterPass() : mixedPass();

  function basePass(): string[] {
    const { hidden, keyValues } = layers(plain, tokenEmbeddings);
    return [hidden, joined(keyValues)];
  }

  /** The mixed graph's layers, and each token group's keys and values as a pass of that group alone returns them. */
  function mixedPass(): string[] {
    const groups = new TokenGroups(g, c);
    const { hidden } = layers(mixedLayers(new LoraDelta(g), groups), tokenEmbeddings);
    g.output(joined(groups.prefillKeyValues), PREFILL_NEW_KEY_VALUES, 'float32', [PREFILL_ROWS, c.numLayers * 2 * c.numKvHeads, PREFILL_WIDTH, c.headDim]);
    return [hidden, joined(groups.decodeKeyValues)];
  }

  /** The adapter graph's layers, and DoRA's probe results as outputs of their own. */
  function adapterPass(): string[] {
    const peft = peftBlocks(g, c);
    const { hidden, keyValues } = layers(adapterLayers(new LoraDelta(g), peft), peft.embed(tokenEmbeddings));
    // DoRA's probe rows go through every layer's base projections in a pass of their own (once per adapter); other
    // passes take the empty branch, so the probes' matmuls (4 per layer) cost no step anything. The empty results
    // take their row count from the (empty) probe inputs rather than from constants: onnxruntime folds a constant
    // branch into initializers it then cannot load back from its saved optimized form (saved-sessions.ts).
    const probeWidths = probeSiteWidths(c);
    const probeResults = g.ifElse(
      g.input(PEFT_INPUTS.probing, 'bool', [1]),
      () => peft.probeResults((site, l, rows) => {
        const [fused, modules] = PROJECTION_GROUPS[site];
        return base(rows, l, fused, modules, 2);
      }),
      () => PROBE_SITES.map((site) => {
        const rows = g.op('Slice', [g.op('Shape', [PEFT_INPUTS.probe(site)]), g.constInt64([0]), g.constInt64([1])]);
        return g.op('ConstantOfShape', [g.op('Concat', [rows, g.constInt64([probeWidths[site].out])], { axis: 0 })]);
      }),
    );
    PROBE_SITES.forEach((site, i) => g.output(probeResults[i], PROBE_OUTPUT(site), 'float32', ['probe_out_rows', probeWidths[site].out]));
    return [hidden, joined(keyValues)];
  }

  // Only one position's logits per row leave the graph (outputs are copied by the binding, so keep them small):
  // each row's last real token, as rows of a batched prefill are padded to the longest (of the mixed graph's flat
  // tokens, those it is told).
  const last = mixed
    ? g.op('Gather', [x, g.input(TOKEN_GROUP_INPUTS.logitsTokens, 'int64', ['logits_rows'])], { axis: 0 })
    : g.op('GatherElements', [x, g.input(GRAPH_INPUTS.logitsPosition, 'int64', [B, 1, c.hiddenSize])], { axis: 1 });
  const lastFlat = g.op('Reshape', [rmsNorm(g, c, last, plain.normWeight('model.norm.weight')), g.constInt64([-1, c.hiddenSize])]);
  // The embedding lookup reads float32 rows (exact values of a quantized file's embedding); the output
  // projection, a full matmul per step, uses the quantized form when there is one.
  const quantizedHead = model.quantized?.get('lm_head.weight');
  const logits = quantizedHead
    ? quantizedMatMul(g, lastFlat, quantizedHead, 'lm_head', { inputRank: 2 })
    : g.op('Gemm', [lastFlat, c.tieWordEmbeddings ? embedding : g.sharedInitializer('lm_head.weight', () => w('lm_head.weight').data, [c.vocabSize, c.hiddenSize])], { transB: 1 });
  g.output(logits, GRAPH_OUTPUTS.logits, 'float32', [mixed ? 'logits_rows' : B, c.vocabSize]);
  g.output(newKeyValues, GRAPH_OUTPUTS.newKeyValues, 'float32', [cacheRows, c.numLayers * 2 * c.numKvHeads, T, c.headDim]);
  return g;
}

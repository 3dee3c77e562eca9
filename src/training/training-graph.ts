/**
 * The training graphs, built from the serving decoder's own layer description (`decoderLayer` in
 * src/graph/decoder-graph.ts) with a training implementation of its projections and attention: full sequences
 * under a causal mask, no KV cache, the base weights and one LoRA adapter as inputs.
 *
 * Activations are mostly recomputed rather than kept: one graph computes a layer forward (used layer by layer,
 * keeping each layer's input), another recomputes the layer and appends its backward pass (autodiff.ts), and a head
 * graph turns the last hidden state into the loss and its gradient. The base projections' matmuls are most of a
 * layer's work, so a variant pair of graphs saves their outputs in the forward run and feeds them to the backward
 * run, which then recomputes only the cheap rest (see `LayerPass`). All layers share the layer graphs, since weights
 * are inputs, so the base weights exist once (in JavaScript, read zero-copy) whatever the depth.
 */
import { decoderContext, decoderLayer, type LayerImplementation, OPSET, residualSum, rmsNorm } from '../graph/decoder-graph.ts';
import { type BuiltModel, OnnxGraphBuilder } from '../graph/onnx-builder.ts';
import { projectionDims } from '../adapters/lora.ts';
import type { LlamaConfig, LoraTargetModule } from '../model/types.ts';
import { appendGradients } from './autodiff.ts';

const B = 'batch';
const T = 'tokens';
const N = 'rows';

export const LAYER_GRAPH = {
  hidden: 'hidden',
  hiddenOut: 'hidden_out',
  hiddenOutGrad: 'hidden_out_grad',
  hiddenGrad: 'hidden_grad',
  ropeCos: 'rope_cos',
  ropeSin: 'rope_sin',
  causalMask: 'causal_mask',
  /** A base weight by its name inside a layer, e.g. `self_attn.q_proj.weight`. */
  weight: (role: string) => role,
  loraA: (module: LoraTargetModule) => `lora_A.${module}`,
  loraB: (module: LoraTargetModule) => `lora_B.${module}`,
  gradA: (module: LoraTargetModule) => `grad.lora_A.${module}`,
  gradB: (module: LoraTargetModule) => `grad.lora_B.${module}`,
  /** Each adapted projection's own dropout mask over its LoRA input, as PEFT draws one per module. */
  dropoutMask: (module: LoraTargetModule) => `lora_dropout.${module}`,
  /** A base projection's output (x·Wᵀ, without LoRA): computed inside the graph, or fed as saved. */
  baseProjection: (module: LoraTargetModule) => `base.${module}`,
  /** The output by which a saving forward run returns `baseProjection(module)`. */
  savedProjection: (module: LoraTargetModule) => `saved.${module}`,
} as const;

/**
 * Which run of a layer a graph does. `backward` recomputes the layer's forward pass and appends its backward pass.
 * `savesProjections`: the forward run also returns each base projection's output, and the backward run takes those
 * outputs as inputs instead of recomputing them (the input gradient through a frozen projection needs only its
 * weight, so nothing else of the forward pass is lost).
 */
export interface LayerPass {
  backward: boolean;
  savesProjections: boolean;
}

export const HEAD_GRAPH = {
  hidden: 'hidden',
  normWeight: 'model.norm.weight',
  lmHead: 'lm_head.weight',
  labels: 'labels',
  /** Per row, the weight of its label's negative log-likelihood in the loss (0 for rows that are not targets). */
  tokenWeights: 'token_weights',
  loss: 'loss',
  logits: 'logits',
  hiddenGrad: 'hidden_grad',
} as const;

export interface LoraGraphSettings {
  rank: number;
  alpha: number;
  targetModules: LoraTargetModule[];
  /** Whether dropout masks are inputs (training) or absent (evaluation, dropout 0). */
  dropout: boolean;
}

const MODULE_ROLE: Record<LoraTargetModule, string> = {
  q_proj: 'self_attn.q_proj',
  k_proj: 'self_attn.k_proj',
  v_proj: 'self_attn.v_proj',
  o_proj: 'self_attn.o_proj',
  gate_proj: 'mlp.gate_proj',
  up_proj: 'mlp.up_proj',
  down_proj: 'mlp.down_proj',
};

/** The Hugging Face weight name, inside a layer, of a projection. */
export const projectionWeightRole = (module: LoraTargetModule) => `${MODULE_ROLE[module]}.weight`;
export const NORM_ROLES = ['input_layernorm.weight', 'post_attention_layernorm.weight'] as const;

/** One decoder layer; with `pass.backward`, also the gradients of its input and of the LoRA weights. */
export function buildLayerGraph(c: LlamaConfig, lora: LoraGraphSettings, pass: LayerPass): BuiltModel {
  const g = new OnnxGraphBuilder(`llama_layer_${pass.backward ? 'backward' : 'forward'}${pass.savesProjections ? '_saved' : ''}`);
  const fusedHeads = c.numHeads + 2 * c.numKvHeads;
  const group = c.numHeads / c.numKvHeads;
  const x = g.input(LAYER_GRAPH.hidden, 'float32', [B, T, c.hiddenSize]);
  const ropeCos = g.input(LAYER_GRAPH.ropeCos, 'float32', [1, T, fusedHeads, c.headDim]);
  const ropeSin = g.input(LAYER_GRAPH.ropeSin, 'float32', [1, T, fusedHeads, c.headDim]);
  const causalMask = g.input(LAYER_GRAPH.causalMask, 'float32', [1, 1, `${group}*${T}`, T]);
  const ctx = decoderContext(g, c, ropeCos, ropeSin);

  const scale = g.constFloat(lora.alpha / lora.rank, 'lora_scale');
  const dropped = (module: LoraTargetModule, value: string, width: number) =>
    lora.dropout ? g.op('Mul', [value, g.input(LAYER_GRAPH.dropoutMask(module), 'float32', [B, T, width])]) : value;
  const trainable: string[] = [];
  const projections: { module: LoraTargetModule; outFeatures: number }[] = [];
  const projection = (module: LoraTargetModule, input: string) => {
    const { inFeatures, outFeatures } = projectionDims(c, module);
    const weight = g.input(LAYER_GRAPH.weight(projectionWeightRole(module)), 'float32', [outFeatures, inFeatures]);
    const base = g.op('MatMul', [input, g.op('Transpose', [weight], { perm: [1, 0] })], {}, LAYER_GRAPH.baseProjection(module));
    projections.push({ module, outFeatures });
    if (!lora.targetModules.includes(module)) return base;
    const a = g.input(LAYER_GRAPH.loraA(module), 'float32', [lora.rank, inFeatures]);
    const b = g.input(LAYER_GRAPH.loraB(module), 'float32', [outFeatures, lora.rank]);
    trainable.push(a, b);
    const down = g.op('MatMul', [dropped(module, input, inFeatures), g.op('Transpose', [a], { perm: [1, 0] })]);
    const delta = g.op('MatMul', [down, g.op('Transpose', [b], { perm: [1, 0] })]);
    return g.op('Add', [base, g.op('Mul', [delta, scale])]);
  };

  const training: LayerImplementation = {
    normWeight: (name) => g.input(LAYER_GRAPH.weight(name.replace(/^model\.layers\.\d+\./, '')), 'float32', [c.hiddenSize]),
    qkv: (_l, h) => g.op('Concat', [projection('q_proj', h), projection('k_proj', h), projection('v_proj', h)], { axis: 2 }),
    o: (_l, merged) => projection('o_proj', merged),
    gateUp: (_l, h) => g.op('Concat', [projection('gate_proj', h), projection('up_proj', h)], { axis: 2 }),
    down: (_l, act) => projection('down_proj', act),
    attend(_l, qGrouped, k, v) {
      const scores = g.op('Add', [g.op('MatMul', [qGrouped, g.op('Transpose', [k], { perm: [0, 1, 3, 2] })]), causalMask]);
      return g.op('MatMul', [g.op('Softmax', [scores], { axis: 3 }), v]);
    },
  };
  const y = residualSum(g, decoderLayer(ctx, training, 0, { x }).stream);
  if (!pass.backward) {
    g.output(y, LAYER_GRAPH.hiddenOut, 'float32', [B, T, c.hiddenSize]);
    if (pass.savesProjections) {
      for (const { module, outFeatures } of projections) g.output(LAYER_GRAPH.baseProjection(module), LAYER_GRAPH.savedProjection(module), 'float32', [B, T, outFeatures]);
    }
    return g.build(OPSET);
  }
  const dy = g.input(LAYER_GRAPH.hiddenOutGrad, 'float32', [B, T, c.hiddenSize]);
  const gradients = appendGradients(g, new Map([[y, dy]]), [x, ...trainable]);
  if (pass.savesProjections) {
    for (const { module, outFeatures } of projections) g.feedInstead(LAYER_GRAPH.baseProjection(module), 'float32', [B, T, outFeatures]);
  }
  g.output(gradients.get(x)!, LAYER_GRAPH.hiddenGrad, 'float32', [B, T, c.hiddenSize]);
  for (const module of lora.targetModules) {
    g.output(gradients.get(LAYER_GRAPH.loraA(module))!, LAYER_GRAPH.gradA(module), 'float32');
    g.output(gradients.get(LAYER_GRAPH.loraB(module))!, LAYER_GRAPH.gradB(module), 'float32');
  }
  return g.build(OPSET);
}

/**
 * The final norm, the language-model head and the loss −Σ w·log p(label) over rows of hidden states; with
 * `backward`, also the loss's gradient with respect to the hidden rows. With `logits`, the logits instead.
 */
export function buildHeadGraph(c: LlamaConfig, mode: 'loss' | 'backward' | 'logits'): BuiltModel {
  const g = new OnnxGraphBuilder(`llama_head_${mode}`);
  const x = g.input(HEAD_GRAPH.hidden, 'float32', [N, c.hiddenSize]);
  const norm = g.input(HEAD_GRAPH.normWeight, 'float32', [c.hiddenSize]);
  const lmHead = g.input(HEAD_GRAPH.lmHead, 'float32', [c.vocabSize, c.hiddenSize]);
  const logits = g.op('Gemm', [rmsNorm(g, c, x, norm), lmHead], { transB: 1 });
  if (mode === 'logits') {
    g.output(logits, HEAD_GRAPH.logits, 'float32', [N, c.vocabSize]);
    return g.build(OPSET);
  }
  const labels = g.input(HEAD_GRAPH.labels, 'int64', [N, 1]);
  const weights = g.input(HEAD_GRAPH.tokenWeights, 'float32', [N, 1]);
  const picked = g.op('GatherElements', [g.op('LogSoftmax', [logits], { axis: 1 }), labels], { axis: 1 });
  const loss = g.op('Neg', [g.op('ReduceSum', [g.op('Mul', [picked, weights])], { keepdims: 0 })]);
  g.output(loss, HEAD_GRAPH.loss, 'float32', []);
  if (mode === 'backward') {
    const gradients = appendGradients(g, new Map([[loss, g.constFloat(1)]]), [x]);
    g.output(gradients.get(x)!, HEAD_GRAPH.hiddenGrad, 'float32', [N, c.hiddenSize]);
  }
  return g.build(OPSET);
}

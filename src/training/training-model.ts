/**
 * Runs the training graphs over a packed batch: the embedding lookup in JavaScript, each layer's forward pass
 * (keeping only its input), the head's loss and gradient in row chunks (so the [rows, vocab] logits stay small),
 * and each layer's recomputed forward plus backward pass in reverse order, adding LoRA gradients into one flat
 * buffer laid out like the parameters. Layers whose base-projection outputs fit `savedActivationBytes` keep them
 * from the forward walk, so their backward run skips those matmuls.
 */
import type { BaseModel } from '../model/types.ts';
import { RopeTables } from '../runtime/rope.ts';
import { createRng } from '../engine/random.ts';
import { LoraParameterLayout } from './lora-parameters.ts';
import { createTrainingSession, float32Tensor, int64Tensor, type ort } from './ort-session.ts';
import { buildHeadGraph, buildLayerGraph, HEAD_GRAPH, LAYER_GRAPH, type LayerPass, NORM_ROLES, projectionWeightRole } from './training-graph.ts';
import { projectionDims } from '../adapters/lora.ts';
import { LORA_TARGET_MODULES, type LoraTargetModule } from '../model/types.ts';

/** Sequences right-padded to one length; padding is never attended to by real tokens (causal) nor a target. */
export interface PackedBatch {
  rows: number;
  tokens: number;
  /** [rows·tokens] input ids. */
  inputIds: Int32Array;
  /** [rows·tokens] the next token at each position (0 where there is none). */
  labels: BigInt64Array;
  /** [rows·tokens] each position's weight in the loss (0 for positions whose next token is not a target). */
  tokenWeights: Float32Array;
}

export interface TrainingModelSettings {
  rank: number;
  alpha: number;
  targetModules: LoraTargetModule[];
  dropout: number;
  threads: number;
  /** Rows of hidden states per head run: bounds the logits buffer to headRows × vocab floats. */
  headRows?: number;
  /**
   * Tokens per layer run: a batch's sequences go through each layer graph in groups of about this many tokens,
   * which bounds the activations (attention scores grow with rows × tokens²) that one run allocates.
   */
  layerTokens?: number;
  /**
   * Bytes of base-projection outputs a step may keep from its forward walk for its backward walk. Each layer that
   * fits is not recomputed in full when walking back (its seven base matmuls, most of a layer's work, are skipped);
   * the others are. One layer's outputs are rows × tokens × (sum of the projections' widths) floats.
   */
  savedActivationBytes?: number;
}

/**
 * Seeds of one micro-batch's dropout masks, per layer and adapted projection (in `LORA_TARGET_MODULES` order), so
 * the recomputation draws the same masks.
 */
export type DropoutSeeds = number[][];

const DEFAULT_HEAD_ROWS = 256;
const DEFAULT_LAYER_TOKENS = 512;
/** 1 GiB: every layer of the SmolLM2-135M shape at batch 4 × 256 (637 MB) fits. */
const DEFAULT_SAVED_ACTIVATION_BYTES = 2 ** 30;

type Feeds = Record<string, ort.Tensor>;

export class TrainingModel {
  private readonly rope: RopeTables;
  private readonly ropeCache = new Map<number, Feeds>();
  /** The training layer graphs' sessions, created on first use (a run that saves no layer never needs the saving pair). */
  private readonly layerSessions = new Map<string, Promise<ort.InferenceSession>>();
  private readonly layerWeights: Feeds[];
  private readonly headWeights: Feeds;
  /** The adapted projections, each with its own dropout mask over its input of `width` features. */
  private readonly dropoutTargets: { module: LoraTargetModule; width: number }[];

  private constructor(
    readonly model: BaseModel,
    readonly layout: LoraParameterLayout,
    private readonly settings: TrainingModelSettings,
    private readonly sessions: { forwardEval: ort.InferenceSession; head: ort.InferenceSession; headLoss: ort.InferenceSession; headLogits?: ort.InferenceSession },
  ) {
    const c = model.config;
    this.rope = new RopeTables(c);
    // Without dropout, the plain training forward graph is the evaluation graph.
    if (settings.dropout <= 0) this.layerSessions.set(layerSessionKey({ backward: false, savesProjections: false }), Promise.resolve(sessions.forwardEval));
    const weight = (name: string) => {
      const tensor = model.weights.get(name);
      if (!tensor) throw new Error(`weight ${name} missing from the loaded model`);
      return float32Tensor(tensor.data, tensor.shape);
    };
    const roles = [...NORM_ROLES, ...(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const).map(projectionWeightRole)];
    this.layerWeights = Array.from({ length: c.numLayers }, (_, l) =>
      Object.fromEntries(roles.map((role) => [LAYER_GRAPH.weight(role), weight(`model.layers.${l}.${role}`)])),
    );
    this.headWeights = {
      [HEAD_GRAPH.normWeight]: weight('model.norm.weight'),
      [HEAD_GRAPH.lmHead]: weight(c.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight'),
    };
    this.dropoutTargets = LORA_TARGET_MODULES.filter((m) => settings.targetModules.includes(m)).map((module) => ({
      module,
      width: projectionDims(c, module).inFeatures,
    }));
  }

  static async create(model: BaseModel, settings: TrainingModelSettings): Promise<TrainingModel> {
    assertTrainable(model);
    const c = model.config;
    const lora = { rank: settings.rank, alpha: settings.alpha, targetModules: settings.targetModules };
    const session = (graph: ReturnType<typeof buildHeadGraph>) => createTrainingSession(graph, settings.threads);
    const sessions = {
      forwardEval: await session(buildLayerGraph(c, { ...lora, dropout: false }, { backward: false, savesProjections: false })),
      head: await session(buildHeadGraph(c, 'backward')),
      headLoss: await session(buildHeadGraph(c, 'loss')),
    };
    const layout = new LoraParameterLayout(c, settings.rank, settings.targetModules);
    return new TrainingModel(model, layout, settings, sessions);
  }

  async close(): Promise<void> {
    const sessions = new Set([...Object.values(this.sessions), ...(await Promise.all(this.layerSessions.values()))]);
    for (const session of sessions) await session?.release();
  }

  /**
   * Loss of the batch (Σ weight · NLL) and its gradient, added into `gradients` (laid out like `parameters`).
   * `dropoutSeeds` of null trains without dropout.
   */
  async lossAndGradients(batch: PackedBatch, parameters: Float32Array, gradients: Float32Array, dropoutSeeds: DropoutSeeds | null): Promise<number> {
    const c = this.model.config;
    const savedLayers = Math.min(c.numLayers, Math.floor((this.settings.savedActivationBytes ?? DEFAULT_SAVED_ACTIVATION_BYTES) / this.savedBytesPerLayer(batch)));
    const passOf = (l: number, backward: boolean): LayerPass => ({ backward, savesProjections: l < savedLayers });
    const inputs: Float32Array[] = [this.embed(batch)];
    /** Per saving layer, per row group, the base projections' outputs as its forward run returned them. */
    const saved: Feeds[][] = [];
    for (let l = 0; l < c.numLayers; l++) {
      const masks = this.dropoutMasks(batch, dropoutSeeds?.[l] ?? 'ones');
      const next = new Float32Array(inputs[l].length);
      const forward = await this.layerSession(passOf(l, false));
      saved.push([]);
      for (const group of this.rowGroups(batch)) {
        const out = await forward.run(this.layerFeeds(l, group, parameters, inputs[l], masks));
        next.set(out[LAYER_GRAPH.hiddenOut].data as Float32Array, group.offset);
        if (l < savedLayers) saved[l].push(Object.fromEntries(LORA_TARGET_MODULES.map((m) => [LAYER_GRAPH.baseProjection(m), out[LAYER_GRAPH.savedProjection(m)]])));
      }
      inputs.push(next);
    }
    const last = inputs.pop()!;
    const { loss, hiddenGrad } = await this.head(batch, last, true);
    let upstream = hiddenGrad!;
    for (let l = c.numLayers - 1; l >= 0; l--) {
      const masks = this.dropoutMasks(batch, dropoutSeeds?.[l] ?? 'ones');
      const downstream = new Float32Array(upstream.length);
      const backward = await this.layerSession(passOf(l, true));
      let groupIndex = 0;
      for (const group of this.rowGroups(batch)) {
        const feeds = { ...this.layerFeeds(l, group, parameters, inputs[l], masks), ...saved[l][groupIndex++] };
        feeds[LAYER_GRAPH.hiddenOutGrad] = float32Tensor(group.slice(upstream), group.dims);
        const out = await backward.run(feeds);
        downstream.set(out[LAYER_GRAPH.hiddenGrad].data as Float32Array, group.offset);
        for (const slot of this.layout.slotsOfLayer(l)) {
          const name = slot.matrix === 'A' ? LAYER_GRAPH.gradA(slot.module) : LAYER_GRAPH.gradB(slot.module);
          const gradient = out[name].data as Float32Array;
          const target = this.layout.view(gradients, slot);
          for (let i = 0; i < target.length; i++) target[i] += gradient[i];
        }
      }
      inputs.pop();
      saved.pop();
      upstream = downstream;
    }
    return loss;
  }

  /** Loss of the batch without dropout or gradients (validation). */
  async loss(batch: PackedBatch, parameters: Float32Array): Promise<number> {
    return (await this.head(batch, await this.lastHidden(batch, parameters), false)).loss;
  }

  /** Logits of every position, `[rows·tokens, vocab]`, for checking the training forward against serving. */
  async logits(batch: PackedBatch, parameters: Float32Array): Promise<Float32Array> {
    const c = this.model.config;
    this.sessions.headLogits ??= await createTrainingSession(buildHeadGraph(c, 'logits'), this.settings.threads);
    const hidden = await this.lastHidden(batch, parameters);
    const rows = batch.rows * batch.tokens;
    const out = await this.sessions.headLogits.run({ ...this.headWeights, [HEAD_GRAPH.hidden]: float32Tensor(hidden, [rows, c.hiddenSize]) });
    return out[HEAD_GRAPH.logits].data as Float32Array;
  }

  /** Per layer, one seed per adapted projection's dropout mask, drawn from `seed`. */
  dropoutSeeds(seed: number): DropoutSeeds {
    const rng = createRng(seed);
    return Array.from({ length: this.model.config.numLayers }, () => this.dropoutTargets.map(() => Math.floor(rng() * 2 ** 32)));
  }

  private async lastHidden(batch: PackedBatch, parameters: Float32Array): Promise<Float32Array> {
    let hidden = this.embed(batch);
    for (let l = 0; l < this.model.config.numLayers; l++) {
      const next = new Float32Array(hidden.length);
      for (const group of this.rowGroups(batch)) {
        const feeds = this.layerFeeds(l, group, parameters, hidden, null);
        next.set((await this.sessions.forwardEval.run(feeds))[LAYER_GRAPH.hiddenOut].data as Float32Array, group.offset);
      }
      hidden = next;
    }
    return hidden;
  }

  /** The session of a training layer graph (with dropout inputs when training uses dropout). */
  private layerSession(pass: LayerPass): Promise<ort.InferenceSession> {
    const key = layerSessionKey(pass);
    let session = this.layerSessions.get(key);
    if (!session) {
      const { rank, alpha, targetModules, dropout, threads } = this.settings;
      session = createTrainingSession(buildLayerGraph(this.model.config, { rank, alpha, targetModules, dropout: dropout > 0 }, pass), threads);
      this.layerSessions.set(key, session);
    }
    return session;
  }

  /** Bytes of one layer's base-projection outputs over the batch. */
  private savedBytesPerLayer(batch: PackedBatch): number {
    const widths = LORA_TARGET_MODULES.reduce((sum, m) => sum + projectionDims(this.model.config, m).outFeatures, 0);
    return batch.rows * batch.tokens * widths * Float32Array.BYTES_PER_ELEMENT;
  }

  /** The batch's sequences in groups of about `layerTokens` tokens, one layer run each. */
  private *rowGroups(batch: PackedBatch): Generator<RowGroup> {
    const c = this.model.config;
    const perRun = Math.max(1, Math.floor((this.settings.layerTokens ?? DEFAULT_LAYER_TOKENS) / batch.tokens));
    for (let first = 0; first < batch.rows; first += perRun) {
      const rows = Math.min(perRun, batch.rows - first);
      yield new RowGroup(first, rows, batch.tokens, c.hiddenSize);
    }
  }

  /**
   * The layer's dropout masks over the whole batch, one per adapted projection: drawn from the layer's seeds,
   * masks of ones (dropout off in a dropout graph), or none (no dropout inputs).
   */
  private dropoutMasks(batch: PackedBatch, seeds: number[] | 'ones'): Float32Array[] | null {
    if (this.settings.dropout <= 0) return null;
    return this.dropoutTargets.map(({ width }, i) => {
      const mask = new Float32Array(batch.rows * batch.tokens * width);
      if (seeds === 'ones') mask.fill(1);
      else fillDropoutMask(mask, this.settings.dropout, seeds[i]);
      return mask;
    });
  }

  private async head(batch: PackedBatch, hidden: Float32Array, backward: boolean): Promise<{ loss: number; hiddenGrad?: Float32Array }> {
    const h = this.model.config.hiddenSize;
    const totalRows = batch.rows * batch.tokens;
    const chunk = this.settings.headRows ?? DEFAULT_HEAD_ROWS;
    const hiddenGrad = backward ? new Float32Array(hidden.length) : undefined;
    let loss = 0;
    for (let start = 0; start < totalRows; start += chunk) {
      const end = Math.min(totalRows, start + chunk);
      const weights = batch.tokenWeights.subarray(start, end);
      if (!weights.some((w) => w !== 0)) continue; // no target in these rows: no loss, no gradient
      const rows = end - start;
      const out = await (backward ? this.sessions.head : this.sessions.headLoss).run({
        ...this.headWeights,
        [HEAD_GRAPH.hidden]: float32Tensor(hidden.subarray(start * h, end * h), [rows, h]),
        [HEAD_GRAPH.labels]: int64Tensor(batch.labels.subarray(start, end), [rows, 1]),
        [HEAD_GRAPH.tokenWeights]: float32Tensor(weights, [rows, 1]),
      });
      loss += (out[HEAD_GRAPH.loss].data as Float32Array)[0];
      hiddenGrad?.set(out[HEAD_GRAPH.hiddenGrad].data as Float32Array, start * h);
    }
    return { loss, hiddenGrad };
  }

  private embed(batch: PackedBatch): Float32Array {
    const h = this.model.config.hiddenSize;
    const table = this.model.weights.get('model.embed_tokens.weight')!.data;
    const out = new Float32Array(batch.rows * batch.tokens * h);
    batch.inputIds.forEach((id, i) => out.set(table.subarray(id * h, (id + 1) * h), i * h));
    return out;
  }

  /** One layer run's inputs for the rows of `group`; `masks` (whole-batch, from `dropoutMasks`) when the graph has dropout. */
  private layerFeeds(layer: number, group: RowGroup, parameters: Float32Array, hidden: Float32Array, masks: Float32Array[] | null): Feeds {
    const feeds: Feeds = { ...this.layerWeights[layer], ...this.positionFeeds(group.tokens) };
    feeds[LAYER_GRAPH.hidden] = float32Tensor(group.slice(hidden), group.dims);
    for (const slot of this.layout.slotsOfLayer(layer)) {
      const name = slot.matrix === 'A' ? LAYER_GRAPH.loraA(slot.module) : LAYER_GRAPH.loraB(slot.module);
      feeds[name] = float32Tensor(this.layout.view(parameters, slot), slot.shape);
    }
    masks?.forEach((mask, i) => {
      const { module, width } = this.dropoutTargets[i];
      feeds[LAYER_GRAPH.dropoutMask(module)] = float32Tensor(group.slice(mask, width), [group.rows, group.tokens, width]);
    });
    return feeds;
  }

  /** RoPE tables and the causal mask for sequences of `tokens` positions (the same for every row and layer). */
  private positionFeeds(tokens: number): Feeds {
    const cached = this.ropeCache.get(tokens);
    if (cached) return cached;
    const c = this.model.config;
    const fusedHeads = c.numHeads + 2 * c.numKvHeads;
    const cos = new Float32Array(tokens * this.rope.tokenStride);
    const sin = new Float32Array(tokens * this.rope.tokenStride);
    for (let t = 0; t < tokens; t++) this.rope.fill(cos, sin, t, t);
    // Grouped queries are [group·T] rows: row g·T + i is query position i.
    const group = c.numHeads / c.numKvHeads;
    const mask = new Float32Array(group * tokens * tokens);
    for (let row = 0; row < group * tokens; row++) mask.fill(Number.NEGATIVE_INFINITY, row * tokens + (row % tokens) + 1, (row + 1) * tokens);
    const feeds = {
      [LAYER_GRAPH.ropeCos]: float32Tensor(cos, [1, tokens, fusedHeads, c.headDim]),
      [LAYER_GRAPH.ropeSin]: float32Tensor(sin, [1, tokens, fusedHeads, c.headDim]),
      [LAYER_GRAPH.causalMask]: float32Tensor(mask, [1, 1, group * tokens, tokens]),
    };
    this.ropeCache.set(tokens, feeds);
    return feeds;
  }
}

const layerSessionKey = (pass: LayerPass) => `${pass.backward ? 'backward' : 'forward'}/${pass.savesProjections ? 'saving' : 'recomputing'}`;

/** Consecutive sequences of a batch that go through a layer graph together. */
class RowGroup {
  constructor(
    readonly first: number,
    readonly rows: number,
    readonly tokens: number,
    private readonly hiddenSize: number,
  ) {}

  /** Where the group starts in a `[rows, tokens, hiddenSize]` buffer. */
  get offset(): number {
    return this.first * this.tokens * this.hiddenSize;
  }

  get dims(): number[] {
    return [this.rows, this.tokens, this.hiddenSize];
  }

  /** The group's rows of a `[rows, tokens, width]` buffer, zero-copy. */
  slice(buffer: Float32Array, width = this.hiddenSize): Float32Array {
    const rowLength = this.tokens * width;
    return buffer.subarray(this.first * rowLength, (this.first + this.rows) * rowLength);
  }
}

/**
 * Inverted dropout: each element is 0 with probability p, else 1/(1−p), independently. Rather than one draw per
 * element, the runs of kept elements between drops are drawn (geometric: P(run ≥ k) = (1−p)^k), so a mask costs
 * p·length draws — a 135M-shape layer's masks are millions of elements, drawn twice per step.
 */
export function fillDropoutMask(mask: Float32Array, p: number, seed: number): void {
  mask.fill(1 / (1 - p));
  if (p <= 0) return;
  const rng = createRng(seed);
  const logKeep = Math.log1p(-p);
  const keptRun = () => Math.floor(Math.log(1 - rng()) / logKeep);
  for (let i = keptRun(); i < mask.length; i += 1 + keptRun()) mask[i] = 0;
}

/** Training reads float base weights; a quantized base is refused before any work starts. */
export function assertTrainable(model: BaseModel): void {
  if (model.quantized?.size) {
    throw new Error(
      'training over a quantized base model is not supported; train on the float model (an F32/F16 GGUF or the ' +
        'Hugging Face checkpoint, without QUANTIZE) — the adapter it produces serves over the quantized base unchanged',
    );
  }
}

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadBaseModel } from '../src/model/load.ts';
import { weightsChecksum } from '../src/model/checksum.ts';
import { dequantizeMatrix } from '../src/model/quantized-matrix.ts';
import { ModelRunner, type RunnerOptions } from '../src/runtime/model-runner.ts';
import { loadAdapter } from '../src/adapters/adapter.ts';
import { randomLoraAdapter, writeLoraAdapter } from '../src/adapters/lora-writer.ts';
import { LORA_TARGET_MODULES, type BaseModel, type LoadQuantization, type WeightMap } from '../src/model/types.ts';
import { TrainingModel } from '../src/training/training-model.ts';
import { Engine } from '../src/engine/engine.ts';
import { mergedLora } from './support/family-references.ts';
import { STORIES_HF_DIR, STORIES_QUANT_DIR } from './support/models.ts';

interface LlamaCppReference {
  prompts: { prompt_ids: number[]; greedy_ids: number[]; top5_first: { id: number; prob: number }[] }[];
}
const REFERENCES: Record<string, LlamaCppReference> = JSON.parse(readFileSync(join(STORIES_QUANT_DIR, 'llama-cpp-reference.json'), 'utf8'));
const F32_FILE = 'stories260K-hidden192-f32.gguf';
const OPTIONS: RunnerOptions = { maxBatch: 4, adapterSlots: 2, maxLoraRank: 8, threads: 1 };

function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

function softmax(logits: Float32Array): number[] {
  const max = Math.max(...logits);
  const exps = Array.from(logits, (value) => Math.exp(value - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((value) => value / sum);
}

/** Greedy ids and the first position's probabilities, one sequence on its own. */
async function generate(model: BaseModel, prompt: number[], count: number): Promise<{ ids: number[]; firstProbs: number[] }> {
  const runner = await ModelRunner.create(model, OPTIONS);
  let logits = await runner.forward(0, [{ tokens: prompt, position: 0, slot: 0 }]);
  const firstProbs = softmax(logits);
  const ids: number[] = [];
  for (let position = prompt.length; ids.length < count; position++) {
    ids.push(argmax(logits));
    logits = await runner.forward(0, [{ tokens: [ids.at(-1)!], position, slot: 0 }]);
  }
  await runner.close();
  return { ids, firstProbs };
}

/** How many leading ids two sequences share. */
const commonPrefix = (a: number[], b: number[]) => {
  const at = a.findIndex((id, i) => id !== b[i]);
  return at < 0 ? Math.min(a.length, b.length) : at;
};

/** Greedy ids equal llama.cpp's as far as its own output for this file equals its F32 output; probabilities within 0.01. */
function assertMatchesLlamaCpp(reference: LlamaCppReference, result: { ids: number[]; firstProbs: number[] }, what: string): void {
  const [prompt] = reference.prompts;
  const agreeing = commonPrefix(prompt.greedy_ids, REFERENCES[F32_FILE].prompts[0].greedy_ids);
  assert.ok(agreeing >= 20, `${what}: llama.cpp's own output leaves F32 at ${agreeing}`);
  assert.deepEqual(result.ids.slice(0, agreeing), prompt.greedy_ids.slice(0, agreeing), what);
  for (const { id, prob } of prompt.top5_first) {
    assert.ok(Math.abs(result.firstProbs[id] - prob) <= 0.01, `${what}: p(${id}) = ${result.firstProbs[id]}, llama.cpp ${prob}`);
  }
}

const QUANTIZED_FILES: [file: string, types: string[]][] = [
  ['stories260K-hidden192-q8_0.gguf', ['Q8_0']],
  ['stories260K-hidden192-q4_0.gguf', ['Q4_0', 'Q8_0']],
  ['stories260K-hidden192-q4_0-pure.gguf', ['Q4_0']],
  ['stories260K-hidden192-q4_k_m.gguf', ['Q5_0', 'Q8_0']],
  ['stories260K-q4_k_m.gguf', ['Q5_0', 'Q8_0']],
];

for (const [file, types] of QUANTIZED_FILES) {
  test(`${file} is served quantized (${types.join(', ')}) and reproduces llama.cpp's greedy ids and first probabilities`, async () => {
    const model = await loadBaseModel(join(STORIES_QUANT_DIR, file));
    const served = new Set([...model.quantized!.values()].map((m) => m.sourceType));
    assert.deepEqual([...served].sort(), [...types].sort());
    // Every projection and the output projection are quantized, except float tensors the file keeps (F16 ffn_down).
    const floatProjections = [...model.weights.keys()].filter((name) => LORA_TARGET_MODULES.some((m) => name.endsWith(`${m}.weight`)));
    assert.deepEqual(floatProjections, file === 'stories260K-q4_k_m.gguf' ? [0, 1, 2, 3, 4].map((l) => `model.layers.${l}.mlp.down_proj.weight`) : []);
    assert.ok(model.quantized!.has('lm_head.weight'));
    const { prompt_ids: prompt, greedy_ids: greedy } = REFERENCES[file].prompts[0];
    assertMatchesLlamaCpp(REFERENCES[file], await generate(model, prompt, greedy.length), file);
  });
}

for (const [quantize, file] of [['q8', 'stories260K-hidden192-q8_0.gguf'], ['q4', 'stories260K-hidden192-q4_0.gguf']] as const) {
  test(`on-load quantization ${quantize} of the F32 file behaves as llama.cpp's ${file}`, async () => {
    const model = await loadBaseModel(join(STORIES_QUANT_DIR, F32_FILE), { quantize });
    const { prompt_ids: prompt, greedy_ids: greedy } = REFERENCES[file].prompts[0];
    assertMatchesLlamaCpp(REFERENCES[file], await generate(model, prompt, greedy.length), `${F32_FILE} ${quantize}`);
  });
}

test('on-load quantization of a Hugging Face directory quantizes the projections whose rows are whole blocks', async () => {
  const float = await loadBaseModel(STORIES_HF_DIR);
  const model = await loadBaseModel(STORIES_HF_DIR, { quantize: 'q8' });
  // ffn width 172 is not a multiple of 32: down_proj stays float, as llama.cpp falls back for such rows.
  assert.deepEqual(
    [...model.weights.keys()].filter((name) => name.includes('proj')),
    [0, 1, 2, 3, 4].map((l) => `model.layers.${l}.mlp.down_proj.weight`),
  );
  assert.equal(model.quantized!.get('model.layers.0.self_attn.q_proj.weight')!.sourceType, 'Q8_0');
  // The tied output projection is quantized for the matmul; the embedding lookup keeps its float rows.
  assert.equal(model.quantized!.get('lm_head.weight')!.sourceType, 'Q8_0');
  assert.deepEqual(model.weights.get('model.embed_tokens.weight'), float.weights.get('model.embed_tokens.weight'));
  assert.notEqual(model.checksum, float.checksum);
  assert.equal(model.checksum, (await loadBaseModel(STORIES_HF_DIR, { quantize: 'q8' })).checksum, 'the same bytes served, the same checksum');
  const reference = REFERENCES[F32_FILE].prompts[0];
  const result = await generate(model, reference.prompt_ids, reference.greedy_ids.length);
  assert.deepEqual(result.ids, reference.greedy_ids);
});

/** The float model a quantized one represents: its quantized matrices decoded (the tied head stays tied). */
function dequantizedModel(model: BaseModel): BaseModel {
  const weights: WeightMap = new Map(model.weights);
  for (const [name, matrix] of model.quantized!) {
    if (name !== 'lm_head.weight' || !model.config.tieWordEmbeddings) weights.set(name, { shape: [...matrix.shape], data: dequantizeMatrix(matrix) });
  }
  return { ...model, weights, quantized: new Map() };
}

for (const [quantize, dora] of [['q4', false], ['q8', false], ['q4', true]] satisfies [LoadQuantization, boolean][]) {
  const family = dora ? 'DoRA' : 'LoRA';
  test(`full-precision ${family} per row over a ${quantize} base: rows independent, equal to merged weights, base bytes unchanged`, async () => {
    const base = await loadBaseModel(STORIES_HF_DIR, { quantize });
    const dir = await mkdtemp(join(tmpdir(), 'quantized-lora-'));
    try {
      const spec = randomLoraAdapter(base.config, { rank: 8, targetModules: [...LORA_TARGET_MODULES], seed: 5, std: 0.15, alpha: 16, dora });
      await writeLoraAdapter(dir, spec);
      const runner = await ModelRunner.create(base, OPTIONS);
      // DoRA's row norms are taken from the weights the graph uses: here the quantized ones, decoded.
      const slot = runner.slots.place('a', await runner.prepareAdapter(await loadAdapter(dir, base.config)))!;
      const prompts = [[1, 403, 407, 261, 378], [1, 338, 286, 393]];
      const vocab = base.config.vocabSize;
      // Row 0 on the base, row 1 on the adapter, prefilled in one pass; then each alone.
      const together = Float32Array.from(await runner.forward(0, [{ tokens: prompts[0], position: 0, slot: 0 }, { tokens: prompts[1], position: 0, slot }]));
      const aloneBase = Float32Array.from(await runner.forward(2, [{ tokens: prompts[0], position: 0, slot: 0 }]));
      const aloneAdapter = Float32Array.from(await runner.forward(3, [{ tokens: prompts[1], position: 0, slot }]));
      const baseOnAdapterPrompt = Float32Array.from(await runner.forward(2, [{ tokens: prompts[1], position: 0, slot: 0 }]));
      await runner.close();
      const diff = (a: Float32Array, b: Float32Array) => a.reduce((worst, value, i) => Math.max(worst, Math.abs(value - b[i])), 0);
      assert.ok(diff(together.subarray(0, vocab), aloneBase) < 1e-4, 'a base row is unaffected by an adapter row beside it');
      assert.ok(diff(together.subarray(vocab), aloneAdapter) < 1e-4, 'an adapter row is the same batched or alone');

      // The independent computation: the represented float weights with W + scale·B·A merged in (and, for DoRA,
      // each merged row rescaled to its magnitude).
      const float = dequantizedModel(base);
      const merged = await ModelRunner.create({ ...float, weights: mergedLora(float, spec) }, OPTIONS);
      const expected = Float32Array.from(await merged.forward(0, [{ tokens: prompts[1], position: 0, slot: 0 }]));
      await merged.close();
      const effect = diff(expected, baseOnAdapterPrompt);
      const error = diff(expected, aloneAdapter);
      // The remaining difference is MatMulNBits' int8 rounding of activations, far below what the adapter changes.
      assert.ok(effect > 1, `the adapter must visibly change the logits (max change ${effect})`);
      assert.ok(error < 0.05 * effect, `${family} over the quantized base differs from merged weights by ${error} (adapter effect ${effect})`);
      assert.equal(weightsChecksum(base.weights, base.quantized), base.checksum, 'the served base bytes are unchanged');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
}

test('the training engine refuses a quantized base with a message saying what to train on', async () => {
  const model = await loadBaseModel(join(STORIES_QUANT_DIR, 'stories260K-hidden192-q8_0.gguf'));
  await assert.rejects(
    TrainingModel.create(model, { rank: 4, alpha: 8, targetModules: ['q_proj'], dropout: 0, threads: 1 }),
    /training over a quantized base model is not supported; train on the float model/,
  );
});

test('the engine quantizes on load when asked and reports the served weights’ checksum', async () => {
  const engine = await Engine.start({ modelPath: STORIES_HF_DIR, maxBatch: 2, adapterSlots: 1, maxLoraRank: 8, hostCacheBytes: 1 << 20, maxQueue: 4, threads: 1, quantize: 'q8' });
  try {
    assert.equal(engine.info.checksum, (await loadBaseModel(STORIES_HF_DIR, { quantize: 'q8' })).checksum);
    const reference = REFERENCES[F32_FILE].prompts[0];
    const result = await engine.generate({
      promptIds: reference.prompt_ids,
      adapter: null,
      sampling: { temperature: 0, topP: 1, topK: 0, presencePenalty: 0, frequencyPenalty: 0 },
      maxTokens: reference.greedy_ids.length,
      stopTokenIds: [],
    });
    assert.deepEqual(result.tokens, reference.greedy_ids);
  } finally {
    await engine.close();
  }
});

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadAdapter, type Adapter } from '../src/adapters/adapter.ts';
import { bottleneckAdapterFiles, randomBottleneckAdapter } from '../src/adapters/bottleneck-writer.ts';
import { loraAdapterFiles, randomLoraAdapter, writeAdapterFiles } from '../src/adapters/lora-writer.ts';
import { ia3AdapterFiles, promptLearningAdapterFiles, randomIa3Adapter, randomPromptLearningAdapter, type PromptLearningAdapterSpec } from '../src/adapters/peft-writers.ts';
import { weightsChecksum } from '../src/model/checksum.ts';
import { loadBaseModel } from '../src/model/load.ts';
import type { BaseModel } from '../src/model/types.ts';
import { ModelRunner, type RunnerOptions } from '../src/runtime/model-runner.ts';
import { bottleneckHooks, mergedLora, scaledIa3 } from './support/family-references.ts';
import { referenceLogits, type ReferenceHooks } from './support/reference-decoder.ts';
import { STORIES_GGUF, STORIES_HF_DIR } from './support/models.ts';

const OPTIONS: RunnerOptions = { maxBatch: 16, adapterSlots: 12, maxLoraRank: 32 };
const ALL = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;

/** An adapter of each family, its files as its library writes them, and the reference's view of it. */
interface Case {
  name: string;
  files: Map<string, Uint8Array>;
  hooks: (base: BaseModel) => ReferenceHooks;
  adapter?: Adapter;
}

let hf: BaseModel;
let root: string;
const cases: Case[] = [];

before(async () => {
  hf = await loadBaseModel(STORIES_HF_DIR);
  root = await mkdtemp(join(tmpdir(), 'peft-families-'));
  const c = hf.config;
  const lora4 = randomLoraAdapter(c, { rank: 4, targetModules: ['q_proj', 'v_proj'], seed: 1, std: 0.15, alpha: 8 });
  const lora8 = randomLoraAdapter(c, { rank: 8, targetModules: [...ALL], seed: 2, std: 0.15, alpha: 16 });
  const dora = randomLoraAdapter(c, { rank: 4, targetModules: [...ALL], seed: 3, std: 0.15, alpha: 8, dora: true });
  const ia3 = randomIa3Adapter(c, { targetModules: ['k_proj', 'v_proj', 'o_proj', 'gate_proj', 'down_proj'], feedforwardModules: ['o_proj', 'down_proj'], seed: 4, std: 0.3 });
  const prompt: PromptLearningAdapterSpec = randomPromptLearningAdapter(c, { peftType: 'PROMPT_TUNING', virtualTokens: 3, seed: 5, std: 0.5 });
  const pTuning = randomPromptLearningAdapter(c, { peftType: 'P_TUNING', virtualTokens: 2, seed: 6, std: 0.5 });
  const prefix = randomPromptLearningAdapter(c, { peftType: 'PREFIX_TUNING', virtualTokens: 4, seed: 7, std: 1 });
  const seq = randomBottleneckAdapter(c, { kind: 'seq_bn', seed: 8, std: 0.2 });
  const double = randomBottleneckAdapter(c, { kind: 'double_seq_bn', seed: 9, std: 0.2, options: { reduction_factor: 8 } });
  const parallel = randomBottleneckAdapter(c, { kind: 'par_bn', seed: 10, std: 0.1, options: { non_linearity: 'gelu' } });
  const tanh = randomBottleneckAdapter(c, { kind: 'seq_bn', seed: 11, std: 0.2, options: { non_linearity: 'gelu_new', original_ln_before: false, mh_adapter: true, output_adapter: false, scaling: 0.5 } });
  const tanhOnly = randomBottleneckAdapter(c, { kind: 'par_bn', seed: 12, std: 0.1, options: { non_linearity: 'tanh', reduction_factor: 4 } });
  cases.push(
    { name: 'lora-r4', files: loraAdapterFiles(lora4), hooks: (base) => ({ weights: mergedLora(base, lora4) }) },
    { name: 'lora-r8', files: loraAdapterFiles(lora8), hooks: (base) => ({ weights: mergedLora(base, lora8) }) },
    { name: 'dora', files: loraAdapterFiles(dora), hooks: (base) => ({ weights: mergedLora(base, dora) }) },
    { name: 'ia3', files: ia3AdapterFiles(ia3), hooks: (base) => ({ weights: scaledIa3(base, ia3) }) },
    { name: 'prompt', files: promptLearningAdapterFiles(prompt, c), hooks: () => ({ softPrompt: prompt.embeddings }) },
    { name: 'p-tuning', files: promptLearningAdapterFiles(pTuning, c), hooks: () => ({ softPrompt: pTuning.embeddings }) },
    { name: 'prefix', files: promptLearningAdapterFiles(prefix, c), hooks: () => ({ prefix: { tokens: 4, keyValues: prefix.embeddings } }) },
    { name: 'seq_bn', files: bottleneckAdapterFiles(seq, c), hooks: bottleneckHooks(seq, 'relu', 1, [1, 1]) },
    { name: 'double_seq_bn', files: bottleneckAdapterFiles(double, c), hooks: bottleneckHooks(double, 'swish', 1, [1, 0]) },
    { name: 'par_bn', files: bottleneckAdapterFiles(parallel, c), hooks: bottleneckHooks(parallel, 'gelu', 4, [0, 1]) },
    { name: 'seq_bn-gelu_new', files: bottleneckAdapterFiles(tanh, c), hooks: bottleneckHooks(tanh, 'gelu_new', 0.5, [1, 0]) },
    { name: 'par_bn-tanh', files: bottleneckAdapterFiles(tanhOnly, c), hooks: bottleneckHooks(tanhOnly, 'tanh', 4, [0, 1]) },
  );
  for (const entry of cases) {
    await writeAdapterFiles(join(root, entry.name), entry.files);
    entry.adapter = await loadAdapter(join(root, entry.name), c);
  }
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

const PROMPTS = [[1, 403, 407, 261, 378], [1, 338, 286, 393], [1, 291, 376, 298, 315, 421], [1, 317, 394]];
const FED = [432, 383, 286];

/** A row of a runner: its slot, and how its sequence is laid out in the cache (virtual tokens first). */
interface PlacedRow {
  slot: number;
  virtual: number;
  softPrompt: boolean;
}

async function placeRow(runner: ModelRunner, entry: Case | null, key: string): Promise<PlacedRow> {
  if (!entry) return { slot: 0, virtual: 0, softPrompt: false };
  const slot = runner.slots.holdIfResident(key) ?? runner.slots.place(key, await runner.prepareAdapter(entry.adapter!))!;
  const prompt = runner.slots.promptOf(slot);
  return { slot, virtual: prompt.virtualTokens, softPrompt: prompt.softPrompt !== undefined };
}

/** Prefill then decode FED.length tokens for each row in its own cache row, the decode steps of all rows batched. */
async function run(runner: ModelRunner, rows: { entry: Case | null; prompt: number[] }[]): Promise<Float32Array[][]> {
  const vocab = runner.config.vocabSize;
  const placed: PlacedRow[] = [];
  const out: Float32Array[][] = rows.map(() => []);
  for (const [b, row] of rows.entries()) {
    const p = await placeRow(runner, row.entry, row.entry?.name ?? '');
    placed.push(p);
    runner.writePrefix(0, b, p.slot);
    const tokens = p.softPrompt ? [...new Array(p.virtual).fill(0), ...row.prompt] : row.prompt;
    const position = p.softPrompt ? 0 : p.virtual;
    out[b].push(Float32Array.from(await runner.forward(b, [{ tokens, position, slot: p.slot }])));
  }
  for (const [i, token] of FED.entries()) {
    const logits = await runner.forward(0, rows.map((row, b) => ({ tokens: [token], position: placed[b].virtual + row.prompt.length + i, slot: placed[b].slot })));
    rows.forEach((_, b) => out[b].push(logits.slice(b * vocab, (b + 1) * vocab)));
  }
  return out;
}

function maxDifference(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

test('every family loads from its library\'s files, telling the formats apart by content', () => {
  assert.deepEqual(
    cases.map(({ name, adapter }) => [name, adapter!.family]),
    [
      ['lora-r4', 'lora'], ['lora-r8', 'lora'], ['dora', 'dora'], ['ia3', 'ia3'], ['prompt', 'prompt_tuning'], ['p-tuning', 'p_tuning'],
      ['prefix', 'prefix_tuning'], ['seq_bn', 'seq_bn'], ['double_seq_bn', 'double_seq_bn'], ['par_bn', 'par_bn'],
      ['seq_bn-gelu_new', 'seq_bn'], ['par_bn-tanh', 'par_bn'],
    ],
  );
});

test('each family alone equals an independent forward pass applying it as its library does', async () => {
  const runner = await ModelRunner.create(hf, OPTIONS);
  try {
    for (const [index, entry] of cases.entries()) {
      const prompt = PROMPTS[index % PROMPTS.length];
      const [logits] = await run(runner, [{ entry, prompt }]);
      const hooks = entry.hooks(hf);
      let worst = 0;
      let effect = 0;
      for (let step = 0; step <= FED.length; step++) {
        const sequence = [...prompt, ...FED.slice(0, step)];
        const expected = referenceLogits(hf, sequence, hooks);
        worst = Math.max(worst, maxDifference(logits[step], expected));
        effect = Math.max(effect, maxDifference(expected, referenceLogits(hf, sequence)));
      }
      assert.ok(worst < 1e-4, `${entry.name}: max abs logit difference ${worst}`);
      assert.ok(effect > 0.05, `${entry.name} must visibly change the logits (max change ${effect})`);
    }
  } finally {
    await runner.close();
  }
});

test('one batch mixing base rows and every family gives each row what the family gives alone, on HF and GGUF bases', async () => {
  for (const path of [STORIES_HF_DIR, STORIES_GGUF]) {
    const base = await loadBaseModel(path);
    const rows = [
      { entry: null, prompt: PROMPTS[0] },
      ...cases.map((entry, index) => ({ entry, prompt: PROMPTS[(index + 1) % PROMPTS.length] })),
      { entry: cases[4], prompt: PROMPTS[2] },
      { entry: null, prompt: PROMPTS[3] },
    ];
    const batched = await run(await ModelRunner.create(base, OPTIONS), rows);
    let worst = 0;
    for (const [b, row] of rows.entries()) {
      // Alone: the HF reference, so a GGUF base must have put every q/k-indexed tensor in Hugging Face order.
      const hooks = row.entry ? row.entry.hooks(hf) : {};
      for (let step = 0; step <= FED.length; step++) {
        worst = Math.max(worst, maxDifference(batched[b][step], referenceLogits(hf, [...row.prompt, ...FED.slice(0, step)], hooks)));
      }
    }
    assert.ok(worst < 1e-4, `${path}: max abs logit difference ${worst}`);
    assert.equal(weightsChecksum(base.weights), base.checksum, 'base weights unchanged');
  }
});

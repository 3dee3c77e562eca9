import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { bottleneckAdapterFiles, randomBottleneckAdapter } from '../src/adapters/bottleneck-writer.ts';
import { loraAdapterFiles, randomLoraAdapter, writeAdapterFiles } from '../src/adapters/lora-writer.ts';
import { ia3AdapterFiles, promptLearningAdapterFiles, randomIa3Adapter, randomPromptLearningAdapter } from '../src/adapters/peft-writers.ts';
import { loadBaseModel } from '../src/model/load.ts';
import { LORA_TARGET_MODULES, type BaseModel } from '../src/model/types.ts';
import { bottleneckHooks, mergedLora, scaledIa3 } from './support/family-references.ts';
import { REPO_ROOT, STORIES_HF_DIR } from './support/models.ts';
import { referenceLogits, type ReferenceHooks } from './support/reference-decoder.ts';

const run = promisify(execFile);
const generate = (args: string[]) => run(process.execPath, ['--import', 'tsx', 'src/cli/generate.ts', ...args], { cwd: REPO_ROOT });
const MAX_TOKENS = 5;

let base: BaseModel;
let root: string;
const families: { name: string; files: Map<string, Uint8Array>; hooks: () => ReferenceHooks }[] = [];

before(async () => {
  base = await loadBaseModel(STORIES_HF_DIR);
  root = await mkdtemp(join(tmpdir(), 'generate-cli-'));
  const c = base.config;
  const all = [...LORA_TARGET_MODULES];
  const lora = randomLoraAdapter(c, { rank: 8, targetModules: all, seed: 41, std: 0.2 });
  const dora = randomLoraAdapter(c, { rank: 4, targetModules: ['q_proj', 'v_proj', 'down_proj'], seed: 42, std: 0.2, dora: true });
  const ia3 = randomIa3Adapter(c, { targetModules: ['k_proj', 'v_proj', 'down_proj'], feedforwardModules: ['down_proj'], seed: 43, std: 0.4 });
  const prompt = randomPromptLearningAdapter(c, { peftType: 'PROMPT_TUNING', virtualTokens: 3, seed: 44, std: 0.5 });
  const prefix = randomPromptLearningAdapter(c, { peftType: 'PREFIX_TUNING', virtualTokens: 4, seed: 45, std: 1 });
  const seq = randomBottleneckAdapter(c, { kind: 'seq_bn', seed: 46, std: 0.2 });
  const double = randomBottleneckAdapter(c, { kind: 'double_seq_bn', seed: 47, std: 0.2 });
  // Reduction factor 0.5 makes a bottleneck twice the hidden size: wider than the CLI's default slot.
  const wide = randomBottleneckAdapter(c, { kind: 'par_bn', seed: 48, std: 0.05, options: { reduction_factor: 0.5 } });
  families.push(
    { name: 'lora', files: loraAdapterFiles(lora), hooks: () => ({ weights: mergedLora(base, lora) }) },
    { name: 'dora', files: loraAdapterFiles(dora), hooks: () => ({ weights: mergedLora(base, dora) }) },
    { name: 'ia3', files: ia3AdapterFiles(ia3), hooks: () => ({ weights: scaledIa3(base, ia3) }) },
    { name: 'prompt', files: promptLearningAdapterFiles(prompt, c), hooks: () => ({ softPrompt: prompt.embeddings }) },
    { name: 'prefix', files: promptLearningAdapterFiles(prefix, c), hooks: () => ({ prefix: { tokens: 4, keyValues: prefix.embeddings } }) },
    { name: 'seq_bn', files: bottleneckAdapterFiles(seq, c), hooks: bottleneckHooks(seq, 'relu', 1, [1, 1]) },
    { name: 'double_seq_bn', files: bottleneckAdapterFiles(double, c), hooks: bottleneckHooks(double, 'swish', 1, [1, 0]) },
    { name: 'par_bn-wide', files: bottleneckAdapterFiles(wide, c), hooks: bottleneckHooks(wide, 'relu', 4, [0, 1]) },
  );
  for (const { name, files } of families) await writeAdapterFiles(join(root, name), files);
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

test('npm run generate --adapter serves every family as the reference decoder computes it', async () => {
  const baseRun = JSON.parse((await generate(['--model', STORIES_HF_DIR, '--prompt', 'Lily saw a', '--max-tokens', String(MAX_TOKENS), '--json'])).stdout);
  for (const { name, hooks } of families) {
    const args = ['--model', STORIES_HF_DIR, '--adapter', join(root, name), '--prompt', 'Lily saw a', '--max-tokens', String(MAX_TOKENS), '--json'];
    if (name === 'par_bn-wide') args.push('--max-rank', String(2 * base.config.hiddenSize));
    const { stdout } = await generate(args);
    const output = JSON.parse(stdout) as { prompt_ids: number[]; token_ids: number[] };
    assert.deepEqual(output.prompt_ids, baseRun.prompt_ids);
    const expected: number[] = [];
    while (expected.length < MAX_TOKENS) expected.push(argmax(referenceLogits(base, [...output.prompt_ids, ...expected], hooks())));
    assert.deepEqual(output.token_ids, expected, `${name}: greedy tokens equal the reference's`);
  }
});

test('npm run generate names --max-rank when an adapter is wider than its slot', async () => {
  await assert.rejects(
    generate(['--model', STORIES_HF_DIR, '--adapter', join(root, 'par_bn-wide'), '--prompt', 'Lily saw a', '--max-tokens', '2']),
    (error: { code: number; stderr: string }) => {
      assert.equal(error.code, 1);
      assert.match(error.stderr, new RegExp(`bottleneck width\\) ${2 * base.config.hiddenSize} exceeds the slot rank 64; .*--max-rank`));
      return true;
    },
  );
});

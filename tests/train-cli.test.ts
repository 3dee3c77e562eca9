import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { loadLoraAdapter } from '../src/adapters/lora.ts';
import { loadBaseModel } from '../src/model/load.ts';
import { REPO_ROOT, STORIES_HF_DIR } from './support/models.ts';

const run = promisify(execFile);
const cli = (args: string[]) => run(process.execPath, ['--import', 'tsx', 'src/cli/train.ts', ...args], { cwd: REPO_ROOT });

test('npm run train writes a PEFT adapter the gateway loads, showing step, loss, tokens/s and ETA', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'train-cli-'));
  try {
    const lines = (count: number, from: number) =>
      Array.from({ length: count }, (_, i) => JSON.stringify({ prompt: `Tom saw a red zib ${from + i}.`, completion: ' The zib was big.' })).join('\n');
    await writeFile(join(dir, 'train.jsonl'), `${lines(10, 0)}\n`);
    await writeFile(join(dir, 'valid.jsonl'), `${lines(2, 10)}\n`);
    const out = join(dir, 'adapter');
    const { stderr } = await cli([
      '--model', STORIES_HF_DIR, '--data', join(dir, 'train.jsonl'), '--validation', join(dir, 'valid.jsonl'), '--out', out,
      '--rank', '4', '--targets', 'q_proj,v_proj', '--epochs', '2', '--batch-size', '5', '--lr', '1e-3', '--seed', '3', '--threads', '1',
    ]);
    assert.match(stderr, /^10 training sequences/m);
    assert.match(stderr, /^step 4\/4 epoch 2 loss \d+\.\d+ valid_loss \d+\.\d+ \d+ tokens\/s ETA 0m00s$/m);
    const model = await loadBaseModel(STORIES_HF_DIR);
    const adapter = await loadLoraAdapter(out, model.config);
    assert.equal(adapter.rank, 4);
    assert.deepEqual(adapter.targetModules, ['q_proj', 'v_proj']);
    assert.equal(adapter.modules.length, 2 * model.config.numLayers);
    assert.ok(adapter.modules.some((m) => m.B.some((v) => v !== 0)), 'training moved B away from its zero start');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('npm run train refuses bad arguments and bad data with a message naming them', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'train-cli-'));
  try {
    await assert.rejects(cli(['--model', STORIES_HF_DIR, '--out', dir]), (error: { stderr: string; code: number }) => {
      assert.equal(error.code, 1);
      assert.match(error.stderr, /--model, --data and --out are required/);
      return true;
    });
    await writeFile(join(dir, 'bad.jsonl'), `${JSON.stringify({ text: 'fine' })}\nnot json\n`);
    await assert.rejects(cli(['--model', STORIES_HF_DIR, '--data', join(dir, 'bad.jsonl'), '--out', join(dir, 'a')]), (error: { stderr: string }) => {
      assert.match(error.stderr, /line 2/);
      return true;
    });
    await assert.rejects(cli(['--model', STORIES_HF_DIR, '--data', join(dir, 'bad.jsonl'), '--out', join(dir, 'a'), '--targets', 'q_proj,x_proj']), (error: { stderr: string }) => {
      assert.match(error.stderr, /--targets: unknown module "x_proj"/);
      return true;
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

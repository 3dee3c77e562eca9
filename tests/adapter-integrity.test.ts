/**
 * Stored adapter files altered after publishing. The store lists versions without reading their weights, so a
 * flipped byte is caught by the engine's loader when it first reads the version, and a truncated file by the next
 * scan; either way the owner hears the version is unavailable (not that it does not exist), the gateway logs a
 * warning naming the version and the file, and a metric counts it. Other tenants still see nothing.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loraAdapterFiles, randomLoraAdapter } from '../src/adapters/lora-writer.ts';
import { runInference } from '../src/gateway/inference.ts';
import type { ApiError } from '../src/gateway/errors.ts';
import { BASE_MODEL, KEYS, startTestGateway, type TestGateway } from './support/gateway.ts';

let gateway: TestGateway;
const logs: string[] = [];

before(async () => {
  gateway = await startTestGateway({}, {}, (line) => logs.push(line));
});

after(async () => {
  await gateway.stop();
});

async function publish(adapter: string, seed: number) {
  const spec = randomLoraAdapter(gateway.services.engine.info.config, { rank: 4, targetModules: ['q_proj', 'v_proj'], seed, std: 0.2 });
  return gateway.services.store.publish('acme', adapter, loraAdapterFiles(spec));
}

async function status(model: string, key: string = KEYS.acme): Promise<{ status: number; error?: { message: string; code: string | null; type: string } }> {
  const response = await fetch(`${gateway.url}/v1/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt: 'Once upon a time', max_tokens: 4, temperature: 0 }),
  });
  const body = (await response.json()) as { error?: { message: string; code: string | null; type: string } };
  return { status: response.status, error: body.error };
}

function warnings(): { msg: string; adapter?: string; file?: string }[] {
  return logs.map((line) => JSON.parse(line)).filter((entry) => entry.level === 'warn' && entry.adapter !== undefined);
}

async function alteredCount(file: string): Promise<number> {
  const text = await (await fetch(`${gateway.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`gateway_adapter_altered_files_total{file="${file}"}`));
  return line ? Number(line.split(' ').at(-1)) : 0;
}

test('a flipped byte is refused at first load: unavailable to the owner, logged with version and file, counted', async () => {
  const record = await publish('flipped', 1);
  const weights = join(record.path, 'adapter_model.safetensors');
  const bytes = await readFile(weights);
  bytes[bytes.length - 3] ^= 0x40;
  await writeFile(weights, bytes);
  await gateway.services.store.refresh();
  // Same size, so listing still offers it: only reading the weights can tell.
  assert.ok(gateway.services.store.resolve('acme', 'flipped'), 'still listed before it is read');

  const model = `${BASE_MODEL}+acme/flipped`;
  const first = await status(model);
  assert.equal(first.status, 503);
  assert.equal(first.error?.code, 'adapter_unavailable');
  assert.match(first.error!.message, /unavailable/);
  assert.match(first.error!.message, /adapter_model\.safetensors of adapter version acme\/flipped@1 changed after it was published/);
  assert.doesNotMatch(first.error!.message, /does not exist/);
  assert.deepEqual(
    warnings().map((w) => [w.adapter, w.file]),
    [['acme/flipped@1', 'adapter_model.safetensors']],
  );
  assert.equal(await alteredCount('adapter_model.safetensors'), 1);

  // Remembered: the next request is answered from the catalog, pinned or not, without reading the files again.
  for (const again of [model, `${model}@1`]) {
    const answer = await status(again);
    assert.equal(answer.status, 503);
    assert.equal(answer.error?.code, 'adapter_unavailable');
  }
  assert.equal(warnings().length, 1);
  // Another tenant learns nothing about it.
  const stranger = await status(model, KEYS.globex);
  assert.equal(stranger.status, 404);
  assert.equal(stranger.error?.code, 'model_not_found');
});

test('a truncated file is caught by the next scan, with the same answer, log and metric', async () => {
  const record = await publish('truncated', 2);
  const healthy = await publish('healthy', 3);
  await truncate(join(record.path, 'adapter_model.safetensors'), 100);
  await gateway.services.store.refresh();

  const answer = await status(`${BASE_MODEL}+acme/truncated@1`);
  assert.equal(answer.status, 503);
  assert.equal(answer.error?.code, 'adapter_unavailable');
  assert.match(answer.error!.message, /changed after it was published/);
  assert.deepEqual(warnings().at(-1), { ...warnings().at(-1), adapter: 'acme/truncated@1', file: 'adapter_model.safetensors' });
  assert.equal(await alteredCount('adapter_model.safetensors'), 2);

  // Everything else keeps serving.
  assert.equal((await status(`${BASE_MODEL}+acme/healthy@${healthy.version}`)).status, 200);
  assert.equal((await status(BASE_MODEL)).status, 200);
});

test('a version deleted after a request resolved it, before its files were read, answers 404 and counts nothing altered', async () => {
  const record = await publish('deleted-meanwhile', 3);
  const principal = gateway.services.authenticator.authenticate(`Bearer ${KEYS.acme}`)!;
  const model = await gateway.services.models.resolve(principal, `${BASE_MODEL}+acme/deleted-meanwhile`);
  // The interleaving a request racing a delete can meet: resolved, then deleted, then read by the engine.
  await gateway.services.store.remove('acme', 'deleted-meanwhile', record.version);
  const warningsBefore = warnings().length;
  const alteredBefore = await alteredCount('adapter_model.safetensors');
  const request = {
    principal,
    model,
    operation: 'text_completion' as const,
    responseId: 'cmpl-deleted-meanwhile',
    promptIds: [1, 403, 407],
    promptParam: 'prompt',
    sampling: { temperature: 0, topP: 1, topK: 0, presencePenalty: 0, frequencyPenalty: 0 },
    maxTokens: 4,
    stop: [],
  };
  await assert.rejects(runInference(gateway.services, request), (error: ApiError) => {
    assert.deepEqual([error.status, error.code], [404, 'model_not_found']);
    return true;
  });
  assert.equal(warnings().length, warningsBefore, 'a deleted version is not an altered file');
  assert.equal(await alteredCount('adapter_model.safetensors'), alteredBefore);
});

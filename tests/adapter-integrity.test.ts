/**
 * Stored adapter files altered after publishing. The store lists versions without reading their weights, so a
 * flipped byte is caught by the engine's loader when it first reads the version, and a truncated file by the next
 * scan; either way the owner hears the version is unavailable (not that it does not exist), the gateway logs a
 * warning naming the version and the file, and a metric counts it. Other tenants still see nothing.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, rename, stat, truncate, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { bottleneckAdapterFiles, randomBottleneckAdapter } from '../src/adapters/bottleneck-writer.ts';
import { loraAdapterFiles, randomLoraAdapter } from '../src/adapters/lora-writer.ts';
import { ia3AdapterFiles, promptLearningAdapterFiles, randomIa3Adapter, randomPromptLearningAdapter } from '../src/adapters/peft-writers.ts';
import { runInference, type InferenceRequest } from '../src/gateway/inference.ts';
import type { Principal } from '../src/gateway/auth.ts';
import type { ResolvedModel } from '../src/gateway/model-resolver.ts';
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

test('a gateway starting on a store lists every family from the manifests without reading any weights', async () => {
  const c = gateway.services.engine.info.config;
  const families = {
    lora: loraAdapterFiles(randomLoraAdapter(c, { rank: 4, targetModules: ['q_proj'], seed: 4 })),
    dora: loraAdapterFiles(randomLoraAdapter(c, { rank: 4, targetModules: ['q_proj'], seed: 5, dora: true })),
    ia3: ia3AdapterFiles(randomIa3Adapter(c, { targetModules: ['k_proj', 'down_proj'], feedforwardModules: ['down_proj'], seed: 6 })),
    prompt_tuning: promptLearningAdapterFiles(randomPromptLearningAdapter(c, { peftType: 'PROMPT_TUNING', virtualTokens: 3, seed: 7 }), c),
    prefix_tuning: promptLearningAdapterFiles(randomPromptLearningAdapter(c, { peftType: 'PREFIX_TUNING', virtualTokens: 3, seed: 8 }), c),
    seq_bn: bottleneckAdapterFiles(randomBottleneckAdapter(c, { kind: 'seq_bn', seed: 9, options: { reduction_factor: 16 } }), c),
    double_seq_bn: bottleneckAdapterFiles(randomBottleneckAdapter(c, { kind: 'double_seq_bn', seed: 10, options: { reduction_factor: 16 } }), c),
    par_bn: bottleneckAdapterFiles(randomBottleneckAdapter(c, { kind: 'par_bn', seed: 11, options: { reduction_factor: 16 } }), c),
  };
  for (const [family, files] of Object.entries(families)) {
    const record = await gateway.services.store.publish('acme', `family-${family.replaceAll('_', '-')}`, files);
    assert.equal(record.summary.family, family);
    // Weights no parser accepts, of the same size and mtime: a start that read or validated them could not list them.
    const weightsName = Object.keys(record.files).find((name) => name.endsWith('.safetensors'))!;
    const weights = join(record.path, weightsName);
    const before = await stat(weights);
    await writeFile(weights, Buffer.alloc(before.size, 0xff));
    await utimes(weights, before.atime, before.mtime);
  }

  const restarted = await startTestGateway({}, { ADAPTERS_DIR: gateway.adaptersDir });
  try {
    const { store } = restarted.services;
    assert.deepEqual(store.listInvalid().filter((entry) => entry.adapter.startsWith('family-')), []);
    for (const family of Object.keys(families)) {
      assert.equal(store.resolve('acme', `family-${family.replaceAll('_', '-')}`)?.summary.family, family);
    }
    // Reading them is where the change is found.
    const response = await fetch(`${restarted.url}/v1/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${KEYS.acme}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: `${BASE_MODEL}+acme/family-seq-bn`, prompt: 'Once upon a time', max_tokens: 2 }),
    });
    assert.equal(response.status, 503);
    assert.equal(((await response.json()) as { error: { code: string } }).error.code, 'adapter_unavailable');
  } finally {
    await restarted.stop();
  }
});

/** A completion request for `model` as the HTTP layer hands it to runInference. */
function completionRequest(principal: Principal, model: ResolvedModel, responseId: string): InferenceRequest {
  return {
    principal,
    model,
    operation: 'text_completion',
    responseId,
    promptIds: [1, 403, 407],
    promptParam: 'prompt',
    sampling: { temperature: 0, topP: 1, topK: 0, presencePenalty: 0, frequencyPenalty: 0 },
    maxTokens: 4,
    stop: [],
  };
}

test('a version deleted after a request resolved it, before its files were read, answers 404 and counts nothing altered', async () => {
  const record = await publish('deleted-meanwhile', 3);
  const principal = gateway.services.authenticator.authenticate(`Bearer ${KEYS.acme}`)!;
  const model = await gateway.services.models.resolve(principal, `${BASE_MODEL}+acme/deleted-meanwhile`);
  // The interleaving a request racing a delete can meet: resolved, then deleted, then read by the engine.
  await gateway.services.store.remove('acme', 'deleted-meanwhile', record.version);
  const warningsBefore = warnings().length;
  const alteredBefore = await alteredCount('adapter_model.safetensors');
  await assert.rejects(runInference(gateway.services, completionRequest(principal, model, 'cmpl-deleted-meanwhile')), (error: ApiError) => {
    assert.deepEqual([error.status, error.code], [404, 'model_not_found']);
    return true;
  });
  assert.equal(warnings().length, warningsBefore, 'a deleted version is not an altered file');
  assert.equal(await alteredCount('adapter_model.safetensors'), alteredBefore);
});

test('a version read while a delete has moved its directory out but the store still lists it answers 404, as an unknown adapter', async () => {
  const record = await publish('deleted-midway', 4);
  const principal = gateway.services.authenticator.authenticate(`Bearer ${KEYS.acme}`)!;
  const model = await gateway.services.models.resolve(principal, `${BASE_MODEL}+acme/deleted-midway`);
  // A delete's first step, alone: the directory moves out; the store forgets the version only after that.
  await rename(record.path, `${record.path}.moved-out`);
  try {
    assert.ok(gateway.services.store.resolve('acme', 'deleted-midway', record.version), 'the store still lists the version');
    const warningsBefore = warnings().length;
    await assert.rejects(runInference(gateway.services, completionRequest(principal, model, 'cmpl-deleted-midway')), (error: ApiError) => {
      assert.deepEqual([error.status, error.type, error.code, error.param], [404, 'invalid_request_error', 'model_not_found', 'model']);
      return true;
    });
    assert.equal(warnings().length, warningsBefore, 'a deleted version is not an altered file');
    const answer = await status(model.id);
    const unknown = await status(`${BASE_MODEL}+acme/never-published`);
    assert.deepEqual([answer.status, answer.error?.type, answer.error?.code], [unknown.status, unknown.error?.type, unknown.error?.code]);
  } finally {
    await rename(`${record.path}.moved-out`, record.path);
  }
});

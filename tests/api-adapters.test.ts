import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createHash, randomUUID } from 'node:crypto';
import { mkdir, readdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loraAdapterFiles, randomLoraAdapter, writeLoraAdapter, type LoraAdapterSpec } from '../src/adapters/lora-writer.ts';
import { versionOfCacheKey } from '../src/engine/protocol.ts';
import { adapterCacheKey } from '../src/gateway/model-resolver.ts';
import { filesTag } from '../src/registry/manifest.ts';
import type { LlamaConfig } from '../src/model/types.ts';
import { stepUntilStreaming } from './support/engine-steps.ts';
import { BASE_MODEL, KEYS, startTestGateway, type TestGateway } from './support/gateway.ts';
import { layoutPrepared } from './support/layouts.ts';

let gateway: TestGateway;
let base: LlamaConfig;

before(async () => {
  gateway = await startTestGateway();
  base = gateway.services.engine.info.config;
});

after(async () => {
  await gateway.stop();
});

const PROMPT = 'Once upon a time';

interface Answer {
  status: number;
  body: any;
}

interface UploadPart {
  field: string;
  data: Uint8Array;
  filename?: string;
}

/** Every answer is checked for leaked store paths, whatever the test is about. */
async function answer(response: Response, on: TestGateway = gateway): Promise<Answer> {
  const text = await response.text();
  assert.ok(!text.includes(on.adaptersDir), `a response exposes the store's path: ${text}`);
  assert.ok(!text.includes('.staging'), `a response exposes a staging path: ${text}`);
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

async function call(method: string, path: string, key: string = KEYS.acme, body?: unknown): Promise<Answer> {
  const headers: Record<string, string> = { authorization: `Bearer ${key}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(`${gateway.url}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  return answer(response);
}

function partsOf(files: Map<string, Uint8Array>): UploadPart[] {
  return [...files].map(([name, data]) => ({ field: name, data, filename: name }));
}

async function upload(
  path: string,
  parts: UploadPart[],
  options: { key?: string; version?: string; on?: TestGateway } = {},
): Promise<Answer> {
  const on = options.on ?? gateway;
  const form = new FormData();
  for (const { field, data, filename } of parts) form.append(field, new Blob([new Uint8Array(data)]), filename);
  if (options.version !== undefined) form.append('version', options.version);
  const response = await fetch(`${on.url}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${options.key ?? KEYS.acme}` },
    body: form,
  });
  return answer(response, on);
}

function adapterSpec(seed: number, overrides: { rank?: number; config?: LlamaConfig } = {}): LoraAdapterSpec {
  return randomLoraAdapter(overrides.config ?? base, {
    rank: overrides.rank ?? 4,
    targetModules: ['q_proj', 'v_proj', 'down_proj'],
    seed,
    std: 0.2,
  });
}

/** The adapter's two PEFT files, optionally with the config edited. */
async function adapterFiles(spec: LoraAdapterSpec, editConfig?: (config: Record<string, unknown>) => void): Promise<Map<string, Uint8Array>> {
  const files = loraAdapterFiles(spec);
  const config = JSON.parse(Buffer.from(files.get('adapter_config.json')!).toString('utf8')) as Record<string, unknown>;
  editConfig?.(config);
  files.set('adapter_config.json', Buffer.from(JSON.stringify(config)));
  return files;
}

async function complete(model: string, maxTokens = 12, key: string = KEYS.acme): Promise<string> {
  const completion = await gateway.client(key).completions.create({ model, prompt: PROMPT, max_tokens: maxTokens, temperature: 0 });
  return completion.choices[0].text;
}

async function chatSucceeds(on: TestGateway = gateway): Promise<void> {
  const chat = await on.client().chat.completions.create({
    model: BASE_MODEL,
    messages: [{ role: 'user', content: PROMPT }],
    max_tokens: 4,
    temperature: 0,
  });
  assert.equal(chat.choices[0].finish_reason, 'length');
}

/** Every version directory and staging entry on disk, to show that a refused upload left nothing behind. */
async function storeContents(root: string = gateway.adaptersDir): Promise<string[]> {
  const entries: string[] = [];
  for (const staged of await readdir(join(root, '.staging'))) entries.push(`.staging/${staged}`);
  for (const tenant of await readdir(root)) {
    if (tenant.startsWith('.')) continue;
    for (const adapter of await readdir(join(root, tenant))) {
      for (const version of await readdir(join(root, tenant, adapter))) entries.push(`${tenant}/${adapter}/${version}`);
    }
  }
  return entries.sort();
}

async function modelStatus(model: string, key: string = KEYS.acme): Promise<number | 'ok'> {
  try {
    await complete(model, 2, key);
    return 'ok';
  } catch (err) {
    return (err as { status: number }).status;
  }
}

test('an uploaded adapter is published as version 1 and serves at once, differently from the base', async () => {
  const files = await adapterFiles(adapterSpec(1));
  const published = await upload('/v1/adapters/acme/story', partsOf(files));
  assert.equal(published.status, 201, JSON.stringify(published.body));
  const record = published.body;
  assert.equal(record.id, 'acme/story@1');
  assert.equal(record.model, `${BASE_MODEL}+acme/story`);
  assert.equal(record.version, '1');
  assert.ok(Number.isFinite(Date.parse(record.publishedAt)));
  for (const [name, data] of files) {
    assert.deepEqual(record.files[name], { size: data.byteLength, sha256: createHash('sha256').update(data).digest('hex') });
  }
  assert.deepEqual(record.summary, { family: 'lora', rank: 4, targetModules: ['q_proj', 'v_proj', 'down_proj'], virtualTokens: 0, bytes: record.summary.bytes });
  assert.equal(record.public, false);

  const adapted = await complete(`${BASE_MODEL}+acme/story`);
  assert.notEqual(adapted, await complete(BASE_MODEL));
  assert.equal(await complete(`${BASE_MODEL}+acme/story@1`), adapted);
});

test('an upload has its slot layout made before the first request, which reads it and answers as a gateway without layouts', async () => {
  assert.equal((await upload('/v1/adapters/acme/prepared', partsOf(await adapterFiles(adapterSpec(77))))).status, 201);
  await layoutPrepared(gateway, 'acme', 'prepared');
  const model = `${BASE_MODEL}+acme/prepared`;
  const served = await complete(model);

  const plain = await startTestGateway({}, { ADAPTERS_DIR: gateway.adaptersDir, LAYOUT_CACHE_BYTES: '0' });
  try {
    assert.equal(plain.services.settings.engine.adapterLayoutCache, undefined);
    const completion = await plain.client().completions.create({ model, prompt: PROMPT, max_tokens: 12, temperature: 0 });
    assert.equal(served, completion.choices[0].text);
  } finally {
    await plain.stop();
  }
});

test('a second upload becomes the latest version while the first stays addressable', async () => {
  const first = await upload('/v1/adapters/acme/versions', partsOf(await adapterFiles(adapterSpec(2))));
  const v1Output = await complete(`${BASE_MODEL}+acme/versions`);
  const second = await upload('/v1/adapters/acme/versions', partsOf(await adapterFiles(adapterSpec(3))));
  assert.deepEqual([first.status, second.status], [201, 201]);
  assert.equal(second.body.id, 'acme/versions@2');

  const inspected = await call('GET', '/v1/adapters/acme/versions');
  assert.equal(inspected.status, 200);
  assert.equal(inspected.body.latestVersion, '2');
  assert.deepEqual(
    inspected.body.versions.map((v: { id: string; model: string; latest: boolean }) => [v.id, v.model, v.latest]),
    [
      ['acme/versions@1', `${BASE_MODEL}+acme/versions@1`, false],
      ['acme/versions@2', `${BASE_MODEL}+acme/versions@2`, true],
    ],
  );

  const latestOutput = await complete(`${BASE_MODEL}+acme/versions`);
  assert.notEqual(latestOutput, v1Output);
  assert.equal(await complete(`${BASE_MODEL}+acme/versions@2`), latestOutput);
  assert.equal(await complete(`${BASE_MODEL}+acme/versions@1`), v1Output);

  const explicit = await upload('/v1/adapters/acme/versions', partsOf(await adapterFiles(adapterSpec(4))), { version: 'exp-a' });
  assert.equal(explicit.status, 201);
  assert.equal(explicit.body.id, 'acme/versions@exp-a');
  const taken = await upload('/v1/adapters/acme/versions', partsOf(await adapterFiles(adapterSpec(5))), { version: '1' });
  assert.equal(taken.status, 409);
  assert.equal(taken.body.error.code, 'conflict');
});

test('corrupt and malicious uploads are refused with a clear 400, publish nothing, and the gateway keeps serving', async () => {
  const good = await adapterFiles(adapterSpec(6));
  const withWeights = (weights: Uint8Array) => partsOf(new Map([...good, ['adapter_model.safetensors', weights]]));
  const hugeHeader = new Uint8Array(8);
  new DataView(hugeHeader.buffer).setBigUint64(0, 1n << 40n, true);
  const nanSpec = adapterSpec(7);
  nanSpec.modules[3].B[5] = Number.NaN;

  const cases: { name: string; path?: string; parts: UploadPart[]; version?: string; code: string; message: RegExp }[] = [
    { name: 'a safetensors header claiming a terabyte', parts: withWeights(hugeHeader), code: 'invalid_adapter', message: /header/ },
    {
      name: 'an adapter made for a different hidden size',
      parts: partsOf(await adapterFiles(adapterSpec(8, { config: { ...base, hiddenSize: 32 } }))),
      code: 'invalid_adapter',
      message: /lora_A.*64/,
    },
    { name: 'a NaN in a tensor', parts: partsOf(await adapterFiles(nanSpec)), code: 'invalid_adapter', message: /NaN|finite/i },
    {
      name: 'pickled weights',
      parts: [...partsOf(good).filter((p) => p.field !== 'adapter_model.safetensors'), { field: 'adapter_model.bin', data: new Uint8Array([0x80, 0x02]) }],
      code: 'invalid_file',
      message: /adapter_model\.bin.*[Pp]ickled/,
    },
    {
      name: 'a path as the multipart file name',
      parts: [...partsOf(good), { field: 'file', data: new Uint8Array([1]), filename: '../../x.safetensors' }],
      code: 'invalid_file',
      message: /\.\.\/\.\.\/x\.safetensors.*contains a path/,
    },
    {
      name: 'a path as the file name of a named field',
      parts: partsOf(good).map((p) => (p.field === 'adapter_model.safetensors' ? { ...p, filename: '../../x.safetensors' } : p)),
      code: 'invalid_file',
      message: /contains a path/,
    },
    {
      name: 'DoRA',
      parts: partsOf(await adapterFiles(adapterSpec(9), (config) => (config.use_dora = true))),
      code: 'invalid_adapter',
      message: /use_dora/,
    },
    { name: 'rank 32 above MAX_LORA_RANK 16', parts: partsOf(await adapterFiles(adapterSpec(10, { rank: 32 }))), code: 'invalid_adapter', message: /MAX_LORA_RANK/ },
    { name: 'a version that is a path', parts: partsOf(good), version: '../1', code: 'invalid_name', message: /version/ },
    { name: 'an adapter name with an encoded slash', path: '/v1/adapters/acme/..%2F..%2Fescape', parts: partsOf(good), code: 'invalid_name', message: /adapter name/ },
    { name: 'an adapter name containing a slash', path: '/v1/adapters/acme/a%2Fb', parts: partsOf(good), code: 'invalid_name', message: /adapter name/ },
    { name: 'a hidden adapter name', path: '/v1/adapters/acme/.hidden', parts: partsOf(good), code: 'invalid_name', message: /adapter name/ },
    { name: 'an uppercase adapter name', path: '/v1/adapters/acme/Upper', parts: partsOf(good), code: 'invalid_name', message: /adapter name/ },
    { name: 'a tenant name that climbs out', path: '/v1/adapters/..%2Fglobex/x', parts: partsOf(good), code: 'invalid_name', message: /tenant name/ },
  ];

  for (const refused of cases) {
    const before = await storeContents();
    const result = await upload(refused.path ?? '/v1/adapters/acme/refused', refused.parts, { version: refused.version });
    assert.equal(result.status, 400, `${refused.name}: ${JSON.stringify(result.body)}`);
    assert.equal(result.body.error.type, 'invalid_request_error', refused.name);
    assert.equal(result.body.error.code, refused.code, `${refused.name}: ${result.body.error.message}`);
    assert.match(result.body.error.message, refused.message, refused.name);
    assert.deepEqual(await storeContents(), before, `${refused.name} left something in the store`);
    assert.equal((await call('GET', '/v1/adapters/acme/refused')).status, 404, refused.name);
    await chatSucceeds();
  }
});

test('an upload over MAX_ADAPTER_BYTES is refused with 413 before anything is stored', async () => {
  const small = await startTestGateway({}, { MAX_ADAPTER_BYTES: '4KiB' });
  try {
    const result = await upload('/v1/adapters/acme/big', partsOf(await adapterFiles(adapterSpec(11))), { on: small });
    assert.equal(result.status, 413);
    assert.equal(result.body.error.code, 'request_too_large');
    assert.match(result.body.error.message, /4096 bytes/);
    assert.deepEqual(await storeContents(small.adaptersDir), []);
    await chatSucceeds(small);
  } finally {
    await small.stop();
  }
});

test('publishing a version while a stream runs on the previous one leaves the stream unchanged', async () => {
  const model = `${BASE_MODEL}+acme/live`;
  assert.equal((await upload('/v1/adapters/acme/live', partsOf(await adapterFiles(adapterSpec(12))))).status, 201);
  const request = { model, prompt: PROMPT, max_tokens: 400, temperature: 0, stream: true } as const;
  const streamText = async (chunks: AsyncIterable<{ choices: { text: string }[] }>) => {
    let text = '';
    for await (const chunk of chunks) text += chunk.choices[0]?.text ?? '';
    return text;
  };
  const alone = await streamText(await gateway.client().completions.create(request));

  // Paused once the stream has its first token, the stream is still running when v2 is published.
  const { engine } = gateway.services;
  engine.pause();
  const streaming = gateway.client().completions.create(request);
  await stepUntilStreaming(engine);
  const stream = await streaming;
  const chunks = stream[Symbol.asyncIterator]();
  const first = await chunks.next();
  assert.ok(!first.done);
  try {
    const published = await upload('/v1/adapters/acme/live', partsOf(await adapterFiles(adapterSpec(13))));
    assert.equal(published.status, 201);
    assert.equal(engine.pendingRequests, 1);
  } finally {
    engine.resume();
  }
  const during = (first.value.choices[0]?.text ?? '') + (await streamText({ [Symbol.asyncIterator]: () => chunks }));
  assert.equal(during, alone);

  const afterwards = await complete(model, 24);
  assert.equal(afterwards, await complete(`${model}@2`, 24));
  assert.notEqual(afterwards, await complete(`${model}@1`, 24));
});

test('a version renamed into ADAPTERS_DIR by another process is served without a restart', async () => {
  const staging = join(gateway.adaptersDir, '.staging', randomUUID());
  await writeLoraAdapter(staging, adapterSpec(14));
  await mkdir(join(gateway.adaptersDir, 'acme', 'sidecar'), { recursive: true });

  const model = `${BASE_MODEL}+acme/sidecar`;
  // The store's watcher or periodic rescan picks it up; wait for that event, not for a time.
  const added = once(gateway.services.store, 'added');
  await rename(staging, join(gateway.adaptersDir, 'acme', 'sidecar', '1'));
  await added;
  assert.equal(await modelStatus(model), 'ok');
  assert.notEqual(await complete(model), await complete(BASE_MODEL));
  const listed = await call('GET', '/v1/adapters');
  assert.ok(listed.body.data.some((a: { id: string }) => a.id === 'acme/sidecar'));
});

test('deleting a version or an adapter makes it unknown at once and drops cached weights', async () => {
  const model = `${BASE_MODEL}+acme/doomed`;
  await upload('/v1/adapters/acme/doomed', partsOf(await adapterFiles(adapterSpec(15))));
  await upload('/v1/adapters/acme/doomed', partsOf(await adapterFiles(adapterSpec(16))));
  const v1Output = await complete(`${model}@1`);

  const removedVersion = await call('DELETE', '/v1/adapters/acme/doomed/versions/1');
  assert.equal(removedVersion.status, 200);
  assert.deepEqual(removedVersion.body, { object: 'adapter.version', id: 'acme/doomed@1', deleted: true });
  assert.equal(await modelStatus(`${model}@1`), 404);
  assert.equal(await modelStatus(model), 'ok');
  assert.equal((await call('DELETE', '/v1/adapters/acme/doomed/versions/1')).status, 404);

  const removed = await call('DELETE', '/v1/adapters/acme/doomed');
  assert.equal(removed.status, 200);
  await assert.rejects(complete(model), (err: { status: number; error: { code: string } }) => {
    assert.equal(err.status, 404);
    assert.equal(err.error.code, 'model_not_found');
    return true;
  });
  assert.equal((await call('GET', '/v1/adapters/acme/doomed')).status, 404);
  assert.ok(!(await readdir(join(gateway.adaptersDir, 'acme'))).includes('doomed'));

  // Version numbers are given again after a delete; the engine must not answer from the deleted weights.
  const again = await upload('/v1/adapters/acme/doomed', partsOf(await adapterFiles(adapterSpec(17))));
  assert.equal(again.body.id, 'acme/doomed@1');
  const fresh = await complete(`${model}@1`);
  assert.notEqual(fresh, v1Output);
});

test('a version published again under a deleted number gets another cache key, so no cache or load in flight serves the old weights', async () => {
  const first = await upload('/v1/adapters/acme/reborn', partsOf(await adapterFiles(adapterSpec(21))));
  const before = gateway.services.store.resolve('acme', 'reborn', '1')!;
  assert.equal((await call('DELETE', '/v1/adapters/acme/reborn')).status, 200);
  const second = await upload('/v1/adapters/acme/reborn', partsOf(await adapterFiles(adapterSpec(22))));
  assert.equal(first.body.id, second.body.id, 'the number is given again');
  const after = gateway.services.store.resolve('acme', 'reborn', '1')!;
  assert.notEqual(before.filesTag, after.filesTag);
  assert.notEqual(adapterCacheKey(before), adapterCacheKey(after));
  assert.equal(versionOfCacheKey(adapterCacheKey(after)), 'acme/reborn@1');
  assert.equal(after.filesTag, filesTag({ ...after.files }), 'the tag depends on the content only');
  const resolved = await gateway.services.models.resolve({ kind: 'admin' }, `${BASE_MODEL}+acme/reborn@1`);
  assert.equal(resolved.ref?.key, adapterCacheKey(after));
});

test('an admin can make an adapter public to every tenant and private again', async () => {
  await upload('/v1/adapters/acme/shared', partsOf(await adapterFiles(adapterSpec(18))));
  const model = `${BASE_MODEL}+acme/shared`;
  const globexSees = async () => ({
    inference: await modelStatus(model, KEYS.globex),
    listed: (await call('GET', '/v1/adapters', KEYS.globex)).body.data.some((a: { id: string }) => a.id === 'acme/shared'),
    models: (await gateway.client(KEYS.globex).models.list()).data.some((m) => m.id === model),
  });
  assert.deepEqual(await globexSees(), { inference: 404, listed: false, models: false });

  const shared = await call('PUT', '/admin/adapters/acme/shared/visibility', KEYS.admin, { public: true });
  assert.equal(shared.status, 200);
  assert.equal(shared.body.public, true);
  assert.deepEqual(await globexSees(), { inference: 'ok', listed: true, models: true });
  assert.equal(await complete(model, 12, KEYS.globex), await complete(model, 12, KEYS.acme));
  // Public means usable, not writable.
  assert.equal((await call('DELETE', '/v1/adapters/acme/shared', KEYS.globex)).status, 403);

  assert.equal((await call('PUT', '/admin/adapters/acme/shared/visibility', KEYS.admin, { public: false })).status, 200);
  assert.deepEqual(await globexSees(), { inference: 404, listed: false, models: false });

  const badBody = await call('PUT', '/admin/adapters/acme/shared/visibility', KEYS.admin, { public: 'yes' });
  assert.deepEqual([badBody.status, badBody.body.error.param], [400, 'public']);
  assert.equal((await call('PUT', '/admin/adapters/acme/nothing-here/visibility', KEYS.admin, { public: true })).status, 404);
});

test('the admin listing shows every tenant, including versions on disk that cannot be served', async () => {
  await upload('/v1/adapters/globex/report', partsOf(await adapterFiles(adapterSpec(19))), { key: KEYS.globex });
  const broken = join(gateway.adaptersDir, 'globex', 'report', 'broken');
  await mkdir(broken);
  await writeFile(join(broken, 'adapter_config.json'), '{"peft_type": "LORA"}');
  await gateway.services.store.refresh();

  const listing = await call('GET', '/admin/adapters', KEYS.admin);
  assert.equal(listing.status, 200);
  const ids = listing.body.data.map((a: { id: string }) => a.id);
  assert.ok(ids.includes('acme/story') && ids.includes('globex/report'), ids.join(', '));
  const invalid = listing.body.invalid.find((entry: { id: string }) => entry.id === 'globex/report@broken');
  assert.match(invalid.error, /adapter_model\.safetensors or adapter\.safetensors is missing/);
  assert.equal(invalid.path, undefined);

  const acmeList = await call('GET', '/v1/adapters');
  assert.ok(acmeList.body.data.every((a: { tenant: string }) => a.tenant === 'acme'));
  assert.equal((await call('GET', '/admin/adapters')).status, 403);
});

test('uploads must be multipart with the adapter files', async () => {
  const json = await call('POST', '/v1/adapters/acme/form', KEYS.acme, { files: [] });
  assert.deepEqual([json.status, json.body.error.code], [400, 'invalid_upload']);
  assert.match(json.body.error.message, /multipart\/form-data/);

  const missing = await upload('/v1/adapters/acme/form', [{ field: 'adapter_config.json', data: Buffer.from('{}') }]);
  assert.deepEqual([missing.status, missing.body.error.code], [400, 'invalid_file']);
  assert.match(missing.body.error.message, /lacks adapter_model\.safetensors/);

  // A generic "file" field carries the file under its own name, as many upload clients send it.
  const generic = await upload(
    '/v1/adapters/acme/form',
    [...(await adapterFiles(adapterSpec(20)))].map(([name, data]) => ({ field: 'file', data, filename: name })),
  );
  assert.equal(generic.status, 201, JSON.stringify(generic.body));
});

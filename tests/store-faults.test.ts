/**
 * Storage faults during publishing, on a real gateway process: a full disk (the process's file-size limit, which
 * makes writes past it fail with EFBIG as a full disk fails them with ENOSPC) and a store the gateway may not
 * write (permissions; as root, the gateway runs without CAP_DAC_OVERRIDE so that permissions bind it). The client
 * gets a clear error in OpenAI's shape, nothing half-published appears, and serving goes on.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loraAdapterFiles, randomLoraAdapter } from '../src/adapters/lora-writer.ts';
import type { LoraTargetModule } from '../src/model/types.ts';
import { configFromHuggingFace } from '../src/model/config.ts';
import { BASE_MODEL, KEYS } from './support/gateway.ts';
import { STORIES_HF_DIR } from './support/models.ts';
import { spawnGateway, type SpawnedGateway } from './support/spawned-gateway.ts';
import { asJsonl, madeUpWordStories } from './support/fine-tuning.ts';

/** Files the gateway process may write; the small adapter fits, the large one (about 370 KiB) does not. */
const FILE_SIZE_LIMIT = 128 * 1024;

let dir: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'store-faults-'));
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function adapterFiles(rank: number, targetModules: LoraTargetModule[]): Promise<Map<string, Uint8Array>> {
  const base = configFromHuggingFace(JSON.parse(await readFile(join(STORIES_HF_DIR, 'config.json'), 'utf8')));
  return loraAdapterFiles(randomLoraAdapter(base, { rank, targetModules, seed: rank, std: 0.2 }));
}

const SMALL = () => adapterFiles(1, ['q_proj']);
const LARGE = () => adapterFiles(16, ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']);

interface Answer {
  status: number;
  headers: Headers;
  body: { error?: { message: string; type: string; param: string | null; code: string | null } } & Record<string, unknown>;
}

async function call(gateway: SpawnedGateway, method: string, path: string, body?: FormData | object, key: string = KEYS.acme): Promise<Answer> {
  const headers: Record<string, string> = { authorization: `Bearer ${key}` };
  if (body !== undefined && !(body instanceof FormData)) headers['content-type'] = 'application/json';
  const response = await fetch(`${gateway.url}${path}`, {
    method,
    headers,
    body: body === undefined || body instanceof FormData ? body : JSON.stringify(body),
  });
  return { status: response.status, headers: response.headers, body: (await response.json()) as Answer['body'] };
}

function uploadForm(files: Map<string, Uint8Array>): FormData {
  const form = new FormData();
  for (const [name, data] of files) form.append(name, new Blob([new Uint8Array(data)]), name);
  return form;
}

async function greedy(gateway: SpawnedGateway, model: string): Promise<string> {
  const completion = await gateway.client().completions.create({ model, prompt: 'Once upon a time', max_tokens: 6, temperature: 0 });
  return completion.choices[0].text;
}

/** What a client sees of the adapter store, and what lies in its staging and trash directories. */
async function storeState(gateway: SpawnedGateway, adaptersDir: string) {
  const admin = await call(gateway, 'GET', '/admin/adapters', undefined, KEYS.admin);
  const listed = (admin.body.data as { id: string; versions: { version: string }[] }[]).map(
    (adapter) => `${adapter.id}@${adapter.versions.map((v) => v.version).join(',')}`,
  );
  return {
    listed,
    invalid: admin.body.invalid,
    staging: await readdir(join(adaptersDir, '.staging')),
    trash: await readdir(join(adaptersDir, '.trash')),
  };
}

function assertStorageError(answer: Answer, status: number, code: string, path: string): void {
  assert.equal(answer.status, status, JSON.stringify(answer.body));
  assert.deepEqual(Object.keys(answer.body.error!).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(answer.body.error!.type, 'server_error');
  assert.equal(answer.body.error!.code, code);
  assert.match(answer.body.error!.message, /nothing was saved/);
  assert.ok(!answer.body.error!.message.includes(path), 'the message does not expose server paths');
  // Retrying at once cannot succeed, so OpenAI clients are told not to.
  assert.equal(answer.headers.get('x-should-retry'), 'false');
}

test('a full disk during publish: 507 insufficient_storage, nothing half-published, serving continues', async () => {
  const adaptersDir = join(dir, 'full', 'adapters');
  const gateway = await spawnGateway(join(dir, 'full'), adaptersDir, { wrapper: ['prlimit', `--fsize=${FILE_SIZE_LIMIT}`, '--'] });
  try {
    assert.equal((await call(gateway, 'POST', '/v1/adapters/acme/small', uploadForm(await SMALL()))).status, 201);
    const served = await greedy(gateway, `${BASE_MODEL}+acme/small`);
    const before = await storeState(gateway, adaptersDir);

    const refused = await call(gateway, 'POST', '/v1/adapters/acme/large', uploadForm(await LARGE()));
    assertStorageError(refused, 507, 'insufficient_storage', adaptersDir);
    // A new version of an existing adapter is refused the same way and leaves the adapter as it was.
    assertStorageError(await call(gateway, 'POST', '/v1/adapters/acme/small', uploadForm(await LARGE())), 507, 'insufficient_storage', adaptersDir);
    assert.deepEqual(await storeState(gateway, adaptersDir), before);
    assert.equal((await call(gateway, 'GET', '/v1/adapters/acme/large')).status, 404);

    // Fine-tuning datasets are stored the same way and refused the same way.
    const dataset = new FormData();
    dataset.append('purpose', 'fine-tune');
    dataset.append('file', new Blob([asJsonl(madeUpWordStories(1500))]), 'big.jsonl');
    const datasetAnswer = await call(gateway, 'POST', '/v1/files', dataset);
    assertStorageError(datasetAnswer, 507, 'insufficient_storage', dir);
    assert.deepEqual((await call(gateway, 'GET', '/v1/files')).body.data, []);
    assert.deepEqual(await readdir(join(dir, 'full', 'training', '.staging')), []);

    // Serving goes on, with the same output, and publishing what fits still works.
    assert.equal(await greedy(gateway, `${BASE_MODEL}+acme/small`), served);
    assert.equal((await call(gateway, 'POST', '/v1/adapters/acme/small', uploadForm(await SMALL()))).status, 201);
    // The operator learns why, from the log.
    assert.match(gateway.log(), /"level":"error".*EFBIG/);
  } finally {
    await gateway.stop();
  }
});

test('an unwritable store: 503 storage_unavailable for publish, delete and visibility; serving continues', async () => {
  const adaptersDir = join(dir, 'readonly', 'adapters');
  // Root ignores permissions through CAP_DAC_OVERRIDE; without it, they bind root as they bind anyone.
  const wrapper = process.getuid?.() === 0 ? ['setpriv', '--inh-caps=-all', '--bounding-set=-dac_override', '--'] : [];
  const gateway = await spawnGateway(join(dir, 'readonly'), adaptersDir, { wrapper });
  const writable = async (mode: number) => {
    for (const path of [adaptersDir, join(adaptersDir, '.staging'), join(adaptersDir, '.trash'), join(adaptersDir, 'acme'), join(adaptersDir, 'acme', 'small')]) {
      await chmod(path, mode);
    }
  };
  try {
    assert.equal((await call(gateway, 'POST', '/v1/adapters/acme/small', uploadForm(await SMALL()))).status, 201);
    const served = await greedy(gateway, `${BASE_MODEL}+acme/small`);
    const before = await storeState(gateway, adaptersDir);

    await writable(0o555);
    try {
      assertStorageError(await call(gateway, 'POST', '/v1/adapters/acme/small', uploadForm(await SMALL())), 503, 'storage_unavailable', adaptersDir);
      assertStorageError(await call(gateway, 'POST', '/v1/adapters/acme/other', uploadForm(await SMALL())), 503, 'storage_unavailable', adaptersDir);
      assertStorageError(await call(gateway, 'DELETE', '/v1/adapters/acme/small/versions/1'), 503, 'storage_unavailable', adaptersDir);
      assertStorageError(await call(gateway, 'DELETE', '/v1/adapters/acme/small'), 503, 'storage_unavailable', adaptersDir);
      assertStorageError(
        await call(gateway, 'PUT', '/admin/adapters/acme/small/visibility', { public: true }, KEYS.admin),
        503,
        'storage_unavailable',
        adaptersDir,
      );
      assert.equal(await greedy(gateway, `${BASE_MODEL}+acme/small`), served);
    } finally {
      await writable(0o755);
    }
    assert.deepEqual(await storeState(gateway, adaptersDir), before);
    // Once the store is writable again, so is the gateway: no restart needed.
    assert.equal((await call(gateway, 'POST', '/v1/adapters/acme/small', uploadForm(await SMALL()))).status, 201);
    assert.equal((await call(gateway, 'DELETE', '/v1/adapters/acme/small/versions/1')).status, 200);
    assert.match(gateway.log(), /"level":"error".*EACCES/);
  } finally {
    await gateway.stop();
  }
});

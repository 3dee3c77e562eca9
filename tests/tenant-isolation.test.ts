/**
 * Who may do what to whose things, as a table: every caller × every tenant's object × every route. Objects are
 * adapters, fine-tuning files and fine-tuning jobs (with their events, checkpoints and cancel). A tenant's own
 * object is usable and manageable; another tenant's private object answers exactly as a nonexistent one does
 * (nothing about its existence leaks); writes into another tenant's adapter namespace are refused with 403; admin
 * routes (adapter administration, the dashboard and its data) need an admin key; no key is 401. Admin keys see
 * everything.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { APIError } from 'openai';
import { loraAdapterFiles, randomLoraAdapter } from '../src/adapters/lora-writer.ts';
import { newId } from '../src/training/jobs/training-dir.ts';
import { asJsonl, madeUpWordStories } from './support/fine-tuning.ts';
import { BASE_MODEL, KEYS, startTestGateway, type TestGateway } from './support/gateway.ts';

let gateway: TestGateway;
/** Each tenant's adapter files, to publish (and republish after a delete) through the store. */
const adapterFiles = new Map<string, Map<string, Uint8Array>>();
/** Each tenant's fine-tuning file and job ids. */
const fileIds = new Map<string, string>();
const jobIds = new Map<string, string>();
/** Ids of the right shape that nothing has: what another tenant's file or job must look like. */
const MISSING_FILE = newId('file');
const MISSING_JOB = newId('ftjob');

interface Target {
  tenant: 'acme' | 'globex';
  adapter: string;
}
type Caller = 'acme' | 'globex' | 'admin' | 'anonymous';

const OWNED: Target[] = [
  { tenant: 'acme', adapter: 'acme-tuned' },
  { tenant: 'globex', adapter: 'globex-tuned' },
];
const CALLERS: Caller[] = ['acme', 'globex', 'admin', 'anonymous'];
/** An adapter nobody published, in the same namespace: what an invisible adapter must look like. */
const nonexistent = (target: Target): Target => ({ tenant: target.tenant, adapter: 'never-published' });

interface Answer {
  status: number;
  body: unknown;
}

/**
 * - `read`: inference and inspection; another tenant's adapter answers like a nonexistent one (404).
 * - `write`: changes the namespace; another tenant's is refused with 403, whether or not the adapter exists.
 * - `listing`: always 200; the adapter is listed exactly when the caller may use it.
 * - `admin`: admin keys only; tenants get 403.
 */
type Access = 'read' | 'write' | 'listing' | 'admin';

interface Route {
  name: string;
  access: Access;
  allowedStatus: number;
  call(key: string | undefined, target: Target): Promise<Answer>;
  /** For listings: whether the answer lists the target. */
  lists?(body: unknown, target: Target): boolean;
  /** The target's name as answers quote it (default `<tenant>/<adapter>`), blanked to compare answers. */
  quotes?(target: Target): string;
}

/** The target tenant's fine-tuning file, or one that does not exist for the control target. */
const fileOf = (target: Target) => (target.adapter === 'never-published' ? MISSING_FILE : fileIds.get(target.tenant)!);
const jobOf = (target: Target) => (target.adapter === 'never-published' ? MISSING_JOB : jobIds.get(target.tenant)!);

const modelOf = (target: Target, version = '') => `${BASE_MODEL}+${target.tenant}/${target.adapter}${version}`;

/** `as: 'text'` for routes that answer something other than JSON when they succeed; errors are JSON either way. */
async function http(method: string, path: string, key: string | undefined, body?: BodyInit, json?: unknown, as: 'json' | 'text' = 'json'): Promise<Answer> {
  const headers: Record<string, string> = {};
  if (key !== undefined) headers.authorization = `Bearer ${key}`;
  if (json !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(`${gateway.url}${path}`, { method, headers, body: json === undefined ? body : JSON.stringify(json) });
  const text = await response.text();
  assert.ok(!text.includes(gateway.adaptersDir), `${method} ${path} exposes the store's path`);
  assert.ok(!text.includes(gateway.trainingDir), `${method} ${path} exposes the training directory`);
  return { status: response.status, body: as === 'text' && response.ok ? text : JSON.parse(text) };
}

/** Inference goes through the official client, as a tenant's application would call it. */
async function viaClient(key: string | undefined, request: (client: ReturnType<TestGateway['client']>) => Promise<unknown>): Promise<Answer> {
  // The client insists on a key; a null header makes it send none.
  const client = key === undefined ? gateway.client('none', { defaultHeaders: { authorization: null } }) : gateway.client(key);
  try {
    return { status: 200, body: await request(client) };
  } catch (err) {
    if (!(err instanceof APIError)) throw err;
    // The client unwraps the body's `error`; wrapped again it reads like the other routes' bodies.
    return { status: err.status ?? 0, body: { error: err.error } };
  }
}

function uploadForm(target: Target): FormData {
  const form = new FormData();
  for (const [name, data] of adapterFiles.get(target.tenant)!) form.append(name, new Blob([new Uint8Array(data)]), name);
  return form;
}

const ROUTES: Route[] = [
  {
    name: 'chat completion',
    access: 'read',
    allowedStatus: 200,
    call: (key, target) =>
      viaClient(key, (client) =>
        client.chat.completions.create({ model: modelOf(target), messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2 }),
      ),
  },
  {
    name: 'completion',
    access: 'read',
    allowedStatus: 200,
    call: (key, target) => viaClient(key, (client) => client.completions.create({ model: modelOf(target), prompt: 'Once', max_tokens: 2 })),
  },
  {
    name: 'completion on a pinned version',
    access: 'read',
    allowedStatus: 200,
    call: (key, target) => viaClient(key, (client) => client.completions.create({ model: modelOf(target, '@1'), prompt: 'Once', max_tokens: 2 })),
  },
  {
    name: 'GET /v1/models',
    access: 'listing',
    allowedStatus: 200,
    call: (key) => http('GET', '/v1/models', key),
    lists: (body, target) => (body as { data: { id: string }[] }).data.some((model) => model.id === modelOf(target)),
  },
  {
    name: 'GET /v1/models/{id}',
    access: 'read',
    allowedStatus: 200,
    call: (key, target) => http('GET', `/v1/models/${modelOf(target)}`, key),
  },
  {
    name: 'GET /v1/adapters',
    access: 'listing',
    allowedStatus: 200,
    call: (key) => http('GET', '/v1/adapters', key),
    lists: (body, target) => (body as { data: { id: string }[] }).data.some((a) => a.id === `${target.tenant}/${target.adapter}`),
  },
  {
    name: 'GET /v1/adapters/{tenant}/{adapter}',
    access: 'read',
    allowedStatus: 200,
    call: (key, target) => http('GET', `/v1/adapters/${target.tenant}/${target.adapter}`, key),
  },
  {
    name: 'POST /v1/adapters/{tenant}/{adapter}',
    access: 'write',
    allowedStatus: 201,
    call: (key, target) => http('POST', `/v1/adapters/${target.tenant}/${target.adapter}`, key, uploadForm(target)),
  },
  {
    name: 'DELETE /v1/adapters/{tenant}/{adapter}/versions/{version}',
    access: 'write',
    allowedStatus: 200,
    call: (key, target) => http('DELETE', `/v1/adapters/${target.tenant}/${target.adapter}/versions/1`, key),
  },
  {
    name: 'DELETE /v1/adapters/{tenant}/{adapter}',
    access: 'write',
    allowedStatus: 200,
    call: (key, target) => http('DELETE', `/v1/adapters/${target.tenant}/${target.adapter}`, key),
  },
  {
    name: 'PUT /admin/adapters/{tenant}/{adapter}/visibility',
    access: 'admin',
    allowedStatus: 200,
    call: (key, target) => http('PUT', `/admin/adapters/${target.tenant}/${target.adapter}/visibility`, key, undefined, { public: false }),
  },
  {
    name: 'GET /admin/adapters',
    access: 'admin',
    allowedStatus: 200,
    call: (key) => http('GET', '/admin/adapters', key),
  },
  {
    name: 'GET /v1/files',
    access: 'listing',
    allowedStatus: 200,
    call: (key) => http('GET', '/v1/files', key),
    lists: (body, target) => (body as { data: { id: string }[] }).data.some((file) => file.id === fileOf(target)),
  },
  { name: 'GET /v1/files/{id}', access: 'read', allowedStatus: 200, call: (key, target) => http('GET', `/v1/files/${fileOf(target)}`, key), quotes: fileOf },
  {
    name: 'GET /v1/files/{id}/content',
    access: 'read',
    allowedStatus: 200,
    call: (key, target) => http('GET', `/v1/files/${fileOf(target)}/content`, key, undefined, undefined, 'text'),
    quotes: fileOf,
  },
  { name: 'DELETE /v1/files/{id}', access: 'read', allowedStatus: 200, call: (key, target) => http('DELETE', `/v1/files/${fileOf(target)}`, key), quotes: fileOf },
  {
    name: 'GET /v1/fine_tuning/jobs',
    access: 'listing',
    allowedStatus: 200,
    call: (key) => http('GET', '/v1/fine_tuning/jobs', key),
    lists: (body, target) => (body as { data: { id: string }[] }).data.some((job) => job.id === jobOf(target)),
  },
  {
    name: 'GET /v1/fine_tuning/jobs/{id}',
    access: 'read',
    allowedStatus: 200,
    call: (key, target) => http('GET', `/v1/fine_tuning/jobs/${jobOf(target)}`, key),
    quotes: jobOf,
  },
  {
    name: 'GET /v1/fine_tuning/jobs/{id}/events',
    access: 'read',
    allowedStatus: 200,
    call: (key, target) => http('GET', `/v1/fine_tuning/jobs/${jobOf(target)}/events`, key),
    quotes: jobOf,
  },
  {
    name: 'GET /v1/fine_tuning/jobs/{id}/checkpoints',
    access: 'read',
    allowedStatus: 200,
    call: (key, target) => http('GET', `/v1/fine_tuning/jobs/${jobOf(target)}/checkpoints`, key),
    quotes: jobOf,
  },
  {
    name: 'POST /v1/fine_tuning/jobs/{id}/cancel',
    access: 'read',
    allowedStatus: 200,
    call: (key, target) => http('POST', `/v1/fine_tuning/jobs/${jobOf(target)}/cancel`, key),
    quotes: jobOf,
  },
  { name: 'GET /dashboard', access: 'admin', allowedStatus: 200, call: (key) => http('GET', '/dashboard', key, undefined, undefined, 'text') },
  { name: 'GET /dashboard/data', access: 'admin', allowedStatus: 200, call: (key) => http('GET', '/dashboard/data', key) },
];

type Expectation = 'allowed' | 'hidden' | 'forbidden' | 'unauthenticated';

function expectation(caller: Caller, route: Route, target: Target): Expectation {
  if (caller === 'anonymous') return 'unauthenticated';
  if (caller === 'admin') return 'allowed';
  if (route.access === 'admin') return 'forbidden';
  if (caller === target.tenant) return 'allowed';
  return route.access === 'write' ? 'forbidden' : 'hidden';
}

/** The same answer with the object's name blanked out, so an answer about X can be compared with one about Y. */
function withoutName(answer: Answer, target: Target, route: Route): Answer {
  const name = route.quotes?.(target) ?? `${target.tenant}/${target.adapter}`;
  const text = JSON.stringify(answer.body).replaceAll(name, '<name>');
  return { status: answer.status, body: JSON.parse(text) };
}

/**
 * Every cell starts from the same state: both adapters present as version 1, private; each tenant has its
 * fine-tuning file (uploaded again after a delete) and its job, which no trainer runs, so it never finishes.
 */
async function resetObjects(): Promise<void> {
  const { store, training } = gateway.services;
  for (const target of OWNED) {
    if (store.list(target.tenant).some((record) => record.adapter === target.adapter)) {
      await store.remove(target.tenant, target.adapter);
    }
    await store.publish(target.tenant, target.adapter, adapterFiles.get(target.tenant)!, { version: '1' });
    const fileId = fileIds.get(target.tenant);
    if (fileId === undefined || !(await training.files.get(target.tenant, fileId))) {
      fileIds.set(target.tenant, (await training.files.create(target.tenant, 'train.jsonl', Buffer.from(asJsonl(madeUpWordStories(10))))).id);
    }
  }
}

before(async () => {
  gateway = await startTestGateway();
  const base = gateway.services.engine.info.config;
  for (const [index, { tenant }] of OWNED.entries()) {
    adapterFiles.set(tenant, loraAdapterFiles(randomLoraAdapter(base, { rank: 4, targetModules: ['q_proj', 'v_proj'], seed: index + 1, std: 0.2 })));
  }
  await resetObjects();
  for (const { tenant } of OWNED) {
    const created = await http('POST', '/v1/fine_tuning/jobs', KEYS[tenant], undefined, { model: BASE_MODEL, training_file: fileIds.get(tenant) });
    assert.equal(created.status, 200, JSON.stringify(created.body));
    jobIds.set(tenant, (created.body as { id: string }).id);
  }
});

after(async () => {
  await gateway.stop();
});

for (const route of ROUTES) {
  test(`isolation matrix: ${route.name}`, async () => {
    for (const caller of CALLERS) {
      const key = caller === 'anonymous' ? undefined : KEYS[caller];
      for (const target of OWNED) {
        await resetObjects();
        const cell = `${caller} → ${route.name} on ${target.tenant}/${target.adapter}`;
        const expected = expectation(caller, route, target);
        const answer = await route.call(key, target);

        if (expected === 'unauthenticated') {
          assert.equal(answer.status, 401, cell);
          assert.equal((answer.body as { error: { code: string } }).error.code, 'invalid_api_key', cell);
          continue;
        }
        if (route.access === 'listing') {
          assert.equal(answer.status, route.allowedStatus, cell);
          assert.equal(route.lists!(answer.body, target), expected === 'allowed', cell);
          continue;
        }
        if (expected === 'allowed') {
          assert.equal(answer.status, route.allowedStatus, `${cell}: ${JSON.stringify(answer.body)}`);
          continue;
        }
        assert.equal(answer.status, expected === 'hidden' ? 404 : 403, `${cell}: ${JSON.stringify(answer.body)}`);
        if (route.access === 'admin') continue;
        // Indistinguishable from an adapter that was never published in that namespace.
        const absent = nonexistent(target);
        const control = await route.call(key, absent);
        assert.deepEqual(withoutName(answer, target, route), withoutName(control, absent, route), cell);
      }
    }
  });
}

test("a refused write leaves the other tenant's adapter untouched", async () => {
  await resetObjects();
  const { store } = gateway.services;
  const before = store.list('globex');
  for (const route of ROUTES.filter((r) => r.access === 'write')) {
    assert.equal((await route.call(KEYS.acme, OWNED[1])).status, 403, route.name);
  }
  assert.deepEqual(store.list('globex'), before);
  const completion = ROUTES.find((r) => r.name === 'completion')!;
  assert.equal((await completion.call(KEYS.globex, OWNED[1])).status, 200);
});

test("another tenant's file cannot train a job: refused exactly as a file that does not exist", async () => {
  await resetObjects();
  const create = (trainingFile: string) =>
    http('POST', '/v1/fine_tuning/jobs', KEYS.acme, undefined, { model: BASE_MODEL, training_file: trainingFile, validation_file: null });
  const foreign = await create(fileIds.get('globex')!);
  const missing = await create(MISSING_FILE);
  assert.equal(foreign.status, 400);
  assert.equal((foreign.body as { error: { code: string } }).error.code, 'invalid_training_file');
  assert.deepEqual(
    JSON.parse(JSON.stringify(foreign.body).replaceAll(fileIds.get('globex')!, '<id>')),
    JSON.parse(JSON.stringify(missing.body).replaceAll(MISSING_FILE, '<id>')),
  );
});

test('admin keys own nothing: uploading files and creating jobs need a tenant key', async () => {
  await resetObjects();
  const form = new FormData();
  form.append('purpose', 'fine-tune');
  form.append('file', new Blob([asJsonl(madeUpWordStories(10))]), 'train.jsonl');
  const upload = await http('POST', '/v1/files', KEYS.admin, form);
  assert.equal(upload.status, 403);
  assert.equal((upload.body as { error: { code: string } }).error.code, 'permission_denied');
  const job = await http('POST', '/v1/fine_tuning/jobs', KEYS.admin, undefined, { model: BASE_MODEL, training_file: fileIds.get('acme') });
  assert.equal(job.status, 403);
  for (const path of ['/v1/files', '/v1/fine_tuning/jobs']) assert.equal((await http('POST', path, undefined, form)).status, 401);
});

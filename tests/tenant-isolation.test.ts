/**
 * Who may do what to whose adapter, as a table: every caller × every adapter × every route. A tenant's own adapter
 * is usable and manageable; another tenant's private adapter answers reads exactly as a nonexistent one does
 * (nothing about its existence leaks) and refuses writes with 403; admin routes need an admin key; no key is 401.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { APIError } from 'openai';
import { loraAdapterFiles, randomLoraAdapter } from '../src/adapters/lora-writer.ts';
import { BASE_MODEL, KEYS, startTestGateway, type TestGateway } from './support/gateway.ts';

let gateway: TestGateway;
/** Each tenant's adapter files, to publish (and republish after a delete) through the store. */
const adapterFiles = new Map<string, Map<string, Uint8Array>>();

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
}

const modelOf = (target: Target, version = '') => `${BASE_MODEL}+${target.tenant}/${target.adapter}${version}`;

async function http(method: string, path: string, key: string | undefined, body?: BodyInit, json?: unknown): Promise<Answer> {
  const headers: Record<string, string> = {};
  if (key !== undefined) headers.authorization = `Bearer ${key}`;
  if (json !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(`${gateway.url}${path}`, { method, headers, body: json === undefined ? body : JSON.stringify(json) });
  const text = await response.text();
  assert.ok(!text.includes(gateway.adaptersDir), `${method} ${path} exposes the store's path`);
  return { status: response.status, body: JSON.parse(text) };
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
];

type Expectation = 'allowed' | 'hidden' | 'forbidden' | 'unauthenticated';

function expectation(caller: Caller, route: Route, target: Target): Expectation {
  if (caller === 'anonymous') return 'unauthenticated';
  if (caller === 'admin') return 'allowed';
  if (route.access === 'admin') return 'forbidden';
  if (caller === target.tenant) return 'allowed';
  return route.access === 'write' ? 'forbidden' : 'hidden';
}

/** The same answer with the adapter's name blanked out, so an answer about X can be compared with one about Y. */
function withoutName(answer: Answer, target: Target): Answer {
  const text = JSON.stringify(answer.body).replaceAll(`${target.tenant}/${target.adapter}`, '<adapter>');
  return { status: answer.status, body: JSON.parse(text) };
}

/** Every cell starts from the same state: both adapters present as version 1, private. */
async function resetAdapters(): Promise<void> {
  const { store } = gateway.services;
  for (const target of OWNED) {
    if (store.list(target.tenant).some((record) => record.adapter === target.adapter)) {
      await store.remove(target.tenant, target.adapter);
    }
    await store.publish(target.tenant, target.adapter, adapterFiles.get(target.tenant)!, { version: '1' });
  }
}

before(async () => {
  gateway = await startTestGateway();
  const base = gateway.services.engine.info.config;
  for (const [index, { tenant }] of OWNED.entries()) {
    adapterFiles.set(tenant, loraAdapterFiles(randomLoraAdapter(base, { rank: 4, targetModules: ['q_proj', 'v_proj'], seed: index + 1, std: 0.2 })));
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
        await resetAdapters();
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
        assert.deepEqual(withoutName(answer, target), withoutName(control, absent), cell);
      }
    }
  });
}

test("a refused write leaves the other tenant's adapter untouched", async () => {
  await resetAdapters();
  const { store } = gateway.services;
  const before = store.list('globex');
  for (const route of ROUTES.filter((r) => r.access === 'write')) {
    assert.equal((await route.call(KEYS.acme, OWNED[1])).status, 403, route.name);
  }
  assert.deepEqual(store.list('globex'), before);
  const completion = ROUTES.find((r) => r.name === 'completion')!;
  assert.equal((await completion.call(KEYS.globex, OWNED[1])).status, 200);
});

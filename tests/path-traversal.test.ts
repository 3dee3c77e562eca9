/**
 * Path traversal through every name a client can send: tenant, adapter and version names in paths and bodies,
 * multipart field and file names, model ids, file ids, fine-tuning job ids and suffixes, and tenant names in the
 * tenants file. Each hostile name is sent raw (no URL normalisation by the client) and percent-encoded, and must
 * get a 400 or 404 in OpenAI's error shape, with nothing created anywhere outside the stores.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { loraAdapterFiles, randomLoraAdapter } from '../src/adapters/lora-writer.ts';
import { ConfigError, loadGatewaySettings } from '../src/gateway/config.ts';
import { asJsonl, madeUpWordStories } from './support/fine-tuning.ts';
import { BASE_MODEL, KEYS, startTestGateway, type TestGateway } from './support/gateway.ts';
import { layoutPrepared } from './support/layouts.ts';
import { REPO_ROOT } from './support/models.ts';

/** Every hostile name carries this, so anything it created would be found by name. */
const MARK = `evil${process.pid}`;

/** Names as the server must see them after decoding; sent percent-encoded. */
const HOSTILE_NAMES: [string, string][] = [
  ['parent', '..'],
  ['current', '.'],
  ['parent then name', `../${MARK}`],
  ['deep parent', `../../../../../tmp/${MARK}`],
  ['absolute', `/tmp/${MARK}`],
  ['backslash', `..\\${MARK}`],
  ['absolute Windows', `C:\\${MARK}`],
  ['NUL', `${MARK}\0`],
  ['NUL then parent', `ok\0/../${MARK}`],
  ['newline', `${MARK}\n`],
  ['hidden', `.${MARK}`],
  ['space', `${MARK} x`],
  ['one dot leader look-alike', '\u2024\u2024'],
  ['fullwidth dots', '\uff0e\uff0e'],
  ['division slash', `..\u2215${MARK}`],
  ['fraction slash', `..\u2044${MARK}`],
  ['fullwidth solidus', `..\uff0f${MARK}`],
  ['percent-encoded twice', `%2e%2e%2f${MARK}`],
  ['malformed percent escape', `${MARK}%zz`],
  ['overlong', `${MARK}${'a'.repeat(300)}`],
  ['very long', `${MARK}${'a'.repeat(3000)}`],
];

/** Path segments sent exactly as written: the router sees the encoded slashes and dots themselves. */
const RAW_SEGMENTS: [string, string][] = [
  ['raw parent', '..'],
  ['raw current', '.'],
  ['encoded slash', `..%2F${MARK}`],
  ['encoded dots', '%2e%2e'],
  ['encoded dots and slash', `%2E%2E%2F${MARK}`],
  ['encoded backslash', `..%5C${MARK}`],
  ['encoded NUL', `${MARK}%00`],
  ['half-encoded parent', `.%2e`],
  ['double-encoded parent', `%252e%252e%252f${MARK}`],
];

const SEGMENTS: [string, string][] = [...HOSTILE_NAMES.map(([label, name]): [string, string] => [label, encodeURIComponent(name)]), ...RAW_SEGMENTS];

let gateway: TestGateway;
let root: string;
let before_: string[];

interface Answer {
  status: number;
  body: string;
}

/** HTTP over a raw socket path: fetch and URL would resolve `..` and `%2e%2e` before sending. */
function send(method: string, path: string, key: string, body?: { type: string; data: Buffer }): Promise<Answer> {
  const { hostname, port } = new URL(gateway.url);
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = { authorization: `Bearer ${key}` };
    if (body) Object.assign(headers, { 'content-type': body.type, 'content-length': body.data.byteLength });
    const req = request({ host: hostname, port, method, path, headers }, (response) => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk) => (text += chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body: text }));
    });
    req.on('error', reject);
    req.end(body?.data);
  });
}

const json = (value: unknown) => ({ type: 'application/json', data: Buffer.from(JSON.stringify(value)) });

async function multipart(form: FormData): Promise<{ type: string; data: Buffer }> {
  const encoded = new Request('http://localhost/', { method: 'POST', body: form });
  return { type: encoded.headers.get('content-type')!, data: Buffer.from(await encoded.arrayBuffer()) };
}

function adapterForm(names: Map<string, string> = new Map(), version?: string): FormData {
  const config = gateway.services.engine.info.config;
  const form = new FormData();
  for (const [name, data] of loraAdapterFiles(randomLoraAdapter(config, { rank: 2, targetModules: ['q_proj'], seed: 3 }))) {
    const field = names.get(name) ?? name;
    form.append(field, new Blob([new Uint8Array(data)]), field === 'file' ? names.get(`${name}#file`) ?? name : name);
  }
  if (version !== undefined) form.append('version', version);
  return form;
}

function assertRefused(answer: Answer, what: string): void {
  assert.ok(answer.status === 400 || answer.status === 404, `${what}: status ${answer.status} ${answer.body}`);
  const body = JSON.parse(answer.body) as { error: Record<string, unknown> };
  assert.deepEqual(Object.keys(body).sort(), ['error'], what);
  assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type'], what);
  assert.equal(body.error.type, 'invalid_request_error', what);
  assert.ok(!answer.body.includes(root), `${what}: the answer exposes a server path`);
}

/** Every file and directory under `dir`, relative to it. */
async function tree(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true });
  return entries.map((entry) => relative(dir, join(dir, entry))).sort();
}

/** Nothing named after the mark exists where a traversal out of the stores could have put it. */
async function assertNothingMarked(): Promise<void> {
  for (const dir of [root, dirname(root), tmpdir(), '/tmp', REPO_ROOT, dirname(REPO_ROOT), '/']) {
    const names = await readdir(dir).catch(() => [] as string[]);
    assert.deepEqual(names.filter((name) => name.toLowerCase().includes(MARK)), [], `in ${dir}`);
  }
  assert.deepEqual((await tree(root)).filter((path) => path.toLowerCase().includes(MARK)), []);
}

before(async () => {
  gateway = await startTestGateway();
  root = dirname(gateway.adaptersDir);
  const published = await send('POST', '/v1/adapters/acme/story', KEYS.acme, await multipart(adapterForm()));
  assert.equal(published.status, 201, published.body);
  await layoutPrepared(gateway, 'acme', 'story');
  before_ = await tree(root);
});

after(async () => {
  await gateway.stop();
});

/** Routes that take a name in their path: `{}` is where the hostile segment goes. */
const PATH_ROUTES: { method: string; path: string; key?: string; body?: () => Promise<{ type: string; data: Buffer }> }[] = [
  { method: 'GET', path: '/v1/adapters/{}/story' },
  { method: 'GET', path: '/v1/adapters/acme/{}' },
  { method: 'POST', path: '/v1/adapters/{}/story', body: () => multipart(adapterForm()) },
  { method: 'POST', path: '/v1/adapters/acme/{}', body: () => multipart(adapterForm()) },
  { method: 'DELETE', path: '/v1/adapters/{}/story' },
  { method: 'DELETE', path: '/v1/adapters/acme/{}' },
  { method: 'DELETE', path: '/v1/adapters/acme/story/versions/{}' },
  { method: 'DELETE', path: '/v1/adapters/{}/story/versions/1' },
  { method: 'PUT', path: '/admin/adapters/{}/story/visibility', key: KEYS.admin, body: async () => json({ public: true }) },
  { method: 'PUT', path: '/admin/adapters/acme/{}/visibility', key: KEYS.admin, body: async () => json({ public: true }) },
  { method: 'GET', path: `/v1/models/${BASE_MODEL}+acme/{}` },
  { method: 'GET', path: `/v1/models/${BASE_MODEL}+{}/story` },
  { method: 'GET', path: `/v1/models/${BASE_MODEL}+acme/story@{}` },
  { method: 'GET', path: '/v1/models/{}' },
  { method: 'GET', path: '/v1/files/{}' },
  { method: 'GET', path: '/v1/files/{}/content' },
  { method: 'DELETE', path: '/v1/files/{}' },
  { method: 'GET', path: '/v1/files/{}', key: KEYS.admin },
  { method: 'GET', path: '/v1/fine_tuning/jobs/{}' },
  { method: 'GET', path: '/v1/fine_tuning/jobs/{}', key: KEYS.admin },
  { method: 'POST', path: '/v1/fine_tuning/jobs/{}/cancel' },
  { method: 'GET', path: '/v1/fine_tuning/jobs/{}/events' },
  { method: 'GET', path: '/v1/fine_tuning/jobs/{}/checkpoints' },
];

for (const route of PATH_ROUTES) {
  test(`path traversal: ${route.method} ${route.path}`, async () => {
    for (const [label, segment] of SEGMENTS) {
      const path = route.path.replace('{}', segment);
      assertRefused(await send(route.method, path, route.key ?? KEYS.acme, await route.body?.()), `${label}: ${route.method} ${path}`);
    }
    assert.deepEqual(await tree(root), before_);
    await assertNothingMarked();
  });
}

test('path traversal: names in request bodies (model ids, upload version, multipart names, job fields)', async () => {
  const file = new FormData();
  file.append('purpose', 'fine-tune');
  file.append('file', new Blob([asJsonl(madeUpWordStories(10))]), 'train.jsonl');
  const uploaded = await send('POST', '/v1/files', KEYS.acme, await multipart(file));
  assert.equal(uploaded.status, 200, uploaded.body);
  const fileId = (JSON.parse(uploaded.body) as { id: string }).id;
  const afterUpload = await tree(root);

  for (const [label, name] of HOSTILE_NAMES) {
    for (const model of [`${BASE_MODEL}+acme/${name}`, `${BASE_MODEL}+${name}/story`, `${BASE_MODEL}+acme/story@${name}`, name]) {
      for (const route of ['/v1/completions', '/v1/chat/completions']) {
        const body = route === '/v1/completions' ? { model, prompt: 'Once', max_tokens: 1 } : { model, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 1 };
        assertRefused(await send('POST', route, KEYS.acme, json(body)), `${label}: ${route} model ${JSON.stringify(model)}`);
      }
    }
    assertRefused(await send('POST', '/v1/adapters/acme/story', KEYS.acme, await multipart(adapterForm(new Map(), name))), `${label}: upload version`);
    assertRefused(
      await send('POST', '/v1/adapters/acme/story', KEYS.acme, await multipart(adapterForm(new Map([['adapter_config.json', name]])))),
      `${label}: multipart field name`,
    );
    assertRefused(
      await send(
        'POST',
        '/v1/adapters/acme/story',
        KEYS.acme,
        await multipart(adapterForm(new Map([['adapter_config.json', 'file'], ['adapter_config.json#file', name]]))),
      ),
      `${label}: multipart file name`,
    );
    const job = { model: BASE_MODEL, training_file: fileId };
    assertRefused(await send('POST', '/v1/fine_tuning/jobs', KEYS.acme, json({ ...job, suffix: name })), `${label}: job suffix`);
    assertRefused(await send('POST', '/v1/fine_tuning/jobs', KEYS.acme, json({ ...job, training_file: name })), `${label}: training_file`);
    assertRefused(await send('POST', '/v1/fine_tuning/jobs', KEYS.acme, json({ ...job, validation_file: name })), `${label}: validation_file`);
  }
  assert.deepEqual(await tree(root), afterUpload);

  // A dataset's file name is only a label: it is kept as a base name and never becomes a path.
  for (const [label, name] of HOSTILE_NAMES.filter(([, name]) => name.length < 1000)) {
    const form = new FormData();
    form.append('purpose', 'fine-tune');
    form.append('file', new Blob([asJsonl(madeUpWordStories(10))]), name);
    const answer = await send('POST', '/v1/files', KEYS.acme, await multipart(form));
    assert.equal(answer.status, 200, `${label}: ${answer.body}`);
    const stored = JSON.parse(answer.body) as { id: string; filename: string };
    assert.doesNotMatch(stored.filename, /[/\\]/, label);
    assert.ok(existsSync(join(gateway.trainingDir, 'acme', 'files', stored.id)), label);
  }
  await assertNothingMarked();
});

test('path traversal: tenant names in the tenants file are refused at start', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tenant-names-'));
  try {
    for (const [label, name] of HOSTILE_NAMES) {
      const file = join(dir, 'gateway.json');
      await writeFile(file, JSON.stringify({ tenants: { [name]: { keys: [{ key: 'sk-some-tenant' }] } } }));
      await assert.rejects(loadGatewaySettings({ GATEWAY_CONFIG: file }), (error: Error) => {
        assert.ok(error instanceof ConfigError, label);
        assert.match(error.message, /tenants\..* is refused: tenant name .* is not allowed/s, label);
        return true;
      });
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

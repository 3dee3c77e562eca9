import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, rename, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { formatAdapterId, parseAdapterId } from '../src/registry/adapter-names.ts';
import { stopAfterTest, tempStoreRoot } from './support/store-dirs.ts';
import {
  AdapterStore,
  StoreError,
  type AdapterRecord,
  type AdapterStoreOptions,
  type AdapterVersionRef,
  type InvalidAdapterVersion,
  type Manifest,
} from '../src/registry/adapter-store.ts';

interface TestSummary {
  rank: number;
  weightBytes: number;
}

/** Stands in for the LoRA validator: the config must parse and the weights must not be empty. */
async function checkAdapterDir(dir: string): Promise<TestSummary> {
  const config = JSON.parse(await readFile(join(dir, 'adapter_config.json'), 'utf8')) as { r: number };
  const weights = await stat(join(dir, 'adapter_model.safetensors'));
  if (weights.size === 0) throw new Error('adapter_model.safetensors is empty');
  return { rank: config.r, weightBytes: weights.size };
}

function adapterFiles(rank = 8, weights = 'weights-v1'): Map<string, Uint8Array> {
  return new Map([
    ['adapter_config.json', Buffer.from(JSON.stringify({ peft_type: 'LORA', r: rank }))],
    ['adapter_model.safetensors', Buffer.from(weights)],
  ]);
}

function tempRoot(t: TestContext): Promise<string> {
  return tempStoreRoot(t, 'adapter-store-');
}

function openStore(
  t: TestContext,
  root: string,
  options: Partial<AdapterStoreOptions<TestSummary>> = {},
): AdapterStore<TestSummary> {
  const store = new AdapterStore<TestSummary>({ root, validate: checkAdapterDir, ...options });
  stopAfterTest(t, store);
  return store;
}

function recordEvents(store: AdapterStore<TestSummary>) {
  const events: string[] = [];
  store.on('added', (r: AdapterRecord<TestSummary>) => events.push(`added ${r.id}`));
  store.on('removed', (r: AdapterVersionRef) => events.push(`removed ${r.id}`));
  store.on('invalid', (r: InvalidAdapterVersion) => events.push(`invalid ${r.id}`));
  return events;
}

/** What a sidecar does: a complete directory with its manifest, written elsewhere on the same filesystem. */
async function writeVersionDir(dir: string, version: string, files: Map<string, Uint8Array>, publishedAt: string) {
  await mkdir(dir, { recursive: true });
  const manifest: Manifest = { version, publishedAt, files: {} };
  for (const [name, data] of files) {
    await writeFile(join(dir, name), data);
    manifest.files[name] = { size: data.byteLength, sha256: createHash('sha256').update(data).digest('hex') };
  }
  await writeFile(join(dir, 'manifest.json'), JSON.stringify(manifest));
}

function hasCode(code: string) {
  return (err: unknown) => err instanceof StoreError && err.code === code;
}

test('adapter ids parse, format and refuse names that could leave the adapter directory', () => {
  assert.deepEqual(parseAdapterId('acme/support-bot'), { tenant: 'acme', adapter: 'support-bot' });
  assert.deepEqual(parseAdapterId('acme/support_bot@v1.2-rc'), {
    tenant: 'acme',
    adapter: 'support_bot',
    version: 'v1.2-rc',
  });
  assert.equal(formatAdapterId({ tenant: 'acme', adapter: 'bot', version: '3' }), 'acme/bot@3');
  assert.equal(formatAdapterId(parseAdapterId('acme/bot')), 'acme/bot');
  const refused = [
    '../etc/passwd',
    'a/../b',
    'acme/../b',
    '.hidden/bot',
    'acme/.hidden',
    'Acme/bot',
    'acme/Bot',
    '/bot',
    'acme/',
    'acme',
    'acme/bot@',
    'acme/bot@..',
    'acme/bot@.',
    'acme/bot@.x',
    'acme/bot@a/b',
    'acme/bot@1@2',
    'acme/bot@visibility.json',
    `acme/${'a'.repeat(65)}`,
    `acme/bot@${'1'.repeat(65)}`,
  ];
  for (const id of refused) assert.throws(() => parseAdapterId(id), hasCode('invalid_name'), id);
  assert.doesNotThrow(() => parseAdapterId(`acme/${'a'.repeat(64)}@${'1'.repeat(64)}`));
});

test('invalid names are refused before the store touches the filesystem', async (t) => {
  const root = await tempRoot(t);
  let validated = 0;
  const store = openStore(t, root, { validate: async () => ({ rank: 0, weightBytes: validated++ }) });
  const attempts: Array<[string, string, string | undefined]> = [
    ['../etc', 'bot', undefined],
    ['acme', '..', undefined],
    ['acme', 'a/../b', undefined],
    ['.hidden', 'bot', undefined],
    ['ACME', 'bot', undefined],
    ['', 'bot', undefined],
    ['acme', 'b'.repeat(65), undefined],
    ['acme', 'bot', '..'],
    ['acme', 'bot', '../../x'],
    ['acme', 'bot', ''],
  ];
  for (const [tenant, adapter, version] of attempts) {
    const what = `${tenant}/${adapter}@${version}`;
    await assert.rejects(store.publish(tenant, adapter, adapterFiles(), { version }), hasCode('invalid_name'), what);
    await assert.rejects(store.remove(tenant, adapter, version), hasCode('invalid_name'), what);
    assert.throws(() => store.resolve(tenant, adapter, version), hasCode('invalid_name'), what);
  }
  await assert.rejects(store.setPublic('../etc', 'bot', true), hasCode('invalid_name'));
  assert.throws(() => store.list('../etc'), hasCode('invalid_name'));
  assert.equal(existsSync(root), false, 'ADAPTERS_DIR must not even be created');
  assert.equal(validated, 0);
});

test('publish, list and resolve the latest or a given version', async (t) => {
  const root = await tempRoot(t);
  const store = openStore(t, root);
  await store.start();
  const events = recordEvents(store);

  const first = await store.publish('acme', 'bot', adapterFiles(8, 'first'));
  const second = await store.publish('acme', 'bot', adapterFiles(16, 'second'));
  await store.publish('other', 'bot', adapterFiles());
  assert.equal(first.id, 'acme/bot@1');
  assert.equal(second.version, '2');
  assert.deepEqual(second.summary, { rank: 16, weightBytes: 6 });
  assert.equal(second.public, false);
  assert.equal(second.files['adapter_model.safetensors'].sha256, createHash('sha256').update('second').digest('hex'));
  assert.equal(await readFile(join(second.path, 'adapter_model.safetensors'), 'utf8'), 'second');
  assert.equal(second.path, join(root, 'acme', 'bot', '2'));

  const manifest = JSON.parse(await readFile(join(second.path, 'manifest.json'), 'utf8')) as Manifest;
  assert.equal(manifest.version, '2');
  assert.equal(manifest.publishedAt, second.publishedAt);
  assert.deepEqual(manifest.files, second.files);
  assert.deepEqual(manifest.summary, second.summary);

  assert.deepEqual(
    store.list('acme').map((r) => r.id),
    ['acme/bot@1', 'acme/bot@2'],
  );
  assert.deepEqual(
    store.list().map((r) => r.id),
    ['acme/bot@1', 'acme/bot@2', 'other/bot@1'],
  );
  assert.equal(store.resolve('acme', 'bot')?.id, 'acme/bot@2');
  assert.equal(store.resolve('acme', 'bot', '1')?.summary.rank, 8);
  assert.equal(store.resolve('acme', 'bot', '3'), null);
  assert.equal(store.resolve('acme', 'nobody'), null);
  assert.deepEqual(events, ['added acme/bot@1', 'added acme/bot@2', 'added other/bot@1']);
  assert.deepEqual(await readdir(join(root, '.staging')), [], 'no staging left behind');

  // A second process sees the same store after its first scan.
  const restarted = openStore(t, root);
  await restarted.start();
  assert.deepEqual(restarted.list(), store.list());
});

test('automatic versions follow the highest integer version; a taken version is a conflict', async (t) => {
  const root = await tempRoot(t);
  const store = openStore(t, root);
  await store.publish('acme', 'bot', adapterFiles(), { version: '7' });
  await store.publish('acme', 'bot', adapterFiles(), { version: 'v9.beta' });
  assert.equal((await store.publish('acme', 'bot', adapterFiles())).version, '8');

  await assert.rejects(
    store.publish('acme', 'bot', adapterFiles(4, 'replacement'), { version: '7' }),
    (err: unknown) => hasCode('conflict')(err) && /already exists/.test((err as Error).message),
  );
  assert.equal(await readFile(join(root, 'acme', 'bot', '7', 'adapter_model.safetensors'), 'utf8'), 'weights-v1');
  assert.deepEqual(await readdir(join(root, '.staging')), []);
});

test('only the PEFT files are accepted for upload', async (t) => {
  const root = await tempRoot(t);
  const store = openStore(t, root);
  for (const name of ['adapter_model.bin', 'adapter_model.pt', 'weights.pkl', '../x', 'a/b', 'manifest.json']) {
    const files = adapterFiles();
    files.set(name, Buffer.from('x'));
    await assert.rejects(store.publish('acme', 'bot', files), hasCode('invalid_file'), name);
  }
  await assert.rejects(
    store.publish('acme', 'bot', new Map([['adapter_config.json', Buffer.from('{}')]])),
    (err: unknown) => hasCode('invalid_file')(err) && /adapter_model\.safetensors/.test((err as Error).message),
  );
  const withReadme = adapterFiles();
  withReadme.set('README.md', Buffer.from('# bot'));
  const record = await store.publish('acme', 'bot', withReadme);
  assert.deepEqual(Object.keys(record.files).sort(), ['README.md', 'adapter_config.json', 'adapter_model.safetensors']);
  assert.deepEqual(await readdir(join(root, 'acme', 'bot')), ['1']);
});

test('a validation failure reaches the publisher unchanged and leaves no trace', async (t) => {
  const root = await tempRoot(t);
  const store = openStore(t, root);
  await store.start();
  const events = recordEvents(store);
  const files = adapterFiles();
  files.set('adapter_config.json', Buffer.from('{"peft_type": "LO'));
  await assert.rejects(store.publish('acme', 'bot', files), SyntaxError);
  files.set('adapter_config.json', Buffer.from('{}'));
  files.set('adapter_model.safetensors', new Uint8Array());
  await assert.rejects(store.publish('acme', 'bot', files), /adapter_model\.safetensors is empty/);

  assert.equal(existsSync(join(root, 'acme', 'bot')), false);
  assert.deepEqual(await readdir(join(root, '.staging')), []);
  await store.refresh();
  assert.deepEqual(store.list(), []);
  assert.deepEqual(store.listInvalid(), []);
  assert.deepEqual(events, []);
});

test('symbolic links are never served, whether a version directory or a file in one', async (t) => {
  const root = await tempRoot(t);
  const outside = join(root, '..', 'outside');
  await writeVersionDir(outside, '9', adapterFiles(), new Date().toISOString());
  await mkdir(join(root, 'acme', 'bot'), { recursive: true });
  await symlink(outside, join(root, 'acme', 'bot', '9'));

  const linkedFile = join(root, 'acme', 'bot', '10');
  await writeVersionDir(linkedFile, '10', adapterFiles(), new Date().toISOString());
  await rm(join(linkedFile, 'adapter_model.safetensors'));
  await symlink(join(outside, 'adapter_model.safetensors'), join(linkedFile, 'adapter_model.safetensors'));

  const store = openStore(t, root);
  await store.start();
  assert.equal(store.resolve('acme', 'bot', '9'), null);
  assert.equal(store.resolve('acme', 'bot', '10'), null);
  assert.equal(store.resolve('acme', 'bot'), null);
  const invalid = store.listInvalid('acme');
  assert.deepEqual(
    invalid.map((entry) => entry.id),
    ['acme/bot@10', 'acme/bot@9'],
  );
  for (const entry of invalid) assert.match(entry.error, /symbolic link/);
});

test('startup removes stale staging and trash left by a crash, and never serves them', async (t) => {
  const root = await tempRoot(t);
  const stale = join(root, '.staging', 'crashed-upload');
  const live = join(root, '.staging', 'upload-in-progress');
  await writeVersionDir(stale, '1', adapterFiles(), new Date().toISOString());
  await writeVersionDir(live, '1', adapterFiles(), new Date().toISOString());
  const twoHoursAgo = new Date(Date.now() - 2 * 60 * 60 * 1000);
  for (const path of [stale, ...(await readdir(stale)).map((name) => join(stale, name))]) {
    await utimes(path, twoHoursAgo, twoHoursAgo);
  }
  await mkdir(join(root, '.trash', 'half-deleted', '3'), { recursive: true });

  const store = openStore(t, root);
  await store.start();
  assert.deepEqual(await readdir(join(root, '.staging')), ['upload-in-progress'], 'a recent one may still be written');
  assert.deepEqual(await readdir(join(root, '.trash')), []);
  assert.deepEqual(store.list(), []);
  assert.deepEqual(store.listInvalid(), []);
});

test('a half-written version directory is reported invalid, then served once complete', async (t) => {
  const root = await tempRoot(t);
  const dir = join(root, 'acme', 'bot', '1');
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'adapter_config.json'), '{"peft_type": "LORA", "r"');
  await writeFile(join(dir, 'adapter_model.safetensors'), 'weights');

  const store = openStore(t, root);
  const events = recordEvents(store);
  await store.start();
  assert.equal(store.resolve('acme', 'bot'), null);
  const [invalid] = store.listInvalid();
  assert.equal(invalid.id, 'acme/bot@1');
  assert.match(invalid.error, /JSON/);
  assert.equal(existsSync(join(dir, 'manifest.json')), false);

  await store.refresh();
  assert.deepEqual(events, ['invalid acme/bot@1'], 'unchanged files are not checked again');

  await writeFile(join(dir, 'adapter_config.json'), '{"peft_type": "LORA", "r": 4}');
  await store.refresh();
  const record = store.resolve('acme', 'bot');
  assert.equal(record?.id, 'acme/bot@1');
  assert.equal(record?.summary.rank, 4);
  assert.deepEqual(store.listInvalid(), []);
  assert.deepEqual(events, ['invalid acme/bot@1', 'added acme/bot@1']);

  const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as Manifest;
  assert.equal(manifest.version, '1');
  assert.deepEqual(manifest.files, record?.files);
  assert.deepEqual(await readdir(join(root, '.staging')), []);
});

test('a version the store could not adopt for a system reason is tried again on the next scan, files unchanged', async (t) => {
  const root = await tempRoot(t);
  const store = openStore(t, root);
  await store.start();
  // The manifest of an adopted version is written through .staging; a file in its place fails that write
  // (ENOTDIR), as a full disk would (ENOSPC), whoever runs the test.
  await rm(join(root, '.staging'), { recursive: true });
  await writeFile(join(root, '.staging'), 'not a directory');
  const outside = join(root, '..', 'sidecar-output');
  await mkdir(outside);
  for (const [name, data] of adapterFiles(4)) await writeFile(join(outside, name), data);
  await mkdir(join(root, 'acme', 'bot'), { recursive: true });
  await rename(outside, join(root, 'acme', 'bot', 'ft-1'));
  await store.refresh();
  assert.equal(store.resolve('acme', 'bot'), null);
  assert.match(store.listInvalid()[0].error, /ENOTDIR/);

  await rm(join(root, '.staging'));
  await mkdir(join(root, '.staging'));
  await store.refresh();
  assert.equal(store.resolve('acme', 'bot')?.id, 'acme/bot@ft-1');
  assert.deepEqual(store.listInvalid(), []);
  assert.equal(existsSync(join(root, 'acme', 'bot', 'ft-1', 'manifest.json')), true);
});

test('a version whose file is truncated after publishing stops being served, naming the altered file', async (t) => {
  const root = await tempRoot(t);
  const store = openStore(t, root);
  await store.start();
  const events = recordEvents(store);
  const record = await store.publish('acme', 'bot', adapterFiles());
  await writeFile(join(record.path, 'adapter_model.safetensors'), 'weights');
  await store.refresh();
  assert.equal(store.resolve('acme', 'bot'), null);
  const [invalid] = store.listInvalid();
  assert.match(invalid.error, /does not match manifest\.json/);
  assert.equal(invalid.alteredFile, 'adapter_model.safetensors');
  assert.deepEqual(events, ['added acme/bot@1', 'removed acme/bot@1', 'invalid acme/bot@1']);
});

test('starting lists versions from their manifests without reading weights or running the validator', async (t) => {
  const root = await tempRoot(t);
  const record = await openStore(t, root).publish('acme', 'bot', adapterFiles(8, 'weights-v1'));
  // A flipped byte that keeps size and mtime: only reading the file could tell.
  const weights = join(record.path, 'adapter_model.safetensors');
  const before = await stat(weights);
  await writeFile(weights, 'weights-v2');
  await utimes(weights, before.atime, before.mtime);

  let validated = 0;
  const restarted = openStore(t, root, {
    validate: async (dir) => {
      validated++;
      return checkAdapterDir(dir);
    },
    readSummary: (value) => value as TestSummary,
  });
  await restarted.start();
  assert.equal(validated, 0);
  const listed = restarted.resolve('acme', 'bot');
  assert.deepEqual(listed?.summary, { rank: 8, weightBytes: 10 });
  // The manifest's checksums travel with the record, for the loader to verify when it reads the files.
  assert.equal(listed?.files['adapter_model.safetensors'].sha256, record.files['adapter_model.safetensors'].sha256);

  // A summary the server refuses (readSummary says undefined) falls back to the validator.
  const strict = openStore(t, root, {
    validate: async (dir) => {
      validated++;
      return checkAdapterDir(dir);
    },
    readSummary: () => undefined,
  });
  await strict.start();
  assert.equal(validated, 1);
});

test('versions renamed into place by another process appear on refresh and on the periodic rescan', async (t) => {
  const root = await tempRoot(t);
  const store = openStore(t, root, { rescanIntervalMs: 30 });
  await store.start();
  const existing = await store.publish('acme', 'bot', adapterFiles());

  const staged = join(root, '.staging', 'sidecar-1');
  await writeVersionDir(staged, 'ft-1', adapterFiles(2, 'sidecar'), new Date(Date.now() + 1000).toISOString());
  await rename(staged, join(root, 'acme', 'bot', 'ft-1'));
  await store.refresh();
  assert.equal(store.resolve('acme', 'bot')?.id, 'acme/bot@ft-1');
  assert.equal(store.resolve('acme', 'bot', 'ft-1')?.summary.rank, 2);

  // Latest follows publishedAt, not the version name.
  const older = join(root, '.staging', 'sidecar-2');
  await writeVersionDir(older, '50', adapterFiles(), existing.publishedAt.replace(/^\d{4}/, '2001'));
  const added = once(store, 'added');
  await rename(older, join(root, 'acme', 'bot', '50'));
  const [record] = (await added) as [AdapterRecord<TestSummary>];
  assert.equal(record.id, 'acme/bot@50');
  assert.equal(store.resolve('acme', 'bot')?.id, 'acme/bot@ft-1');

  // A plain PEFT output directory without a manifest is adopted by the periodic rescan.
  const peftOutput = join(root, '.staging', 'sidecar-3');
  await mkdir(peftOutput);
  for (const [name, data] of adapterFiles(32)) await writeFile(join(peftOutput, name), data);
  const adopted = once(store, 'added');
  await rename(peftOutput, join(root, 'acme', 'bot', 'x1'));
  assert.equal(((await adopted) as [AdapterRecord<TestSummary>])[0].summary.rank, 32);
  assert.equal(existsSync(join(root, 'acme', 'bot', 'x1', 'manifest.json')), true);
});

test('remove takes a version or a whole adapter out of service at once', async (t) => {
  const root = await tempRoot(t);
  const store = openStore(t, root);
  await store.start();
  const events = recordEvents(store);
  await store.publish('acme', 'bot', adapterFiles());
  await store.publish('acme', 'bot', adapterFiles());
  await store.publish('acme', 'other', adapterFiles());

  await store.remove('acme', 'bot', '2');
  assert.equal(store.resolve('acme', 'bot', '2'), null);
  assert.equal(store.resolve('acme', 'bot')?.id, 'acme/bot@1');
  assert.equal(existsSync(join(root, 'acme', 'bot', '2')), false);

  await store.remove('acme', 'bot');
  assert.equal(store.resolve('acme', 'bot'), null);
  assert.equal(existsSync(join(root, 'acme', 'bot')), false);
  assert.deepEqual(
    store.list().map((r) => r.id),
    ['acme/other@1'],
  );
  assert.deepEqual(await readdir(join(root, '.trash')), []);
  await assert.rejects(store.remove('acme', 'bot'), hasCode('not_found'));
  await assert.rejects(store.remove('acme', 'other', '9'), hasCode('not_found'));

  await store.refresh();
  assert.deepEqual(events.slice(3), ['removed acme/bot@2', 'removed acme/bot@1']);

  // Deleted behind the store's back: gone after the next scan.
  await rm(join(root, 'acme', 'other'), { recursive: true });
  await store.refresh();
  assert.deepEqual(store.list(), []);
  assert.equal(events.at(-1), 'removed acme/other@1');
});

test('visibility persists across store instances', async (t) => {
  const root = await tempRoot(t);
  const store = openStore(t, root);
  await store.start();
  await store.publish('acme', 'bot', adapterFiles());
  await assert.rejects(store.setPublic('acme', 'missing', true), hasCode('not_found'));

  await store.setPublic('acme', 'bot', true);
  assert.equal(store.resolve('acme', 'bot')?.public, true);
  assert.deepEqual(JSON.parse(await readFile(join(root, 'acme', 'bot', 'visibility.json'), 'utf8')), { public: true });
  const published = await store.publish('acme', 'bot', adapterFiles());
  assert.equal(published.public, true);

  const restarted = openStore(t, root);
  await restarted.start();
  assert.deepEqual(
    restarted.list().map((r) => r.public),
    [true, true],
  );
  await restarted.setPublic('acme', 'bot', false);
  await store.refresh();
  assert.equal(store.resolve('acme', 'bot')?.public, false, 'a change made by another process is picked up');
  assert.deepEqual(await readdir(join(root, '.staging')), []);
});

test('concurrent publishes get distinct versions or a conflict, never a mixed directory', async (t) => {
  const root = await tempRoot(t);
  // Two instances on one directory behave like two processes: only the filesystem arbitrates between them.
  const stores = [openStore(t, root), openStore(t, root)];
  const automatic = await Promise.all(
    Array.from({ length: 8 }, (_, i) => stores[i % 2].publish('acme', 'bot', adapterFiles(i + 1, `weights-${i}`))),
  );
  assert.deepEqual(automatic.map((r) => Number(r.version)).sort((a, b) => a - b), [1, 2, 3, 4, 5, 6, 7, 8]);
  for (const record of automatic) {
    const weights = await readFile(join(record.path, 'adapter_model.safetensors'), 'utf8');
    assert.equal(weights, `weights-${record.summary.rank - 1}`, `${record.id} holds the files of its own upload`);
    const manifest = JSON.parse(await readFile(join(record.path, 'manifest.json'), 'utf8')) as Manifest;
    assert.equal(manifest.version, record.version);
  }

  const explicit = await Promise.allSettled(
    Array.from({ length: 4 }, (_, i) => stores[i % 2].publish('acme', 'bot', adapterFiles(i + 1), { version: 'v2' })),
  );
  assert.equal(explicit.filter((r) => r.status === 'fulfilled').length, 1);
  for (const result of explicit) {
    if (result.status === 'rejected') assert.ok(hasCode('conflict')(result.reason), String(result.reason));
  }
  const checker = openStore(t, root);
  await checker.start();
  assert.equal(checker.list().length, 9);
  assert.deepEqual(checker.listInvalid(), []);
  assert.deepEqual(await readdir(join(root, '.staging')), []);
});

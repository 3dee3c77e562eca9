/**
 * What starting on a store reads: each version's manifest and the stats of the files it lists, never weights; a
 * rescan of an unchanged version only its stats. Checksums are verified by the engine's loader when it first reads
 * a version, and remembered, so a version is hashed once while its files keep their stat identity.
 */
import { before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loraAdapterFiles, randomLoraAdapter } from '../src/adapters/lora-writer.ts';
import { loadVerifiedAdapter } from '../src/engine/adapter-loader.ts';
import { adapterValidator } from '../src/gateway/adapter-validator.ts';
import { adapterCacheKey, readAdapterSummary, type AdapterSummary } from '../src/gateway/model-resolver.ts';
import { configFromHuggingFace } from '../src/model/config.ts';
import type { LlamaConfig } from '../src/model/types.ts';
import { AdapterStore, AlteredFileError, type AdapterRecord } from '../src/registry/adapter-store.ts';
import { STORIES_HF_DIR } from './support/models.ts';
import { stopAfterTest, tempStoreRoot } from './support/store-dirs.ts';

const MAX_LORA_RANK = 16;
let base: LlamaConfig;

before(async () => {
  base = configFromHuggingFace(JSON.parse(await readFile(join(STORIES_HF_DIR, 'config.json'), 'utf8')));
});

function tempRoot(t: TestContext): Promise<string> {
  return tempStoreRoot(t, 'store-startup-');
}

/** A store configured as the gateway configures it, counting the validator's runs (each one reads weights). */
function gatewayStore(t: TestContext, root: string) {
  const validator = adapterValidator(base, MAX_LORA_RANK);
  const counts = { validated: 0 };
  const store = new AdapterStore<AdapterSummary>({
    root,
    validate: (dir) => {
      counts.validated++;
      return validator(dir);
    },
    readSummary: (value) => readAdapterSummary(value, { maxLoraRank: MAX_LORA_RANK, maxPositions: base.maxPositions }),
  });
  stopAfterTest(t, store);
  return { store, counts };
}

/** A whole second, so setting it again gives exactly the same mtime (a file's own mtime has nanoseconds). */
const PINNED_MTIME = new Date('2026-01-01T00:00:00Z');

async function pinMtime(path: string): Promise<void> {
  await utimes(path, PINNED_MTIME, PINNED_MTIME);
}

/** Flips a byte of a file's tensor data in place, keeping its inode, size and pinned mtime: only reading can tell. */
async function flipByteKeepingStats(path: string): Promise<void> {
  const bytes = await readFile(path);
  bytes[bytes.length - 3] ^= 0x40;
  await writeFile(path, bytes);
  await pinMtime(path);
}

function loaderRef(record: AdapterRecord<unknown>) {
  return { key: adapterCacheKey(record), path: record.path, files: record.files };
}

test('a version whose weights changed still lists at start; its first load is refused naming the file', async (t) => {
  const root = await tempRoot(t);
  const publisher = gatewayStore(t, root).store;
  const files = loraAdapterFiles(randomLoraAdapter(base, { rank: 4, targetModules: ['q_proj', 'v_proj'], seed: 1, std: 0.2 }));
  const published = await publisher.publish('acme', 'bot', files);
  await flipByteKeepingStats(join(published.path, 'adapter_model.safetensors'));

  const { store, counts } = gatewayStore(t, root);
  await store.start();
  assert.equal(counts.validated, 0, 'listing must not run the validator, which reads weights');
  assert.deepEqual(store.listInvalid(), []);
  const listed = store.resolve('acme', 'bot');
  assert.equal(listed?.id, 'acme/bot@1');
  assert.deepEqual(listed?.summary, published.summary);

  await assert.rejects(loadVerifiedAdapter(loaderRef(listed!), base, new Map()), (err: unknown) => {
    assert.ok(err instanceof AlteredFileError);
    assert.equal(err.file, 'adapter_model.safetensors');
    assert.match(err.message, /^adapter_model\.safetensors does not match manifest\.json \(size \d+, sha256 [0-9a-f]{64}; listed size \d+, sha256 [0-9a-f]{64}\): it changed after publishing$/);
    return true;
  });

  // The loader's report makes the store read the files itself: the version stops being listed, naming the file.
  await store.recheck('acme', 'bot', '1');
  assert.equal(store.resolve('acme', 'bot'), null);
  assert.equal(store.listInvalid()[0].alteredFile, 'adapter_model.safetensors');
});

test('a version is hashed on its first load only, while its files keep their stat identity', async (t) => {
  const root = await tempRoot(t);
  const { store } = gatewayStore(t, root);
  await store.start();
  const files = loraAdapterFiles(randomLoraAdapter(base, { rank: 4, targetModules: ['q_proj'], seed: 2, std: 0.2 }));
  const record = await store.publish('acme', 'bot', files);
  const weights = join(record.path, 'adapter_model.safetensors');
  await pinMtime(weights);
  const verified = new Map<string, string>();

  const first = await loadVerifiedAdapter(loaderRef(record), base, verified);
  assert.equal(first.rank, 4);
  assert.deepEqual([...verified.keys()], [adapterCacheKey(record)]);

  // Changed without changing inode, size or mtime: a second load that hashed the file again would refuse it.
  await flipByteKeepingStats(weights);
  const second = await loadVerifiedAdapter(loaderRef(record), base, verified);
  assert.equal(second.rank, 4, 'remembered as verified: not hashed again');
  // A loader that has not verified it yet (a restarted engine) hashes it and finds the change.
  await assert.rejects(loadVerifiedAdapter(loaderRef(record), base, new Map()), AlteredFileError);

  // A new mtime is a new identity: the remembering loader hashes again.
  const later = new Date(Date.now() + 60_000);
  await utimes(weights, later, later);
  await assert.rejects(loadVerifiedAdapter(loaderRef(record), base, verified), AlteredFileError);
});

test('a rescan reads a known version again only when the stats of its manifest or listed files change', async (t) => {
  const root = await tempRoot(t);
  const { store, counts } = gatewayStore(t, root);
  await store.start();
  const files = loraAdapterFiles(randomLoraAdapter(base, { rank: 4, targetModules: ['q_proj'], seed: 3, std: 0.2 }));
  const record = await store.publish('acme', 'bot', files);
  const validatedByPublish = counts.validated;

  const manifestPath = join(record.path, 'manifest.json');
  await pinMtime(manifestPath);
  await store.refresh();
  // The same manifest with another publishedAt of the same length, written in place with the same mtime.
  const text = await readFile(manifestPath, 'utf8');
  const movedOn = new Date(Date.parse(record.publishedAt) + 1000).toISOString();
  await writeFile(manifestPath, text.replace(record.publishedAt, movedOn));
  await pinMtime(manifestPath);
  await store.refresh();
  assert.equal(store.resolve('acme', 'bot')?.publishedAt, record.publishedAt, 'unchanged stats: the manifest is not read again');

  const later = new Date(Date.now() + 60_000);
  await utimes(manifestPath, later, later);
  await store.refresh();
  assert.equal(store.resolve('acme', 'bot')?.publishedAt, movedOn, 'a new mtime: read again');
  assert.equal(counts.validated, validatedByPublish, 'from the manifest, still without the validator');
});

function seededFiles(seed: number) {
  return loraAdapterFiles(randomLoraAdapter(base, { rank: 4, targetModules: ['q_proj'], seed, std: 0.2 }));
}

function recordChanges(store: AdapterStore<AdapterSummary>): string[] {
  const changes: string[] = [];
  store.on('added', (record) => changes.push(`added ${record.id}`));
  store.on('removed', (ref) => changes.push(`removed ${ref.id}`));
  return changes;
}

test('a start lists from the catalog snapshot the last scan saved; its background scan brings that in line with the disk', async (t) => {
  const root = await tempRoot(t);
  const first = gatewayStore(t, root).store;
  await first.start();
  await first.publish('acme', 'bot', seededFiles(4));
  const second = await first.publish('acme', 'bot', seededFiles(5));
  await first.setPublic('acme', 'bot', true);
  const secondManifest = join(second.path, 'manifest.json');
  await pinMtime(secondManifest);
  await first.refresh();
  await first.stop();

  // While no gateway runs, another process deletes version 1 and publishes version 3, and version 2's manifest is
  // overwritten in place keeping its stat identity: a start that read it would find it unreadable.
  const snapshotPath = join(root, '.catalog.json');
  const saved = await readFile(snapshotPath, 'utf8');
  const offline = gatewayStore(t, root).store;
  await offline.remove('acme', 'bot', '1');
  await offline.publish('acme', 'bot', seededFiles(6));
  assert.equal(await readFile(snapshotPath, 'utf8'), saved, 'a store that was never started knows only its own versions: it never saves');
  const manifestLength = (await readFile(secondManifest)).byteLength;
  await writeFile(secondManifest, ' '.repeat(manifestLength));
  await pinMtime(secondManifest);

  const { store, counts } = gatewayStore(t, root);
  const changes = recordChanges(store);
  await store.start();
  await store.refresh();
  assert.equal(counts.validated, 0);
  assert.deepEqual(store.listInvalid(), []);
  assert.deepEqual(
    store.list().map((record) => [record.id, record.public]),
    [
      ['acme/bot@2', true],
      ['acme/bot@3', true],
    ],
  );
  assert.equal(store.resolve('acme', 'bot', '2')?.filesTag, second.filesTag, 'version 2 as the snapshot recorded it');
  // Versions 1 and 2 were listed from the snapshot, until the scan found version 1 gone and version 3 new.
  assert.deepEqual(changes, ['added acme/bot@1', 'added acme/bot@2', 'added acme/bot@3', 'removed acme/bot@1']);
});

test('without a usable catalog snapshot a start scans in full and saves one; entries naming paths are never restored', async (t) => {
  const root = await tempRoot(t);
  const first = gatewayStore(t, root).store;
  await first.start();
  await first.publish('acme', 'bot', seededFiles(7));
  await first.refresh();
  await first.stop();
  const snapshotPath = join(root, '.catalog.json');
  const saved = JSON.parse(await readFile(snapshotPath, 'utf8'));
  assert.deepEqual(
    saved.adapters.map((entry: { tenant: string; adapter: string; versions: { version: string }[] }) => [entry.tenant, entry.adapter, entry.versions.map((v) => v.version)]),
    [['acme', 'bot', ['1']]],
  );

  // Cut short, as by a crash on a file system that does not keep a renamed file's data: the start scans in full.
  await writeFile(snapshotPath, JSON.stringify(saved).slice(0, 40));
  const rescanned = gatewayStore(t, root).store;
  await rescanned.start();
  assert.deepEqual(rescanned.list().map((record) => record.id), ['acme/bot@1'], 'listed before start resolves, by the scan it waited for');
  await rescanned.stop();
  assert.deepEqual(JSON.parse(await readFile(snapshotPath, 'utf8')), saved, 'the scan saved the snapshot again');

  // Entries whose names would lead out of ADAPTERS_DIR are skipped: never listed, so never added or removed.
  const [entry] = saved.adapters;
  saved.adapters.push({ ...entry, tenant: '..', adapter: 'etc' }, { ...entry, versions: [{ ...entry.versions[0], version: '../../escape' }] });
  await writeFile(snapshotPath, JSON.stringify(saved));
  const { store } = gatewayStore(t, root);
  const changes = recordChanges(store);
  await store.start();
  await store.refresh();
  assert.deepEqual(store.list().map((record) => record.path), [join(root, 'acme', 'bot', '1')]);
  assert.deepEqual(changes, ['added acme/bot@1']);
});

test('a version published again under its number with other files is looked at anew when its old files fail to load', async (t) => {
  const root = await tempRoot(t);
  const { store } = gatewayStore(t, root);
  await store.start();
  const listed = await store.publish('acme', 'bot', seededFiles(8));
  const offline = gatewayStore(t, root).store;
  await offline.remove('acme', 'bot', '1');
  const republished = await offline.publish('acme', 'bot', seededFiles(9), { version: '1' });

  // The loader read the new files against the record it was given: a mismatch, but not an altered file.
  await assert.rejects(loadVerifiedAdapter(loaderRef(listed), base, new Map()), AlteredFileError);
  await store.recheck('acme', 'bot', '1');
  assert.deepEqual(store.listInvalid(), []);
  assert.equal(store.resolve('acme', 'bot', '1')?.filesTag, republished.filesTag);
  assert.notEqual(republished.filesTag, listed.filesTag);
});

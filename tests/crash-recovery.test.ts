/**
 * SIGKILL of a real gateway process while it publishes: mid-upload (killed as soon as an upload's staging
 * directory appears) and mid-rescan (killed as soon as the rescan starts writing a manifest for versions another
 * process renamed into the store). The kill waits on the store's own file-system activity, never on a clock.
 * After a restart on the same directories every version accepted before the kill serves what its files say,
 * nothing half-published is listed, and the store holds only complete versions.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { watch } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loraAdapterFiles, randomLoraAdapter, writeAdapterFiles } from '../src/adapters/lora-writer.ts';
import { configFromHuggingFace } from '../src/model/config.ts';
import type { LlamaConfig } from '../src/model/types.ts';
import { BASE_MODEL, KEYS } from './support/gateway.ts';
import { STORIES_HF_DIR } from './support/models.ts';
import { spawnGateway, type SpawnedGateway } from './support/spawned-gateway.ts';

let dir: string;
let base: LlamaConfig;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'crash-recovery-'));
  base = configFromHuggingFace(JSON.parse(await readFile(join(STORIES_HF_DIR, 'config.json'), 'utf8')));
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const adapterFiles = (seed: number) =>
  loraAdapterFiles(randomLoraAdapter(base, { rank: 8, targetModules: ['q_proj', 'v_proj', 'down_proj'], seed, std: 0.2 }));

const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');
/** A version's content, as file name → sha256, to tell which upload a stored version came from. */
const fingerprint = (files: Map<string, Uint8Array>) => JSON.stringify([...files].map(([name, data]) => [name, sha256(data)]).sort());

function uploadForm(files: Map<string, Uint8Array>): FormData {
  const form = new FormData();
  for (const [name, data] of files) form.append(name, new Blob([new Uint8Array(data)]), name);
  return form;
}

/** Publishes over HTTP; resolves with the version on 201, or null when the gateway died before answering. */
async function upload(gateway: SpawnedGateway, adapter: string, files: Map<string, Uint8Array>): Promise<string | null> {
  try {
    const response = await fetch(`${gateway.url}/v1/adapters/acme/${adapter}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${KEYS.acme}` },
      body: uploadForm(files),
    });
    if (response.status !== 201) throw new Error(`upload answered ${response.status}: ${await response.text()}`);
    return ((await response.json()) as { version: string }).version;
  } catch (error) {
    if (gateway.child.exitCode !== null || gateway.child.signalCode !== null || (error as Error).name === 'TypeError') return null;
    throw error;
  }
}

/**
 * SIGKILLs the gateway as soon as the `nth` distinct entry that `matches` appears in `watched` (inotify reports it
 * while the gateway is still working on it); resolves once the process is dead.
 */
function killOnEntry(gateway: SpawnedGateway, watched: string, matches: (name: string) => boolean, nth = 1): Promise<void> {
  const seen = new Set<string>();
  return new Promise((resolve) => {
    const watcher = watch(watched, (_event, name) => {
      if (name === null || !matches(name.toString())) return;
      seen.add(name.toString());
      if (seen.size < nth) return;
      watcher.close();
      gateway.child.kill('SIGKILL');
      void gateway.exited.then(() => resolve());
    });
  });
}

async function greedy(gateway: SpawnedGateway, model: string): Promise<string> {
  const completion = await gateway.client().completions.create({ model, prompt: 'Once upon a time', max_tokens: 8, temperature: 0 });
  return completion.choices[0].text;
}

interface Listed {
  id: string;
  versions: { version: string; files: Record<string, { sha256: string }> }[];
}

/**
 * After a restart: the store lists nothing invalid; every listed version holds one upload's exact files; every
 * accepted version is listed and serves the same greedy text as its files published afresh.
 */
async function checkRecovered(gateway: SpawnedGateway, adaptersDir: string, uploads: Map<string, Map<string, Uint8Array>>, accepted: Map<string, string>) {
  const admin = (await (await fetch(`${gateway.url}/admin/adapters`, { headers: { authorization: `Bearer ${KEYS.admin}` } })).json()) as {
    data: Listed[];
    invalid: unknown[];
  };
  assert.deepEqual(admin.invalid, [], 'nothing half-published or damaged is on disk where versions live');
  const byFingerprint = new Map([...uploads].map(([key, files]) => [fingerprint(files), key]));
  const listed = new Map<string, string>();
  for (const adapter of admin.data) {
    for (const version of adapter.versions) {
      const content = JSON.stringify(Object.entries(version.files).map(([name, file]) => [name, file.sha256]).sort());
      const source = byFingerprint.get(content);
      assert.ok(source, `${adapter.id}@${version.version} holds the exact files of one upload`);
      listed.set(`${adapter.id}@${version.version}`, source);
    }
  }
  for (const [id, source] of accepted) {
    assert.equal(listed.get(id), source, `accepted version ${id} is listed with its own files`);
  }
  // Every version directory on disk is complete: a manifest beside the files it lists.
  for (const adapter of await readdir(join(adaptersDir, 'acme'))) {
    for (const version of await readdir(join(adaptersDir, 'acme', adapter))) {
      if (version === 'visibility.json') continue;
      const manifest = JSON.parse(await readFile(join(adaptersDir, 'acme', adapter, version, 'manifest.json'), 'utf8')) as { files: object };
      assert.deepEqual(Object.keys(manifest.files).sort(), ['adapter_config.json', 'adapter_model.safetensors'], `${adapter}@${version}`);
    }
  }
  // Serving: each accepted version answers as the same files published afresh on the restarted gateway.
  for (const [id, source] of accepted) {
    const reference = `reference-${source}`;
    assert.notEqual(await upload(gateway, reference, uploads.get(source)!), null);
    assert.equal(await greedy(gateway, `${BASE_MODEL}+${id}`), await greedy(gateway, `${BASE_MODEL}+acme/${reference}`), id);
  }
}

test('SIGKILL mid-upload: accepted versions survive and serve, nothing half-published is listed', async () => {
  const adaptersDir = join(dir, 'upload', 'adapters');
  const uploads = new Map<string, Map<string, Uint8Array>>();
  const accepted = new Map<string, string>();
  let gateway = await spawnGateway(join(dir, 'upload'), adaptersDir);
  try {
    for (let round = 0; round < 2; round++) {
      // Some versions published and acknowledged before the kill.
      for (let index = 0; index < 3; index++) {
        const key = `r${round}-before-${index}`;
        uploads.set(key, adapterFiles(round * 100 + index));
        const version = await upload(gateway, `bot${index}`, uploads.get(key)!);
        assert.notEqual(version, null);
        accepted.set(`acme/bot${index}@${version}`, key);
      }
      // Then concurrent uploads, and the kill as soon as the first of them starts writing its staging directory.
      const killed = killOnEntry(gateway, join(adaptersDir, '.staging'), () => true);
      const during = Array.from({ length: 3 }, async (_, index) => {
        const key = `r${round}-during-${index}`;
        uploads.set(key, adapterFiles(round * 100 + 50 + index));
        const version = await upload(gateway, `bot${index}`, uploads.get(key)!);
        if (version !== null) accepted.set(`acme/bot${index}@${version}`, key);
      });
      await Promise.all([killed, ...during]);
      assert.equal(gateway.child.signalCode, 'SIGKILL');

      gateway = await spawnGateway(join(dir, 'upload'), adaptersDir);
      await checkRecovered(gateway, adaptersDir, uploads, accepted);
    }
  } finally {
    await gateway.stop();
  }
});

test('SIGKILL mid-rescan: versions renamed in by another process are all adopted after a restart', async () => {
  const adaptersDir = join(dir, 'rescan', 'adapters');
  const uploads = new Map<string, Map<string, Uint8Array>>();
  const accepted = new Map<string, string>();
  let gateway = await spawnGateway(join(dir, 'rescan'), adaptersDir);
  try {
    assert.notEqual(await upload(gateway, 'bot', (uploads.set('first', adapterFiles(1)), uploads.get('first')!)), null);
    accepted.set('acme/bot@1', 'first');
    // Plain PEFT output directories without a manifest, as a training job leaves them, renamed into place at once.
    const outside = join(dir, 'rescan', 'outside');
    for (let index = 0; index < 12; index++) {
      const key = `sidecar-${index}`;
      uploads.set(key, adapterFiles(1000 + index));
      await writeAdapterFiles(join(outside, key), uploads.get(key)!);
    }
    await mkdir(join(adaptersDir, 'acme', 'bot'), { recursive: true });
    // The rescan writes each adopted version's manifest through a temporary file in .staging: the fourth is the
    // cue, so some versions are adopted and others not yet when the process dies.
    const killed = killOnEntry(gateway, join(adaptersDir, '.staging'), (name) => name.includes('manifest.json'), 4);
    for (let index = 0; index < 12; index++) {
      await rename(join(outside, `sidecar-${index}`), join(adaptersDir, 'acme', 'bot', `ft-${index}`));
      accepted.set(`acme/bot@ft-${index}`, `sidecar-${index}`);
    }
    await killed;
    assert.equal(gateway.child.signalCode, 'SIGKILL');

    gateway = await spawnGateway(join(dir, 'rescan'), adaptersDir);
    await checkRecovered(gateway, adaptersDir, uploads, accepted);
  } finally {
    await gateway.stop();
  }
});

/**
 * Every change the store makes on disk: publishing a version (staged, fsynced, validated, given a manifest, then
 * renamed into place), removing a version or an adapter (renamed into `.trash/`, then deleted), and writing an
 * adapter's visibility. The catalog is updated in the same exclusive section as the change.
 */
import { randomUUID } from 'node:crypto';
import { lstat, mkdir, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { syncDirectory, writeDurably } from '../storage/durable-files.ts';
import { StoreError, formatAdapterId } from './adapter-names.ts';
import {
  isIntegerVersion,
  publicRecord,
  servableVersion,
  type AdapterCatalog,
  type AdapterRecord,
} from './adapter-catalog.ts';
import {
  ADAPTER_FILES,
  ADAPTER_README_FILE,
  MANIFEST_FILE,
  missingRequiredFile,
  REQUIRED_FILES_TEXT,
  joinFingerprint,
  serializeManifest,
  servedFiles,
  statFiles,
  type Manifest,
} from './manifest.ts';
import { digestBytes, errorCode, ignoreMissing, pathExists, readdirIfPresent, type FileDigest } from './store-files.ts';
import type { StoreLayout } from './store-layout.ts';
import { writeVisibility } from './visibility.ts';

const PICKLED_WEIGHTS = /\.(bin|pt|pth|pkl|pickle|ckpt)$/i;

export interface AdapterPublisherOptions<Summary> {
  layout: StoreLayout;
  catalog: AdapterCatalog<Summary>;
  validate: (dir: string) => Promise<Summary>;
  /** Staging directories of publishes in progress here; the publisher adds and removes its own. */
  activeStaging: Set<string>;
  /** Runs catalog changes one at a time, after any scan in progress. */
  exclusive: <T>(work: () => Promise<T>) => Promise<T>;
}

export class AdapterPublisher<Summary> {
  constructor(private readonly options: AdapterPublisherOptions<Summary>) {}

  async publish(
    tenant: string,
    adapter: string,
    files: Map<string, Uint8Array>,
    explicitVersion: string | undefined,
  ): Promise<AdapterRecord<Summary>> {
    const { layout, validate, activeStaging, exclusive } = this.options;
    checkUploadedFiles(files);
    await layout.prepare();
    const adapterDir = layout.pathInside(tenant, adapter);
    // Refusing a taken version before writing anything spares the client an upload that cannot succeed.
    if (explicitVersion !== undefined && (await pathExists(layout.pathInside(tenant, adapter, explicitVersion)))) {
      throw conflict(tenant, adapter, explicitVersion);
    }

    const staging = join(layout.stagingDir, randomUUID());
    activeStaging.add(staging);
    try {
      await mkdir(staging);
      const digests: Record<string, FileDigest> = {};
      for (const [name, data] of files) {
        await writeDurably(join(staging, name), data);
        digests[name] = digestBytes(data);
      }
      await syncDirectory(staging);
      const summary = await validate(staging);
      return await exclusive(() =>
        this.commit({ tenant, adapter, adapterDir, staging, explicitVersion, files: digests, summary }),
      );
    } finally {
      activeStaging.delete(staging);
      // After a successful commit the staging path no longer exists and this does nothing.
      await rm(staging, { recursive: true, force: true });
    }
  }

  async remove(tenant: string, adapter: string, version?: string): Promise<void> {
    const { layout, catalog, exclusive } = this.options;
    await layout.prepare();
    const target = version === undefined ? layout.pathInside(tenant, adapter) : layout.pathInside(tenant, adapter, version);
    const trashed = await exclusive(async () => {
      const trashPath = join(layout.trashDir, randomUUID());
      try {
        // Moving it out first makes it disappear at once; deleting a large tree takes time and can be interrupted.
        await rename(target, trashPath);
      } catch (err) {
        if (errorCode(err) !== 'ENOENT') throw err;
        const id = formatAdapterId({ tenant, adapter, version });
        throw new StoreError('not_found', `adapter ${id} does not exist; list the tenant's adapters to see them`);
      }
      await syncDirectory(dirname(target));
      catalog.forgetAdapter(tenant, adapter, version);
      return trashPath;
    });
    // A delete that fails here leaves the tree in .trash, where the next scan's sweep retries it.
    await rm(trashed, { recursive: true, force: true }).catch(() => undefined);
  }

  async setPublic(tenant: string, adapter: string, isPublic: boolean): Promise<void> {
    const { layout, catalog, exclusive } = this.options;
    await layout.prepare();
    const adapterDir = layout.pathInside(tenant, adapter);
    await exclusive(async () => {
      const info = await lstat(adapterDir).catch(ignoreMissing);
      if (!info?.isDirectory()) {
        throw new StoreError(
          'not_found',
          `adapter ${formatAdapterId({ tenant, adapter })} does not exist; publish a version of it first`,
        );
      }
      await writeVisibility(adapterDir, isPublic, layout.stagingDir);
      catalog.readVisibility(catalog.adapterState(tenant, adapter), adapterDir);
    });
  }

  private async commit(job: {
    tenant: string;
    adapter: string;
    adapterDir: string;
    staging: string;
    explicitVersion: string | undefined;
    files: Record<string, FileDigest>;
    summary: Summary;
  }): Promise<AdapterRecord<Summary>> {
    const { layout, catalog } = this.options;
    const { tenant, adapter, adapterDir, staging } = job;
    const tenantDir = dirname(adapterDir);
    const created = await mkdir(adapterDir, { recursive: true });
    if (created !== undefined) {
      await syncDirectory(tenantDir);
      if (created === tenantDir) await syncDirectory(layout.root);
    }
    // Another publish (here, in a sidecar or in a second gateway) may take the version first: renaming onto a
    // non-empty directory fails rather than replace it, and an automatic version then moves on to the next number.
    for (;;) {
      const version = job.explicitVersion ?? (await nextIntegerVersion(adapterDir));
      const target = layout.pathInside(tenant, adapter, version);
      const manifest: Manifest<Summary> = {
        version,
        publishedAt: new Date().toISOString(),
        files: job.files,
        summary: job.summary,
      };
      await writeDurably(join(staging, MANIFEST_FILE), serializeManifest(manifest));
      await syncDirectory(staging);
      try {
        await rename(staging, target);
      } catch (err) {
        const code = errorCode(err);
        if (code !== 'ENOTEMPTY' && code !== 'EEXIST' && code !== 'ENOTDIR') throw err;
        if (job.explicitVersion !== undefined) throw conflict(tenant, adapter, version);
        continue;
      }
      await syncDirectory(adapterDir);

      const state = catalog.adapterState(tenant, adapter);
      catalog.readVisibility(state, adapterDir);
      const published = servableVersion(state, version, target, manifest, job.summary);
      const served = servedFiles(manifest.files);
      published.fingerprint = joinFingerprint(statFiles(target, served), served);
      catalog.apply(state, version, published);
      return publicRecord(published, state);
    }
  }
}

/** One past the highest integer among the directory's entries (valid or not), so no existing entry is reused. */
async function nextIntegerVersion(adapterDir: string): Promise<string> {
  let highest = 0;
  for (const entry of readdirIfPresent(adapterDir)) {
    if (isIntegerVersion(entry.name)) highest = Math.max(highest, Number(entry.name));
  }
  return String(highest + 1);
}

function checkUploadedFiles(files: Map<string, Uint8Array>): void {
  const accepted = `${REQUIRED_FILES_TEXT}, optionally ${ADAPTER_README_FILE}, each at the top level`;
  for (const name of files.keys()) {
    if (ADAPTER_FILES.has(name)) continue;
    const pickled = PICKLED_WEIGHTS.test(name)
      ? ' Pickled weights are refused because loading them can run code; save with safetensors ' +
        '(PEFT: save_pretrained(..., safe_serialization=True)).'
      : '';
    throw new StoreError('invalid_file', `file ${JSON.stringify(name)} is not accepted: upload ${accepted}.${pickled}`);
  }
  const missing = missingRequiredFile((name) => files.has(name));
  if (missing) throw new StoreError('invalid_file', `the upload lacks ${missing}: upload ${accepted}`);
}

function conflict(tenant: string, adapter: string, version: string): StoreError {
  return new StoreError(
    'conflict',
    `version ${formatAdapterId({ tenant, adapter, version })} already exists; versions are immutable, so publish ` +
      'under another version, or omit the version to get the next number',
  );
}

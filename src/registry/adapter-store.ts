/**
 * The disk tier of the adapter registry: versioned PEFT adapter directories under ADAPTERS_DIR, published
 * atomically (staging directory + rename), discovered without restart when another process publishes, and never
 * served half-written. The layout and the publish protocol are described in README.md beside this file.
 *
 * Validation of the adapter's content is injected (`validate`), so the store knows files and directories only.
 */
import { createHash, randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { constants, type Dirent } from 'node:fs';
import { lstat, mkdir, open, readdir, realpath, rename, rm, type FileHandle } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { ADAPTER_WEIGHTS_FILE } from '../adapters/lora.ts';
import { syncDirectory, writeDurably, writeFileAtomically } from '../storage/durable-files.ts';
import { isJsonObject } from '../storage/json-files.ts';
import { ADAPTER_CONFIG_FILE } from '../adapters/peft-config.ts';
import {
  StoreError,
  VISIBILITY_FILE,
  checkAdapterRef,
  checkTenantName,
  formatAdapterId,
  isValidName,
  isValidVersion,
} from './adapter-names.ts';

export { StoreError } from './adapter-names.ts';

export const ADAPTER_README_FILE = 'README.md';
export const MANIFEST_FILE = 'manifest.json';

const REQUIRED_FILES = [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE];
const ADAPTER_FILES = new Set([...REQUIRED_FILES, ADAPTER_README_FILE]);
const STAGING_DIR = '.staging';
const TRASH_DIR = '.trash';
const MAX_MANIFEST_BYTES = 1 << 20;
const PICKLED_WEIGHTS = /\.(bin|pt|pth|pkl|pickle|ckpt)$/i;

export interface FileDigest {
  size: number;
  sha256: string;
}

/** `manifest.json` in every servable version directory. */
export interface Manifest<Summary = unknown> {
  version: string;
  /** ISO 8601; the newest one is an adapter's latest version. */
  publishedAt: string;
  files: Record<string, FileDigest>;
  /** What the validator reported; optional for external publishers, which do not run it. */
  summary?: Summary;
}

export interface AdapterVersionRef {
  /** `tenant/adapter@version` */
  id: string;
  tenant: string;
  adapter: string;
  version: string;
}

export interface AdapterRecord<Summary = unknown> extends AdapterVersionRef {
  /** The version directory; its files are those listed in `files`. */
  path: string;
  publishedAt: string;
  files: Readonly<Record<string, FileDigest>>;
  /** The validator's result for this directory, computed by this process. */
  summary: Summary;
  /** Whether tenants other than the owner may use the adapter. */
  public: boolean;
}

export interface InvalidAdapterVersion extends AdapterVersionRef {
  path: string;
  /** What is wrong and what to do about it. */
  error: string;
}

export interface AdapterStoreEvents<Summary> {
  /** A version became servable, or its files changed and it is servable again. */
  added: [record: AdapterRecord<Summary>];
  /** A version stopped being servable or its files changed: drop any cached copy of it. */
  removed: [ref: AdapterVersionRef];
  /** A version directory cannot be served, or its error changed. */
  invalid: [entry: InvalidAdapterVersion];
  /** A periodic scan, or part of one, failed; the catalog keeps what it knew for the parts it could not read. */
  scanFailed: [error: Error];
}

export interface AdapterStoreOptions<Summary> {
  /** ADAPTERS_DIR; created if missing. */
  root: string;
  /**
   * Checks a complete adapter directory and returns a JSON-serialisable summary (stored in the manifest).
   * Throws to refuse it; the error reaches the publisher unchanged. The summary must not mention `dir`: it is a
   * staging directory when called from `publish`.
   */
  validate: (dir: string) => Promise<Summary>;
  /** Period of the rescan that finds versions published by other processes. Default 2000 ms. */
  rescanIntervalMs?: number;
  /**
   * Entries of `.staging/` untouched for this long are leftovers of a crashed publisher and are deleted; younger
   * ones may belong to a publisher in another process that is still writing. Default one hour.
   */
  stagingMaxAgeMs?: number;
}

interface ServableVersion<Summary> {
  kind: 'servable';
  /** Stat identity of the adapter files and the manifest when they were verified; a change triggers a re-check. */
  fingerprint: string;
  record: Omit<AdapterRecord<Summary>, 'public'>;
  publishedAtMs: number;
}

interface InvalidVersion {
  kind: 'invalid';
  fingerprint: string;
  entry: InvalidAdapterVersion;
}

type VersionState<Summary> = ServableVersion<Summary> | InvalidVersion;

interface AdapterState<Summary> {
  tenant: string;
  adapter: string;
  isPublic: boolean;
  visibilityFingerprint: string;
  versions: Map<string, VersionState<Summary>>;
}

/** Stat identity of one version directory's files, split so a manifest the store writes itself can be told apart. */
interface Fingerprint {
  adapterFiles: string;
  manifest: string;
}

export class AdapterStore<Summary = unknown> extends EventEmitter<AdapterStoreEvents<Summary>> {
  readonly root: string;
  private readonly validate: (dir: string) => Promise<Summary>;
  private readonly rescanIntervalMs: number;
  private readonly stagingMaxAgeMs: number;
  private readonly stagingDir: string;
  private readonly trashDir: string;

  private readonly adapters = new Map<string, AdapterState<Summary>>();
  /** Staging directories of publishes in progress here, which the sweep must not delete whatever their age. */
  private readonly activeStaging = new Set<string>();
  private realRoot = '';
  private prepared?: Promise<void>;
  /** Serialises scans and every change to the catalog, so a scan never acts on a listing older than a change. */
  private tail: Promise<unknown> = Promise.resolve();
  private queuedScan?: Promise<void>;
  private timer?: NodeJS.Timeout;
  private running = false;

  constructor(options: AdapterStoreOptions<Summary>) {
    super();
    this.root = resolve(options.root);
    this.validate = options.validate;
    this.rescanIntervalMs = options.rescanIntervalMs ?? 2000;
    this.stagingMaxAgeMs = options.stagingMaxAgeMs ?? 60 * 60 * 1000;
    this.stagingDir = join(this.root, STAGING_DIR);
    this.trashDir = join(this.root, TRASH_DIR);
  }

  /** Scans once (removing stale staging leftovers), then rescans every `rescanIntervalMs` until `stop()`. */
  async start(): Promise<void> {
    if (this.running) return;
    await this.refresh();
    this.running = true;
    this.scheduleRescan();
  }

  /** Stops rescanning and waits for the operation in progress. */
  async stop(): Promise<void> {
    this.running = false;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.tail;
  }

  /**
   * Rescans now. Resolves after a scan that started after this call, so a version renamed into place before the
   * call is known when it resolves; concurrent callers share one scan.
   */
  refresh(): Promise<void> {
    this.queuedScan ??= this.exclusive(async () => {
      this.queuedScan = undefined;
      await this.scan();
    });
    return this.queuedScan;
  }

  /** Servable versions, of one tenant or of all, ordered by tenant, adapter, then from oldest to latest. */
  list(tenant?: string): AdapterRecord<Summary>[] {
    if (tenant !== undefined) checkTenantName(tenant);
    const records: AdapterRecord<Summary>[] = [];
    for (const state of this.adapters.values()) {
      if (tenant !== undefined && state.tenant !== tenant) continue;
      const servable = [...state.versions.values()].filter((v) => v.kind === 'servable').sort(byRecency);
      for (const version of servable) records.push(publicRecord(version, state));
    }
    return records.sort(byAdapter);
  }

  /** Version directories that are present but not served, with the reason. */
  listInvalid(tenant?: string): InvalidAdapterVersion[] {
    if (tenant !== undefined) checkTenantName(tenant);
    const entries: InvalidAdapterVersion[] = [];
    for (const state of this.adapters.values()) {
      if (tenant !== undefined && state.tenant !== tenant) continue;
      for (const version of state.versions.values()) if (version.kind === 'invalid') entries.push(version.entry);
    }
    return entries.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /** The given version, or the latest servable one; null when there is none. */
  resolve(tenant: string, adapter: string, version?: string): AdapterRecord<Summary> | null {
    checkAdapterRef({ tenant, adapter, version });
    const state = this.adapters.get(adapterKey(tenant, adapter));
    if (!state) return null;
    if (version !== undefined) {
      const found = state.versions.get(version);
      return found?.kind === 'servable' ? publicRecord(found, state) : null;
    }
    let latest: ServableVersion<Summary> | undefined;
    for (const candidate of state.versions.values()) {
      if (candidate.kind === 'servable' && (!latest || byRecency(candidate, latest) > 0)) latest = candidate;
    }
    return latest ? publicRecord(latest, state) : null;
  }

  /**
   * Publishes a new version from uploaded files: staged, fsynced, validated, given a manifest, then renamed into
   * place. Without `options.version` the version is the next integer after the highest integer version.
   */
  async publish(
    tenant: string,
    adapter: string,
    files: Map<string, Uint8Array>,
    options: { version?: string } = {},
  ): Promise<AdapterRecord<Summary>> {
    const explicitVersion = options.version;
    checkAdapterRef({ tenant, adapter, version: explicitVersion });
    checkUploadedFiles(files);
    await this.prepare();
    const adapterDir = this.pathInside(tenant, adapter);
    // Refusing a taken version before writing anything spares the client an upload that cannot succeed.
    if (explicitVersion !== undefined && (await pathExists(this.pathInside(tenant, adapter, explicitVersion)))) {
      throw conflict(tenant, adapter, explicitVersion);
    }

    const staging = join(this.stagingDir, randomUUID());
    this.activeStaging.add(staging);
    try {
      await mkdir(staging);
      const digests: Record<string, FileDigest> = {};
      for (const [name, data] of files) {
        await writeDurably(join(staging, name), data);
        digests[name] = { size: data.byteLength, sha256: createHash('sha256').update(data).digest('hex') };
      }
      await syncDirectory(staging);
      const summary = await this.validate(staging);
      return await this.exclusive(() =>
        this.commit({ tenant, adapter, adapterDir, staging, explicitVersion, files: digests, summary }),
      );
    } finally {
      this.activeStaging.delete(staging);
      // After a successful commit the staging path no longer exists and this does nothing.
      await rm(staging, { recursive: true, force: true });
    }
  }

  /** Removes one version, or the whole adapter (with its visibility) when no version is given. */
  async remove(tenant: string, adapter: string, version?: string): Promise<void> {
    checkAdapterRef({ tenant, adapter, version });
    await this.prepare();
    const target = version === undefined ? this.pathInside(tenant, adapter) : this.pathInside(tenant, adapter, version);
    const trashed = await this.exclusive(async () => {
      const trashPath = join(this.trashDir, randomUUID());
      try {
        // Moving it out first makes it disappear at once; deleting a large tree takes time and can be interrupted.
        await rename(target, trashPath);
      } catch (err) {
        if (errorCode(err) !== 'ENOENT') throw err;
        const id = formatAdapterId({ tenant, adapter, version });
        throw new StoreError('not_found', `adapter ${id} does not exist; list the tenant's adapters to see them`);
      }
      await syncDirectory(dirname(target));
      const key = adapterKey(tenant, adapter);
      const state = this.adapters.get(key);
      if (state) {
        for (const name of [...state.versions.keys()]) {
          if (version === undefined || name === version) this.forget(state, name);
        }
        if (version === undefined) this.adapters.delete(key);
      }
      return trashPath;
    });
    // A delete that fails here leaves the tree in .trash, where the next scan's sweep retries it.
    await rm(trashed, { recursive: true, force: true }).catch(() => undefined);
  }

  /** Records whether other tenants may use the adapter; survives restarts. */
  async setPublic(tenant: string, adapter: string, isPublic: boolean): Promise<void> {
    checkAdapterRef({ tenant, adapter });
    await this.prepare();
    const adapterDir = this.pathInside(tenant, adapter);
    await this.exclusive(async () => {
      const info = await lstat(adapterDir).catch(ignoreMissing);
      if (!info?.isDirectory()) {
        throw new StoreError(
          'not_found',
          `adapter ${formatAdapterId({ tenant, adapter })} does not exist; publish a version of it first`,
        );
      }
      await writeFileAtomically(join(adapterDir, VISIBILITY_FILE), JSON.stringify({ public: isPublic }) + '\n', this.stagingDir);
      await this.readVisibility(this.adapterState(tenant, adapter), adapterDir);
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
    const { tenant, adapter, adapterDir, staging } = job;
    const tenantDir = dirname(adapterDir);
    const created = await mkdir(adapterDir, { recursive: true });
    if (created !== undefined) {
      await syncDirectory(tenantDir);
      if (created === tenantDir) await syncDirectory(this.root);
    }
    // Another publish (here, in a sidecar or in a second gateway) may take the version first: renaming onto a
    // non-empty directory fails rather than replace it, and an automatic version then moves on to the next number.
    for (;;) {
      const version = job.explicitVersion ?? (await nextIntegerVersion(adapterDir));
      const target = this.pathInside(tenant, adapter, version);
      const manifest: Manifest<Summary> = {
        version,
        publishedAt: new Date().toISOString(),
        files: job.files,
        summary: job.summary,
      };
      await writeDurably(join(staging, MANIFEST_FILE), JSON.stringify(manifest, null, 2) + '\n');
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

      const state = this.adapterState(tenant, adapter);
      await this.readVisibility(state, adapterDir);
      const published = servableVersion(state, version, target, manifest, job.summary);
      const fingerprint = await fingerprintVersion(target);
      if (fingerprint) published.fingerprint = joinFingerprint(fingerprint);
      this.apply(state, version, published);
      return publicRecord(published, state);
    }
  }

  private async scan(): Promise<void> {
    await this.prepare();
    await this.sweep().catch((err) => this.emit('scanFailed', asError(err)));
    const seen = new Set<string>();
    // An unreadable directory must not look like a deleted one: versions are only forgotten after a full listing.
    let complete = true;
    for (const tenantEntry of await readdir(this.root, { withFileTypes: true })) {
      if (!tenantEntry.isDirectory() || !isValidName(tenantEntry.name)) continue;
      const tenant = tenantEntry.name;
      let adapterEntries: Dirent[];
      try {
        adapterEntries = await readdirIfPresent(this.pathInside(tenant));
      } catch (err) {
        complete = false;
        this.emit('scanFailed', asError(err));
        continue;
      }
      for (const adapterEntry of adapterEntries) {
        if (!adapterEntry.isDirectory() || !isValidName(adapterEntry.name)) continue;
        const adapter = adapterEntry.name;
        seen.add(adapterKey(tenant, adapter));
        try {
          await this.scanAdapter(tenant, adapter);
        } catch (err) {
          this.emit('scanFailed', asError(err));
        }
      }
    }
    if (!complete) return;
    for (const [key, state] of this.adapters) {
      if (seen.has(key)) continue;
      for (const version of [...state.versions.keys()]) this.forget(state, version);
      this.adapters.delete(key);
    }
  }

  private async scanAdapter(tenant: string, adapter: string): Promise<void> {
    const adapterDir = this.pathInside(tenant, adapter);
    const state = this.adapterState(tenant, adapter);
    await this.readVisibility(state, adapterDir);
    const present = new Set<string>();
    for (const entry of await readdirIfPresent(adapterDir)) {
      const version = entry.name;
      if (!isValidVersion(version)) continue;
      const path = this.pathInside(tenant, adapter, version);
      if (entry.isSymbolicLink()) {
        present.add(version);
        const error =
          `${path} is a symbolic link; the store serves only real directories inside ADAPTERS_DIR. ` +
          'Move the version directory itself into place instead.';
        this.apply(state, version, invalidVersion(state, version, path, 'symbolic-link', error));
      } else if (entry.isDirectory() && (await this.examineVersion(state, version, path))) {
        present.add(version);
      }
    }
    for (const version of [...state.versions.keys()]) if (!present.has(version)) this.forget(state, version);
  }

  /** Verifies a version directory whose files changed since it was last seen. False if it vanished meanwhile. */
  private async examineVersion(state: AdapterState<Summary>, version: string, path: string): Promise<boolean> {
    const before = await fingerprintVersion(path);
    if (!before) return false;
    if (state.versions.get(version)?.fingerprint === joinFingerprint(before)) return true;
    let next: VersionState<Summary>;
    try {
      next = await this.verify(state, version, path);
    } catch (err) {
      // Recorded against what was there before, so anything that changed meanwhile is checked again next scan.
      this.apply(state, version, invalidVersion(state, version, path, joinFingerprint(before), errorMessage(err)));
      return true;
    }
    const after = await fingerprintVersion(path);
    if (!after) return false;
    // A manifest may have appeared (written by `adopt`), but the files served must be exactly those verified.
    const changed =
      after.adapterFiles !== before.adapterFiles || (before.manifest !== '-' && after.manifest !== before.manifest);
    if (changed) {
      const error = 'files changed while being verified; they will be checked again once they stop changing';
      next = invalidVersion(state, version, path, joinFingerprint(before), error);
    } else {
      next.fingerprint = joinFingerprint(after);
    }
    this.apply(state, version, next);
    return true;
  }

  private async verify(state: AdapterState<Summary>, version: string, path: string): Promise<VersionState<Summary>> {
    const real = await realpath(path);
    if (!isInside(this.realRoot, real)) {
      throw new StoreError('unsafe_path', `${path} resolves to ${real}, outside ADAPTERS_DIR; it is not served`);
    }
    const manifestText = await readSmallFile(join(path, MANIFEST_FILE), MAX_MANIFEST_BYTES);
    if (manifestText === null) return this.adopt(state, version, path);
    const manifest = parseManifest(manifestText, version);
    for (const [name, expected] of Object.entries(manifest.files)) {
      const actual = await digestFile(join(path, name));
      if (actual === null) {
        throw new StoreError('invalid_file', `${name} is listed in ${MANIFEST_FILE} but missing; publish it again`);
      }
      if (actual.size !== expected.size || actual.sha256 !== expected.sha256) {
        throw new StoreError(
          'invalid_file',
          `${name} does not match ${MANIFEST_FILE} (size ${actual.size}, sha256 ${actual.sha256}; listed size ` +
            `${expected.size}, sha256 ${expected.sha256}): it changed after publishing. Publish a new version, or ` +
            `delete ${MANIFEST_FILE} to have the directory checked and adopted as it is now.`,
        );
      }
    }
    const summary = await this.validate(path);
    return servableVersion(state, version, path, manifest, summary);
  }

  /** A version directory without a manifest (placed by hand or by an external publisher): check it and write one. */
  private async adopt(state: AdapterState<Summary>, version: string, path: string): Promise<VersionState<Summary>> {
    const files: Record<string, FileDigest> = {};
    for (const name of ADAPTER_FILES) {
      const digest = await digestFile(join(path, name));
      if (digest) files[name] = digest;
      else if (REQUIRED_FILES.includes(name)) {
        throw new StoreError(
          'invalid_file',
          `${name} is missing; a version directory needs ${REQUIRED_FILES.join(' and ')}, ` +
            `and ${MANIFEST_FILE} once complete`,
        );
      }
    }
    const summary = await this.validate(path);
    const manifest: Manifest<Summary> = { version, publishedAt: new Date().toISOString(), files, summary };
    await writeFileAtomically(join(path, MANIFEST_FILE), JSON.stringify(manifest, null, 2) + '\n', this.stagingDir);
    return servableVersion(state, version, path, manifest, summary);
  }

  /** Updates the catalog and tells listeners what changed for servers of this version. */
  private apply(state: AdapterState<Summary>, version: string, next: VersionState<Summary>): void {
    const previous = state.versions.get(version);
    state.versions.set(version, next);
    const unchanged =
      previous?.kind === 'servable' && next.kind === 'servable' && sameFiles(previous.record.files, next.record.files);
    if (previous?.kind === 'servable' && !unchanged) this.emit('removed', versionRef(previous.record));
    if (next.kind === 'servable' && !unchanged) this.emit('added', publicRecord(next, state));
    if (next.kind === 'invalid' && (previous?.kind !== 'invalid' || previous.entry.error !== next.entry.error)) {
      this.emit('invalid', next.entry);
    }
  }

  private forget(state: AdapterState<Summary>, version: string): void {
    const previous = state.versions.get(version);
    state.versions.delete(version);
    if (previous?.kind === 'servable') this.emit('removed', versionRef(previous.record));
  }

  private adapterState(tenant: string, adapter: string): AdapterState<Summary> {
    const key = adapterKey(tenant, adapter);
    let state = this.adapters.get(key);
    if (!state) {
      state = { tenant, adapter, isPublic: false, visibilityFingerprint: '', versions: new Map() };
      this.adapters.set(key, state);
    }
    return state;
  }

  private async readVisibility(state: AdapterState<Summary>, adapterDir: string): Promise<void> {
    const path = join(adapterDir, VISIBILITY_FILE);
    const fingerprint = statFingerprint(await lstat(path).catch(ignoreMissing));
    if (fingerprint === state.visibilityFingerprint) return;
    const text = await readSmallFile(path, MAX_MANIFEST_BYTES).catch(() => null);
    // Anything but a well-formed `{"public": true}` keeps the adapter private: the safe reading of a damaged file.
    state.isPublic = text !== null && parseJson(text)?.public === true;
    state.visibilityFingerprint = fingerprint;
  }

  /** Deletes staging leftovers of crashed publishers and whatever a crash left in the trash. */
  private async sweep(): Promise<void> {
    const now = Date.now();
    for (const entry of await readdirIfPresent(this.stagingDir)) {
      const path = join(this.stagingDir, entry.name);
      if (this.activeStaging.has(path)) continue;
      const touched = await newestMtime(path);
      if (touched !== null && now - touched >= this.stagingMaxAgeMs) await rm(path, { recursive: true, force: true });
    }
    for (const entry of await readdirIfPresent(this.trashDir)) {
      await rm(join(this.trashDir, entry.name), { recursive: true, force: true });
    }
  }

  private prepare(): Promise<void> {
    this.prepared ??= (async () => {
      await mkdir(this.stagingDir, { recursive: true });
      await mkdir(this.trashDir, { recursive: true });
      this.realRoot = await realpath(this.root);
    })().catch((err) => {
      this.prepared = undefined;
      throw err;
    });
    return this.prepared;
  }

  /** Names are validated before they get here; this is the last check that a path stays inside ADAPTERS_DIR. */
  private pathInside(...segments: string[]): string {
    const path = resolve(this.root, ...segments);
    if (!isInside(this.root, path)) {
      throw new StoreError('unsafe_path', `refusing path ${path}: it is outside ADAPTERS_DIR ${this.root}`);
    }
    return path;
  }

  private exclusive<T>(work: () => Promise<T>): Promise<T> {
    const result = this.tail.then(work, work);
    this.tail = result.catch(() => undefined);
    return result;
  }

  private scheduleRescan(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.refresh()
        .catch((err) => this.emit('scanFailed', asError(err)))
        .finally(() => {
          if (this.running) this.scheduleRescan();
        });
    }, this.rescanIntervalMs);
  }
}

function adapterKey(tenant: string, adapter: string): string {
  return `${tenant}/${adapter}`;
}

function versionRef(record: AdapterVersionRef): AdapterVersionRef {
  return { id: record.id, tenant: record.tenant, adapter: record.adapter, version: record.version };
}

function servableVersion<Summary>(
  state: AdapterState<Summary>,
  version: string,
  path: string,
  manifest: Pick<Manifest, 'publishedAt' | 'files'>,
  summary: Summary,
): ServableVersion<Summary> {
  const { tenant, adapter } = state;
  return {
    kind: 'servable',
    fingerprint: '',
    record: {
      id: formatAdapterId({ tenant, adapter, version }),
      tenant,
      adapter,
      version,
      path,
      publishedAt: manifest.publishedAt,
      files: manifest.files,
      summary,
    },
    publishedAtMs: Date.parse(manifest.publishedAt),
  };
}

function invalidVersion(
  state: AdapterState<unknown>,
  version: string,
  path: string,
  fingerprint: string,
  error: string,
): InvalidVersion {
  const { tenant, adapter } = state;
  return {
    kind: 'invalid',
    fingerprint,
    entry: { id: formatAdapterId({ tenant, adapter, version }), tenant, adapter, version, path, error },
  };
}

function publicRecord<Summary>(
  version: ServableVersion<Summary>,
  state: AdapterState<Summary>,
): AdapterRecord<Summary> {
  return { ...version.record, public: state.isPublic };
}

/** Newest `publishedAt` is latest; on a tie the higher integer version, else the lexically higher one. */
function byRecency(a: ServableVersion<unknown>, b: ServableVersion<unknown>): number {
  if (a.publishedAtMs !== b.publishedAtMs) return a.publishedAtMs - b.publishedAtMs;
  const va = a.record.version;
  const vb = b.record.version;
  if (isIntegerVersion(va) && isIntegerVersion(vb)) return Number(va) - Number(vb);
  return va < vb ? -1 : va > vb ? 1 : 0;
}

function byAdapter(a: AdapterRecord<unknown>, b: AdapterRecord<unknown>): number {
  const ka = adapterKey(a.tenant, a.adapter);
  const kb = adapterKey(b.tenant, b.adapter);
  return ka < kb ? -1 : ka > kb ? 1 : 0;
}

function isIntegerVersion(version: string): boolean {
  return /^[0-9]{1,15}$/.test(version);
}

/** One past the highest integer among the directory's entries (valid or not), so no existing entry is reused. */
async function nextIntegerVersion(adapterDir: string): Promise<string> {
  let highest = 0;
  for (const entry of await readdirIfPresent(adapterDir)) {
    if (isIntegerVersion(entry.name)) highest = Math.max(highest, Number(entry.name));
  }
  return String(highest + 1);
}

function sameFiles(a: Record<string, FileDigest>, b: Record<string, FileDigest>): boolean {
  const names = Object.keys(a);
  return (
    names.length === Object.keys(b).length &&
    names.every((name) => b[name]?.sha256 === a[name].sha256 && b[name].size === a[name].size)
  );
}

function checkUploadedFiles(files: Map<string, Uint8Array>): void {
  const accepted = `${REQUIRED_FILES.join(' and ')}, optionally ${ADAPTER_README_FILE}, each at the top level`;
  for (const name of files.keys()) {
    if (ADAPTER_FILES.has(name)) continue;
    const pickled = PICKLED_WEIGHTS.test(name)
      ? ' Pickled weights are refused because loading them can run code; save with safetensors ' +
        '(PEFT: save_pretrained(..., safe_serialization=True)).'
      : '';
    throw new StoreError('invalid_file', `file ${JSON.stringify(name)} is not accepted: upload ${accepted}.${pickled}`);
  }
  for (const name of REQUIRED_FILES) {
    if (!files.has(name)) throw new StoreError('invalid_file', `the upload lacks ${name}: upload ${accepted}`);
  }
}

function conflict(tenant: string, adapter: string, version: string): StoreError {
  return new StoreError(
    'conflict',
    `version ${formatAdapterId({ tenant, adapter, version })} already exists; versions are immutable, so publish ` +
      'under another version, or omit the version to get the next number',
  );
}

function parseManifest(text: string, version: string): Manifest {
  const value = parseJson(text);
  const fix = 'publish the version again, or delete the file to have the directory checked and adopted as it is';
  if (!value) throw new StoreError('invalid_file', `${MANIFEST_FILE} is not a JSON object; ${fix}`);
  if (value.version !== version) {
    throw new StoreError(
      'invalid_file',
      `${MANIFEST_FILE} names version ${JSON.stringify(value.version)} but lies in directory "${version}"; ${fix}`,
    );
  }
  const publishedAtMs = typeof value.publishedAt === 'string' ? Date.parse(value.publishedAt) : NaN;
  if (!Number.isFinite(publishedAtMs)) {
    throw new StoreError('invalid_file', `${MANIFEST_FILE} needs "publishedAt" as an ISO 8601 time; ${fix}`);
  }
  const files = value.files;
  if (!isJsonObject(files)) {
    throw new StoreError('invalid_file', `${MANIFEST_FILE} needs "files": {name: {size, sha256}}; ${fix}`);
  }
  const digests: Record<string, FileDigest> = {};
  for (const [name, digest] of Object.entries(files as Record<string, unknown>)) {
    if (!ADAPTER_FILES.has(name)) {
      const what = `${MANIFEST_FILE} lists ${JSON.stringify(name)}, which is not an adapter file`;
      throw new StoreError('invalid_file', `${what}; ${fix}`);
    }
    const { size, sha256 } = (digest ?? {}) as Partial<FileDigest>;
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0 || !/^[0-9a-f]{64}$/.test(sha256 ?? '')) {
      throw new StoreError('invalid_file', `${MANIFEST_FILE} needs {size, sha256 (64 hex digits)} for ${name}; ${fix}`);
    }
    digests[name] = { size, sha256: sha256 as string };
  }
  for (const name of REQUIRED_FILES) {
    if (!digests[name]) throw new StoreError('invalid_file', `${MANIFEST_FILE} does not list ${name}; ${fix}`);
  }
  return { version, publishedAt: new Date(publishedAtMs).toISOString(), files: digests, summary: value.summary };
}

function parseJson(text: string): Record<string, unknown> | null {
  try {
    const value: unknown = JSON.parse(text);
    return isJsonObject(value) ? value : null;
  } catch {
    return null;
  }
}

function isInside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel !== '' && rel !== '..' && !rel.startsWith(`..${sep}`) && !isAbsolute(rel);
}

/** Opens without following a symbolic link, so a link planted in a version directory cannot point outside. */
async function openRegularFile(path: string): Promise<{ handle: FileHandle; size: number } | null> {
  let handle: FileHandle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return null;
    if (errorCode(err) === 'ELOOP') {
      throw new StoreError('unsafe_path', `${path} is a symbolic link; put the file itself in the version directory`);
    }
    throw err;
  }
  const info = await handle.stat();
  if (!info.isFile()) {
    await handle.close();
    throw new StoreError('invalid_file', `${path} is not a regular file`);
  }
  return { handle, size: info.size };
}

async function digestFile(path: string): Promise<FileDigest | null> {
  const opened = await openRegularFile(path);
  if (!opened) return null;
  const { handle } = opened;
  try {
    const hash = createHash('sha256');
    const buffer = Buffer.allocUnsafe(1 << 20);
    let size = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, null);
      if (bytesRead === 0) break;
      hash.update(buffer.subarray(0, bytesRead));
      size += bytesRead;
    }
    return { size, sha256: hash.digest('hex') };
  } finally {
    await handle.close();
  }
}

async function readSmallFile(path: string, maxBytes: number): Promise<string | null> {
  const opened = await openRegularFile(path);
  if (!opened) return null;
  try {
    if (opened.size > maxBytes) throw new StoreError('invalid_file', `${path} is larger than ${maxBytes} bytes`);
    return await opened.handle.readFile('utf8');
  } finally {
    await opened.handle.close();
  }
}

async function fingerprintVersion(dir: string): Promise<Fingerprint | null> {
  const info = await lstat(dir).catch(ignoreMissing);
  if (!info?.isDirectory()) return null;
  const adapterFiles: string[] = [];
  for (const name of ADAPTER_FILES) {
    adapterFiles.push(`${name}=${statFingerprint(await lstat(join(dir, name)).catch(ignoreMissing))}`);
  }
  const manifest = statFingerprint(await lstat(join(dir, MANIFEST_FILE)).catch(ignoreMissing));
  return { adapterFiles: adapterFiles.join(','), manifest };
}

function joinFingerprint(fingerprint: Fingerprint): string {
  return `${fingerprint.adapterFiles};${MANIFEST_FILE}=${fingerprint.manifest}`;
}

function statFingerprint(info: { ino: number; size: number; mtimeMs: number; isFile(): boolean } | null): string {
  return info ? `${info.isFile() ? 'f' : 'x'}:${info.ino}:${info.size}:${info.mtimeMs}` : '-';
}

/** The latest modification of a staging entry or of anything directly inside it; null if it is gone. */
async function newestMtime(path: string): Promise<number | null> {
  const info = await lstat(path).catch(ignoreMissing);
  if (!info) return null;
  let newest = info.mtimeMs;
  if (info.isDirectory()) {
    for (const entry of await readdirIfPresent(path)) {
      const child = await lstat(join(path, entry.name)).catch(ignoreMissing);
      if (child) newest = Math.max(newest, child.mtimeMs);
    }
  }
  return newest;
}

async function readdirIfPresent(path: string): Promise<Dirent[]> {
  try {
    return await readdir(path, { withFileTypes: true });
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return [];
    throw err;
  }
}

async function pathExists(path: string): Promise<boolean> {
  return (await lstat(path).catch(ignoreMissing)) !== null;
}

function ignoreMissing(err: unknown): null {
  if (errorCode(err) === 'ENOENT') return null;
  throw err;
}

function errorCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | null)?.code;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

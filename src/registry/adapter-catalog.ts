/**
 * What the store knows from disk, in memory: every adapter's versions (servable or invalid, with the stat
 * fingerprint they were checked at) and its visibility. Answers listings and lookups, and tells listeners what
 * changed whenever a version's state is replaced.
 */
import type { EventEmitter } from 'node:events';
import { formatAdapterId } from './adapter-names.ts';
import { filesTag, sameFiles, type FileDigest, type Manifest } from './manifest.ts';
import { readVisibility } from './visibility.ts';

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
  /** `filesTag(files)`, computed once when the store adopts the version. */
  filesTag: string;
  /** The validator's result for this directory, computed by this process. */
  summary: Summary;
  /** Whether tenants other than the owner may use the adapter. */
  public: boolean;
}

export interface InvalidAdapterVersion extends AdapterVersionRef {
  path: string;
  /** What is wrong and what to do about it. */
  error: string;
  /** The file that no longer matches the manifest, when the version was altered after publishing. */
  alteredFile?: string;
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

export interface ServableVersion<Summary> {
  kind: 'servable';
  /** Stat identity of the adapter files and the manifest when they were verified; a change triggers a re-check. */
  fingerprint: string;
  record: Omit<AdapterRecord<Summary>, 'public'>;
  publishedAtMs: number;
}

export interface InvalidVersion {
  kind: 'invalid';
  fingerprint: string;
  entry: InvalidAdapterVersion;
}

export type VersionState<Summary> = ServableVersion<Summary> | InvalidVersion;

export interface AdapterState<Summary> {
  tenant: string;
  adapter: string;
  isPublic: boolean;
  visibilityFingerprint: string;
  versions: Map<string, VersionState<Summary>>;
}

export class AdapterCatalog<Summary> {
  private readonly adapters = new Map<string, AdapterState<Summary>>();
  /** Counts changes to what is known, so a saved copy of the catalog (catalog-snapshot.ts) is rewritten only after one. */
  revision = 0;

  constructor(private readonly events: EventEmitter<AdapterStoreEvents<Summary>>) {}

  /** Servable versions, of one tenant or of all, ordered by tenant, adapter, then from oldest to latest. */
  list(tenant?: string): AdapterRecord<Summary>[] {
    const records: AdapterRecord<Summary>[] = [];
    for (const state of this.adapters.values()) {
      if (tenant !== undefined && state.tenant !== tenant) continue;
      const servable = [...state.versions.values()].filter((v) => v.kind === 'servable').sort(byRecency);
      for (const version of servable) records.push(publicRecord(version, state));
    }
    return records.sort(byAdapter);
  }

  listInvalid(tenant?: string): InvalidAdapterVersion[] {
    const entries: InvalidAdapterVersion[] = [];
    for (const state of this.adapters.values()) {
      if (tenant !== undefined && state.tenant !== tenant) continue;
      for (const version of state.versions.values()) if (version.kind === 'invalid') entries.push(version.entry);
    }
    return entries.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /** The given version, or the latest servable one; null when there is none. */
  resolve(tenant: string, adapter: string, version?: string): AdapterRecord<Summary> | null {
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
   * A version present on disk that cannot be served: the given one, or, without a version, the newest-named
   * invalid one of an adapter that has no servable version at all. Null when there is none.
   */
  unavailable(tenant: string, adapter: string, version?: string): { entry: InvalidAdapterVersion; public: boolean } | null {
    const state = this.adapters.get(adapterKey(tenant, adapter));
    if (!state) return null;
    const versions = [...state.versions.values()];
    let found: InvalidVersion | undefined;
    if (version !== undefined) {
      const candidate = state.versions.get(version);
      if (candidate?.kind === 'invalid') found = candidate;
    } else if (versions.every((v) => v.kind === 'invalid')) {
      found = versions.filter((v): v is InvalidVersion => v.kind === 'invalid').sort((a, b) => (a.entry.version < b.entry.version ? 1 : -1))[0];
    }
    return found ? { entry: found.entry, public: state.isPublic } : null;
  }

  /** Every adapter the catalog knows. */
  states(): IterableIterator<AdapterState<Summary>> {
    return this.adapters.values();
  }

  /**
   * Reads the adapter's visibility file into its state (visibility.ts) when it changed since last read, counting
   * that as a change to what is known. `listed` false: a listing of its directory just found no such file.
   */
  readVisibility(state: AdapterState<Summary>, adapterDir: string, listed = true): void {
    if (readVisibility(state, adapterDir, listed)) this.revision++;
  }

  /** The state of one adapter, when the catalog knows it. */
  find(tenant: string, adapter: string): AdapterState<Summary> | undefined {
    return this.adapters.get(adapterKey(tenant, adapter));
  }

  /** The state of one adapter, created empty when the catalog has none yet. */
  adapterState(tenant: string, adapter: string): AdapterState<Summary> {
    const key = adapterKey(tenant, adapter);
    let state = this.adapters.get(key);
    if (!state) {
      state = { tenant, adapter, isPublic: false, visibilityFingerprint: '', versions: new Map() };
      this.adapters.set(key, state);
    }
    return state;
  }

  /** Updates the catalog and tells listeners what changed for servers of this version. */
  apply(state: AdapterState<Summary>, version: string, next: VersionState<Summary>): void {
    const previous = state.versions.get(version);
    state.versions.set(version, next);
    this.revision++;
    const unchanged =
      previous?.kind === 'servable' && next.kind === 'servable' && sameFiles(previous.record.files, next.record.files);
    if (previous?.kind === 'servable' && !unchanged) this.events.emit('removed', versionRef(previous.record));
    // A record per version is built only for someone listening (nobody is, during a gateway's first scan).
    if (next.kind === 'servable' && !unchanged && this.events.listenerCount('added') > 0) this.events.emit('added', publicRecord(next, state));
    if (next.kind === 'invalid' && (previous?.kind !== 'invalid' || previous.entry.error !== next.entry.error)) {
      this.events.emit('invalid', next.entry);
    }
  }

  forget(state: AdapterState<Summary>, version: string): void {
    const previous = state.versions.get(version);
    state.versions.delete(version);
    this.revision++;
    if (previous?.kind === 'servable') this.events.emit('removed', versionRef(previous.record));
  }

  /** Forgets one version, or the whole adapter when no version is given. */
  forgetAdapter(tenant: string, adapter: string, version?: string): void {
    const key = adapterKey(tenant, adapter);
    const state = this.adapters.get(key);
    if (!state) return;
    for (const name of [...state.versions.keys()]) {
      if (version === undefined || name === version) this.forget(state, name);
    }
    if (version === undefined && this.adapters.delete(key)) this.revision++;
  }

  /** Forgets every adapter a complete listing of the store did not find. */
  forgetAllBut(seen: ReadonlySet<string>): void {
    for (const [key, state] of this.adapters) {
      if (seen.has(key)) continue;
      for (const version of [...state.versions.keys()]) this.forget(state, version);
      this.adapters.delete(key);
      this.revision++;
    }
  }
}

export function adapterKey(tenant: string, adapter: string): string {
  return `${tenant}/${adapter}`;
}

export function servableVersion<Summary>(
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
      filesTag: filesTag(manifest.files),
      summary,
    },
    publishedAtMs: Date.parse(manifest.publishedAt),
  };
}

export function invalidVersion(
  state: AdapterState<unknown>,
  version: string,
  path: string,
  fingerprint: string,
  error: string,
  alteredFile?: string,
): InvalidVersion {
  const { tenant, adapter } = state;
  const entry: InvalidAdapterVersion = { id: formatAdapterId({ tenant, adapter, version }), tenant, adapter, version, path, error };
  if (alteredFile !== undefined) entry.alteredFile = alteredFile;
  return { kind: 'invalid', fingerprint, entry };
}

export function publicRecord<Summary>(
  version: ServableVersion<Summary>,
  state: AdapterState<Summary>,
): AdapterRecord<Summary> {
  return { ...version.record, public: state.isPublic };
}

function versionRef(record: AdapterVersionRef): AdapterVersionRef {
  return { id: record.id, tenant: record.tenant, adapter: record.adapter, version: record.version };
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

export function isIntegerVersion(version: string): boolean {
  return /^[0-9]{1,15}$/.test(version);
}

/**
 * A copy of the catalog's servable versions saved in ADAPTERS_DIR, so a start lists the store from one file instead
 * of a manifest and a few stats per version. After a reboot those per-version reads are cold: 10,000 versions took
 * 3–5 s to list by a scan, against about 0.1 s from the snapshot (README.md beside this file).
 *
 * The snapshot is a cache of what scans found, never the truth: a start restores it and the first scan, which runs
 * at once in the background, checks every restored version's stat fingerprint against the disk as it checks any
 * version it already knows (README.md, "What a scan reads"). What changed meanwhile is verified again, what is
 * gone is forgotten, what is new is found. Until then a restored version is served as the snapshot describes it,
 * and whoever loads it still verifies the checksums its record lists. A snapshot that is missing, unreadable or of
 * another format only means the start scans in full, as before there was one.
 */
import { readFile } from 'node:fs/promises';
import { writeFileAtomically } from '../storage/durable-files.ts';
import { isJsonObject, type JsonObject } from '../storage/json-files.ts';
import { isValidName, isValidVersion } from './adapter-names.ts';
import { servableVersion, type AdapterCatalog, type AdapterState } from './adapter-catalog.ts';
import { manifestFromJson, type Manifest } from './manifest.ts';
import { errorCode } from './store-files.ts';
import type { StoreLayout } from './store-layout.ts';

/** Beside the tenants' directories; a dot-name is never a tenant, so scans pass it by. */
export const CATALOG_SNAPSHOT_FILE = '.catalog.json';
/** Written into the file; a snapshot of any other format is ignored (the start scans in full and writes a new one). */
const SNAPSHOT_FORMAT = 1;

interface SnapshotVersion {
  version: string;
  publishedAt: string;
  files: JsonObject;
  summary: unknown;
  fingerprint: string;
}

interface SnapshotAdapter {
  tenant: string;
  adapter: string;
  public: boolean;
  visibilityFingerprint: string;
  versions: SnapshotVersion[];
}

export class CatalogSnapshot<Summary> {
  /** The catalog's revision when it was last saved or restored. */
  private savedRevision = -1;

  constructor(
    private readonly layout: StoreLayout,
    private readonly catalog: AdapterCatalog<Summary>,
    /** The store's acceptance of a manifest's summary; a version whose summary it refuses is left to the scan. */
    private readonly readSummary: (value: unknown) => Summary | undefined,
  ) {}

  private get path(): string {
    return this.layout.pathInside(CATALOG_SNAPSHOT_FILE);
  }

  /**
   * Fills the empty catalog from the saved snapshot: the number of versions restored, or null when there is no
   * usable snapshot (the caller scans in full). Entries that do not pass the checks a manifest passes are skipped.
   */
  async restore(): Promise<number | null> {
    // Only into a catalog that knows nothing yet: what this process learned itself is newer than any snapshot.
    if (this.catalog.revision !== 0) return null;
    let parsed: unknown;
    try {
      parsed = JSON.parse(await readFile(this.path, 'utf8'));
    } catch (err) {
      // Absent, or cut short by a crash (the write is atomic, but not every file system keeps a rename's data).
      if (errorCode(err) === 'ENOENT' || err instanceof SyntaxError) return null;
      throw err;
    }
    if (!isJsonObject(parsed) || parsed.format !== SNAPSHOT_FORMAT || !Array.isArray(parsed.adapters)) return null;
    let restored = 0;
    for (const entry of parsed.adapters as unknown[]) restored += this.restoreAdapter(entry);
    this.savedRevision = this.catalog.revision;
    return restored;
  }

  /** Writes the catalog's servable versions, unless nothing changed since the last save or restore. */
  async save(): Promise<void> {
    const revision = this.catalog.revision;
    if (revision === this.savedRevision) return;
    const adapters: SnapshotAdapter[] = [];
    for (const state of this.catalog.states()) {
      const versions: SnapshotVersion[] = [];
      for (const known of state.versions.values()) {
        if (known.kind !== 'servable') continue;
        const { version, publishedAt, files, summary } = known.record;
        versions.push({ version, publishedAt, files, summary, fingerprint: known.fingerprint });
      }
      if (versions.length === 0) continue;
      const { tenant, adapter, isPublic, visibilityFingerprint } = state;
      adapters.push({ tenant, adapter, public: isPublic, visibilityFingerprint, versions });
    }
    await writeFileAtomically(this.path, JSON.stringify({ format: SNAPSHOT_FORMAT, adapters }), this.layout.stagingDir);
    this.savedRevision = revision;
  }

  private restoreAdapter(entry: unknown): number {
    if (!isJsonObject(entry) || !Array.isArray(entry.versions)) return 0;
    const { tenant, adapter, visibilityFingerprint } = entry;
    if (typeof tenant !== 'string' || typeof adapter !== 'string' || !isValidName(tenant) || !isValidName(adapter)) return 0;
    if (typeof visibilityFingerprint !== 'string') return 0;
    const state = this.catalog.adapterState(tenant, adapter);
    state.isPublic = entry.public === true;
    state.visibilityFingerprint = visibilityFingerprint;
    let restored = 0;
    for (const version of entry.versions as unknown[]) {
      if (this.restoreVersion(state, version)) restored++;
    }
    return restored;
  }

  private restoreVersion(state: AdapterState<Summary>, entry: unknown): boolean {
    if (!isJsonObject(entry) || typeof entry.version !== 'string' || !isValidVersion(entry.version)) return false;
    if (typeof entry.fingerprint !== 'string') return false;
    let manifest: Manifest;
    try {
      manifest = manifestFromJson(entry, entry.version);
    } catch {
      return false;
    }
    const summary = this.readSummary(manifest.summary);
    if (summary === undefined) return false;
    const path = this.layout.pathInside(state.tenant, state.adapter, entry.version);
    const restored = servableVersion(state, entry.version, path, manifest, summary);
    restored.fingerprint = entry.fingerprint;
    this.catalog.apply(state, entry.version, restored);
    return true;
  }
}

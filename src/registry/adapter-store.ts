/**
 * The disk tier of the adapter registry: versioned PEFT adapter directories under ADAPTERS_DIR, published
 * atomically (staging directory + rename), discovered without restart when another process publishes, and never
 * served half-written. The layout and the publish protocol are described in README.md beside this file.
 *
 * This is the facade the gateway uses; the work is done by the catalog (what is known, in memory), the scanner
 * (disk → catalog), the verifier (may a version be served) and the publisher (every change on disk). Validation of
 * the adapter's content is injected (`validate`), so the store knows files and directories only.
 */
import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import { checkAdapterRef, checkTenantName } from './adapter-names.ts';
import {
  AdapterCatalog,
  type AdapterRecord,
  type AdapterStoreEvents,
  type InvalidAdapterVersion,
} from './adapter-catalog.ts';
import { AdapterPublisher } from './adapter-publisher.ts';
import { CatalogSnapshot } from './catalog-snapshot.ts';
import { StoreLayout } from './store-layout.ts';
import { StoreScanner } from './store-scanner.ts';
import { MANIFEST_FILE, MAX_MANIFEST_BYTES, parseManifest, sameFiles, type FileDigest } from './manifest.ts';
import { asError, errorMessage, readdirIfPresent, readSmallFile } from './store-files.ts';
import { VersionVerifier } from './version-verifier.ts';

export { StoreError } from './adapter-names.ts';
export { AlteredFileError } from './version-verifier.ts';
export type { AdapterRecord, AdapterStoreEvents, AdapterVersionRef, InvalidAdapterVersion } from './adapter-catalog.ts';
export { ADAPTER_README_FILE, MANIFEST_FILE, type FileDigest, type Manifest } from './manifest.ts';

export interface AdapterStoreOptions<Summary> {
  /** ADAPTERS_DIR; created if missing. */
  root: string;
  /**
   * Checks a complete adapter directory and returns a JSON-serialisable summary (stored in the manifest).
   * Throws to refuse it; the error reaches the publisher unchanged. The summary must not mention `dir`: it is a
   * staging directory when called from `publish`.
   */
  validate: (dir: string) => Promise<Summary>;
  /**
   * Accepts the summary a version's manifest carries (returns it typed) or refuses it (undefined: the validator
   * runs instead). Accepting lets listing trust the manifest without reading weights; whoever loads the files
   * must then verify their checksums (`files` of the record). Without it every version is validated when first
   * seen, which reads its weights.
   */
  readSummary?: (value: unknown) => Summary | undefined;
  /** Period of the rescan that finds versions published by other processes. Default 2000 ms. */
  rescanIntervalMs?: number;
  /**
   * Entries of `.staging/` untouched for this long are leftovers of a crashed publisher and are deleted; younger
   * ones may belong to a publisher in another process that is still writing. Default one hour.
   */
  stagingMaxAgeMs?: number;
}

export class AdapterStore<Summary = unknown> extends EventEmitter<AdapterStoreEvents<Summary>> {
  readonly root: string;
  private readonly layout: StoreLayout;
  private readonly rescanIntervalMs: number;
  private readonly catalog: AdapterCatalog<Summary>;
  private readonly scanner: StoreScanner<Summary>;
  private readonly publisher: AdapterPublisher<Summary>;
  private readonly snapshot: CatalogSnapshot<Summary>;

  /** Serialises scans and every change to the catalog, so a scan never acts on a listing older than a change. */
  private tail: Promise<unknown> = Promise.resolve();
  private queuedScan?: Promise<void>;
  /** The first full scan since start(): what `fullyListed()` waits for. */
  private firstScan: Promise<void> = Promise.resolve();
  private timer?: NodeJS.Timeout;
  private running = false;

  constructor(options: AdapterStoreOptions<Summary>) {
    super();
    const layout = new StoreLayout(options.root);
    this.layout = layout;
    this.root = layout.root;
    this.rescanIntervalMs = options.rescanIntervalMs ?? 2000;
    this.catalog = new AdapterCatalog(this);
    const readSummary = options.readSummary ?? (() => undefined);
    this.snapshot = new CatalogSnapshot(layout, this.catalog, readSummary);
    // Staging directories of publishes in progress here, which the sweep must not delete whatever their age.
    const activeStaging = new Set<string>();
    this.scanner = new StoreScanner({
      layout,
      catalog: this.catalog,
      verifier: new VersionVerifier(layout, options.validate, readSummary),
      events: this,
      activeStaging,
      stagingMaxAgeMs: options.stagingMaxAgeMs ?? 60 * 60 * 1000,
    });
    this.publisher = new AdapterPublisher({
      layout,
      catalog: this.catalog,
      validate: options.validate,
      activeStaging,
      exclusive: (work) => this.exclusive(work),
    });
  }

  /**
   * Lists the store, then rescans every `rescanIntervalMs` until `stop()`. The listing comes from the catalog
   * snapshot the last scan saved when there is one (catalog-snapshot.ts), and a full scan that checks it against the
   * disk (and sweeps stale staging leftovers) starts at once in the background; without a snapshot, start waits for
   * that scan. `refresh()` resolves once a scan has checked everything.
   */
  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      const restored = await this.exclusive(async () => {
        await this.layout.prepare();
        return this.snapshot.restore().catch((err) => {
          this.emit('scanFailed', new Error(`the catalog snapshot could not be read, so the store is scanned in full: ${errorMessage(err)}`));
          return null;
        });
      });
      const scanned = this.refresh();
      this.firstScan = scanned.catch((err) => {
        this.emit('scanFailed', asError(err));
      });
      if (!restored) await scanned;
    } catch (err) {
      this.running = false;
      throw err;
    }
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
      await this.scanner.scan();
      await this.saveSnapshot();
    });
    return this.queuedScan;
  }

  /**
   * Saves the catalog snapshot after a change this process made, before the change is acknowledged, so a restart
   * lists every version this gateway accepted. Only a started store saves: one that only publishes (a trainer
   * sidecar's) knows just its own versions, and its snapshot would hide the rest.
   */
  private async saveAfterChange(): Promise<void> {
    if (this.running) await this.exclusive(() => this.saveSnapshot());
  }

  private async saveSnapshot(): Promise<void> {
    await this.snapshot.save().catch((err) => {
      this.emit('scanFailed', new Error(`the catalog snapshot could not be saved (the next start scans in full): ${errorMessage(err)}`));
    });
  }

  /**
   * Resolves once the listing reflects a full scan since `start()`. A start from the catalog snapshot lists before
   * that scan has ended, and the snapshot may lack versions another process renamed into place just before a
   * crash, or while no gateway ran: listings that must show every version on disk wait for this first.
   */
  fullyListed(): Promise<void> {
    return this.firstScan;
  }

  /** Servable versions, of one tenant or of all, ordered by tenant, adapter, then from oldest to latest. */
  list(tenant?: string): AdapterRecord<Summary>[] {
    if (tenant !== undefined) checkTenantName(tenant);
    return this.catalog.list(tenant);
  }

  /** Version directories that are present but not served, with the reason. */
  listInvalid(tenant?: string): InvalidAdapterVersion[] {
    if (tenant !== undefined) checkTenantName(tenant);
    return this.catalog.listInvalid(tenant);
  }

  /** The given version, or the latest servable one; null when there is none. */
  resolve(tenant: string, adapter: string, version?: string): AdapterRecord<Summary> | null {
    checkAdapterRef({ tenant, adapter, version });
    return this.catalog.resolve(tenant, adapter, version);
  }

  /** A version on disk that cannot be served (see AdapterCatalog.unavailable), with its adapter's visibility. */
  unavailable(tenant: string, adapter: string, version?: string): { entry: InvalidAdapterVersion; public: boolean } | null {
    checkAdapterRef({ tenant, adapter, version });
    return this.catalog.unavailable(tenant, adapter, version);
  }

  /**
   * Reads a servable version's files and checks them against its manifest now, as a loader found them altered:
   * a mismatch makes the version invalid (event `invalid` with `alteredFile`) until its files change again.
   */
  async recheck(tenant: string, adapter: string, version: string): Promise<void> {
    checkAdapterRef({ tenant, adapter, version });
    await this.exclusive(() => this.scanner.recheck(tenant, adapter, version));
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
    checkAdapterRef({ tenant, adapter, version: options.version });
    const record = await this.publisher.publish(tenant, adapter, files, options.version);
    await this.saveAfterChange();
    return record;
  }

  /**
   * The version of `<tenant>/<adapter>` whose manifest lists exactly `files` (sizes and checksums), read from disk
   * rather than the catalog, so a publisher that does not scan (the trainer sidecar) can tell whether an attempt
   * of its own that a crash cut short had already published them. Null when no version does.
   */
  async findPublished(tenant: string, adapter: string, files: Record<string, FileDigest>): Promise<string | null> {
    checkAdapterRef({ tenant, adapter });
    const adapterDir = this.layout.pathInside(tenant, adapter);
    for (const entry of await readdirIfPresent(adapterDir)) {
      if (!entry.isDirectory()) continue;
      try {
        const text = await readSmallFile(join(adapterDir, entry.name, MANIFEST_FILE), MAX_MANIFEST_BYTES);
        if (text !== null && sameFiles(parseManifest(text, entry.name).files, files)) return entry.name;
      } catch {
        // Not a version this publisher wrote (unreadable or foreign manifest): not the one looked for.
      }
    }
    return null;
  }

  /** Removes one version, or the whole adapter (with its visibility) when no version is given. */
  async remove(tenant: string, adapter: string, version?: string): Promise<void> {
    checkAdapterRef({ tenant, adapter, version });
    await this.publisher.remove(tenant, adapter, version);
    await this.saveAfterChange();
  }

  /** Records whether other tenants may use the adapter; survives restarts. */
  async setPublic(tenant: string, adapter: string, isPublic: boolean): Promise<void> {
    checkAdapterRef({ tenant, adapter });
    await this.publisher.setPublic(tenant, adapter, isPublic);
    await this.saveAfterChange();
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

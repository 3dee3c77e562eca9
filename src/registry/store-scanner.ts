/**
 * Brings the catalog in line with the disk: lists tenants, adapters and versions, verifies versions whose files
 * changed since they were last seen, forgets what disappeared, and sweeps what crashed publishers and deletes left
 * behind in `.staging/` and `.trash/`.
 */
import type { EventEmitter } from 'node:events';
import type { Dirent } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { isValidName, isValidVersion, VISIBILITY_FILE } from './adapter-names.ts';
import {
  adapterKey,
  invalidVersion,
  type AdapterCatalog,
  type AdapterState,
  type AdapterStoreEvents,
  type ServableVersion,
} from './adapter-catalog.ts';
import { ADAPTER_FILES, fingerprintVersion, joinFingerprint, MANIFEST_FILE, servedFiles, statFiles } from './manifest.ts';
import { asError, errorMessage, newestMtime, readdirIfPresent, statFingerprint } from './store-files.ts';
import type { StoreLayout } from './store-layout.ts';
import { AlteredFileError, checkVersionFiles, type VersionVerifier } from './version-verifier.ts';

export interface StoreScannerOptions<Summary> {
  layout: StoreLayout;
  catalog: AdapterCatalog<Summary>;
  verifier: VersionVerifier<Summary>;
  events: EventEmitter<AdapterStoreEvents<Summary>>;
  /** Staging directories of publishes in progress in this process, which the sweep must not delete. */
  activeStaging: ReadonlySet<string>;
  /** Entries of `.staging/` untouched for this long are leftovers of a crashed publisher. */
  stagingMaxAgeMs: number;
}

/**
 * The file-system calls of a scan are synchronous (see store-files.ts); after this much work in one go the scan
 * lets the event loop run, so a scan of a large store delays requests by at most about this long.
 */
const SLICE_MS = 10;

/** A fingerprint no version directory has, so the version is verified again by the next scan. */
const CHECK_AGAIN = '';

/** Errors from the operating system (they carry an errno), as opposed to the store's verdicts on the files. */
function isSystemError(err: unknown): boolean {
  return typeof (err as NodeJS.ErrnoException | null)?.errno === 'number';
}

export class StoreScanner<Summary> {
  constructor(private readonly options: StoreScannerOptions<Summary>) {}

  async scan(): Promise<void> {
    const { layout, catalog, events } = this.options;
    await layout.prepare();
    await this.sweep().catch((err) => events.emit('scanFailed', asError(err)));
    const seen = new Set<string>();
    // An unreadable directory must not look like a deleted one: versions are only forgotten after a full listing.
    let complete = true;
    let sliceStart = performance.now();
    for (const tenantEntry of readdirIfPresent(layout.root)) {
      if (!tenantEntry.isDirectory() || !isValidName(tenantEntry.name)) continue;
      const tenant = tenantEntry.name;
      let adapterEntries: Dirent[];
      try {
        adapterEntries = readdirIfPresent(layout.pathInside(tenant));
      } catch (err) {
        complete = false;
        events.emit('scanFailed', asError(err));
        continue;
      }
      for (const adapterEntry of adapterEntries) {
        if (!adapterEntry.isDirectory() || !isValidName(adapterEntry.name)) continue;
        const adapter = adapterEntry.name;
        seen.add(adapterKey(tenant, adapter));
        try {
          await this.scanAdapter(tenant, adapter);
        } catch (err) {
          events.emit('scanFailed', asError(err));
        }
        if (performance.now() - sliceStart >= SLICE_MS) {
          await new Promise((resolve) => setImmediate(resolve));
          sliceStart = performance.now();
        }
      }
    }
    if (complete) catalog.forgetAllBut(seen);
  }

  private async scanAdapter(tenant: string, adapter: string): Promise<void> {
    const { layout, catalog } = this.options;
    const adapterDir = layout.pathInside(tenant, adapter);
    const state = catalog.adapterState(tenant, adapter);
    const entries = readdirIfPresent(adapterDir);
    catalog.readVisibility(state, adapterDir, entries.some((entry) => entry.name === VISIBILITY_FILE));
    const present = new Set<string>();
    for (const entry of entries) {
      const version = entry.name;
      if (!isValidVersion(version)) continue;
      const path = layout.pathInside(tenant, adapter, version);
      if (entry.isSymbolicLink()) {
        present.add(version);
        const error =
          `${path} is a symbolic link; the store serves only real directories inside ADAPTERS_DIR. ` +
          'Move the version directory itself into place instead.';
        catalog.apply(state, version, invalidVersion(state, version, path, 'symbolic-link', error));
      } else if (entry.isDirectory() && (await this.examineVersion(state, version, path))) {
        present.add(version);
      }
    }
    for (const version of [...state.versions.keys()]) if (!present.has(version)) catalog.forget(state, version);
  }

  /**
   * Verifies a version directory first seen, or whose files changed since it was last seen. False if it vanished
   * meanwhile. A known version costs a few lstat calls; a new one with a trusted manifest, reading that manifest
   * and an lstat per listed file; only the others get the full check.
   */
  private async examineVersion(state: AdapterState<Summary>, version: string, path: string): Promise<boolean> {
    const { catalog, verifier } = this.options;
    const known = state.versions.get(version);
    if (known?.kind === 'servable') {
      const names = servedFiles(known.record.files);
      if (joinFingerprint(statFiles(path, names), names) === known.fingerprint) return true;
    }
    if (known?.kind === 'invalid') {
      const current = fingerprintVersion(path);
      if (!current) return false;
      if (joinFingerprint(current) === known.fingerprint) return true;
    }
    let listed: ServableVersion<Summary> | null = null;
    try {
      listed = verifier.verifyListed(state, version, path);
    } catch {
      // The full check finds the same fault and records it against stats taken before it looked.
    }
    if (listed) {
      catalog.apply(state, version, listed);
      return true;
    }
    return this.examineInFull(state, version, path);
  }

  private async examineInFull(state: AdapterState<Summary>, version: string, path: string): Promise<boolean> {
    const { catalog, verifier } = this.options;
    const before = fingerprintVersion(path);
    if (!before) return false;
    let servable: ServableVersion<Summary>;
    try {
      const verified = await verifier.verify(state, version, path);
      servable = verified.state;
      if (!verified.readFiles) {
        // Only the manifest was read, just now: the stats taken before stand for what was checked. A file that
        // changed meanwhile has new ones, so the next scan checks the version again.
        servable.fingerprint = joinFingerprint(before, servedFiles(servable.record.files));
        catalog.apply(state, version, servable);
        return true;
      }
    } catch (err) {
      // Recorded against what was there before, so anything that changed meanwhile is checked again next scan. A
      // system error (a full disk while writing the manifest, a file that could not be read) says nothing about the
      // files themselves, so that version is checked again on every scan until it passes.
      const fingerprint = isSystemError(err) ? CHECK_AGAIN : joinFingerprint(before);
      const altered = err instanceof AlteredFileError ? err.file : undefined;
      catalog.apply(state, version, invalidVersion(state, version, path, fingerprint, errorMessage(err), altered));
      return true;
    }
    const after = fingerprintVersion(path);
    if (!after) return false;
    // A manifest may have appeared (written by adoption), but the files served must be exactly those verified.
    const changed =
      joinFingerprint(after, ADAPTER_FILES) !== joinFingerprint(before, ADAPTER_FILES) ||
      (before.get(MANIFEST_FILE) !== statFingerprint(null) && after.get(MANIFEST_FILE) !== before.get(MANIFEST_FILE));
    if (changed) {
      const error = 'files changed while being verified; they will be checked again once they stop changing';
      catalog.apply(state, version, invalidVersion(state, version, path, joinFingerprint(before), error));
    } else {
      servable.fingerprint = joinFingerprint(after, servedFiles(servable.record.files));
      catalog.apply(state, version, servable);
    }
    return true;
  }

  /** Checks a servable version's checksums now; a mismatch makes it invalid against its current fingerprint. */
  async recheck(tenant: string, adapter: string, version: string): Promise<void> {
    const { catalog } = this.options;
    const state = catalog.find(tenant, adapter);
    const known = state?.versions.get(version);
    if (!state || known?.kind !== 'servable') return;
    const { path, files } = known.record;
    const served = servedFiles(files);
    if (joinFingerprint(statFiles(path, served), served) !== known.fingerprint) {
      // The files changed since the version was listed (it was listed from a catalog snapshot older than the disk,
      // or a scan has not come by since): look at them as a scan would, rather than call them altered.
      if (!(await this.examineVersion(state, version, path))) catalog.forget(state, version);
      return;
    }
    const fingerprint = fingerprintVersion(path);
    if (!fingerprint) return;
    try {
      await checkVersionFiles(path, files);
    } catch (err) {
      const altered = err instanceof AlteredFileError ? err.file : undefined;
      catalog.apply(state, version, invalidVersion(state, version, path, joinFingerprint(fingerprint), errorMessage(err), altered));
    }
  }

  /** Deletes staging leftovers of crashed publishers and whatever a crash left in the trash. */
  private async sweep(): Promise<void> {
    const { layout, activeStaging, stagingMaxAgeMs } = this.options;
    const now = Date.now();
    for (const entry of readdirIfPresent(layout.stagingDir)) {
      const path = join(layout.stagingDir, entry.name);
      if (activeStaging.has(path)) continue;
      const touched = await newestMtime(path);
      if (touched !== null && now - touched >= stagingMaxAgeMs) await rm(path, { recursive: true, force: true });
    }
    for (const entry of readdirIfPresent(layout.trashDir)) {
      await rm(join(layout.trashDir, entry.name), { recursive: true, force: true });
    }
  }
}

/**
 * Decides whether a version directory may be listed as servable without reading its weights: it stays inside
 * ADAPTERS_DIR, its manifest is valid, and every listed file is a regular file of the listed size. The summary comes
 * from the manifest when `readSummary` accepts it, else from the validator. Checksums are verified by whoever reads
 * the files to serve them (the engine's adapter loader, on first load), so start-up does not grow with the store.
 *
 * A directory without a manifest is checked in full (checksums computed, validator run) and adopted: the verifier
 * writes its manifest.
 */
import { realpathSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomically } from '../storage/durable-files.ts';
import { StoreError } from './adapter-names.ts';
import { servableVersion, type AdapterState, type VersionState } from './adapter-catalog.ts';
import {
  ADAPTER_FILES,
  MANIFEST_FILE,
  MAX_MANIFEST_BYTES,
  missingRequiredFile,
  REQUIRED_FILES_TEXT,
  parseManifest,
  serializeManifest,
  type Manifest,
} from './manifest.ts';
import { digestFile, isInside, lstatIfPresent, readSmallFile, type FileDigest } from './store-files.ts';
import type { StoreLayout } from './store-layout.ts';

/** A file of a published version no longer matches its manifest: altered after publishing. */
export class AlteredFileError extends StoreError {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super('invalid_file', message);
  }
}

export class VersionVerifier<Summary> {
  constructor(
    private readonly layout: StoreLayout,
    private readonly validate: (dir: string) => Promise<Summary>,
    /** The summary a manifest carries, if it is well-formed and acceptable to this server; else undefined. */
    private readonly readSummary: (value: unknown) => Summary | undefined,
  ) {}

  /**
   * The servable state of the version directory, and whether it was found by reading more than the manifest
   * (adopted, or checked by the validator); throws what is wrong with it.
   */
  async verify(state: AdapterState<Summary>, version: string, path: string): Promise<{ state: VersionState<Summary>; readFiles: boolean }> {
    const real = realpathSync.native(path);
    if (!isInside(this.layout.realRoot, real)) {
      throw new StoreError('unsafe_path', `${path} resolves to ${real}, outside ADAPTERS_DIR; it is not served`);
    }
    const manifestText = readSmallFile(join(path, MANIFEST_FILE), MAX_MANIFEST_BYTES);
    if (manifestText === null) return { state: await this.adopt(state, version, path), readFiles: true };
    const manifest = parseManifest(manifestText, version);
    for (const [name, expected] of Object.entries(manifest.files)) {
      const info = lstatIfPresent(join(path, name));
      if (info === null) {
        throw new StoreError('invalid_file', `${name} is listed in ${MANIFEST_FILE} but missing; publish it again`);
      }
      if (info.isSymbolicLink()) {
        throw new StoreError('unsafe_path', `${join(path, name)} is a symbolic link; put the file itself in the version directory`);
      }
      if (!info.isFile()) throw new StoreError('invalid_file', `${join(path, name)} is not a regular file`);
      if (info.size !== expected.size) {
        throw new AlteredFileError(
          name,
          `${name} does not match ${MANIFEST_FILE} (size ${info.size}; listed size ${expected.size}): it changed after ` +
            `publishing. Publish a new version, or delete ${MANIFEST_FILE} to have the directory checked and adopted ` +
            'as it is now.',
        );
      }
    }
    const trusted = this.readSummary(manifest.summary);
    const summary = trusted ?? (await this.validate(path));
    return { state: servableVersion(state, version, path, manifest, summary), readFiles: trusted === undefined };
  }

  /** A version directory without a manifest (placed by hand or by an external publisher): check it and write one. */
  private async adopt(state: AdapterState<Summary>, version: string, path: string): Promise<VersionState<Summary>> {
    const files: Record<string, FileDigest> = {};
    for (const name of ADAPTER_FILES) {
      const digest = await digestFile(join(path, name));
      if (digest) files[name] = digest;
    }
    const missing = missingRequiredFile((name) => name in files);
    if (missing) {
      throw new StoreError('invalid_file', `${missing} is missing; a version directory needs ${REQUIRED_FILES_TEXT}, and ${MANIFEST_FILE} once complete`);
    }
    const summary = await this.validate(path);
    const manifest: Manifest<Summary> = { version, publishedAt: new Date().toISOString(), files, summary };
    await writeFileAtomically(join(path, MANIFEST_FILE), serializeManifest(manifest), this.layout.stagingDir);
    return servableVersion(state, version, path, manifest, summary);
  }
}

/**
 * Reads every file a version's manifest lists and checks its size and checksum: what a loader does the first time
 * it reads a version listed without reading its weights. Throws AlteredFileError naming the first file that differs.
 */
export async function checkVersionFiles(dir: string, files: Readonly<Record<string, FileDigest>>): Promise<void> {
  for (const [name, expected] of Object.entries(files)) {
    const actual = await digestFile(join(dir, name));
    if (actual === null) throw new AlteredFileError(name, `${name} is listed in ${MANIFEST_FILE} but missing`);
    if (actual.size !== expected.size || actual.sha256 !== expected.sha256) {
      throw new AlteredFileError(
        name,
        `${name} does not match ${MANIFEST_FILE} (size ${actual.size}, sha256 ${actual.sha256}; listed size ` +
          `${expected.size}, sha256 ${expected.sha256}): it changed after publishing`,
      );
    }
  }
}

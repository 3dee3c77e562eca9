/**
 * Decides whether a version directory may be listed as servable without reading its weights: its manifest is valid,
 * every listed file is a regular file of the listed size, and the server accepts the summary the manifest carries
 * (`verifyListed`). Checksums are verified by whoever reads the files to serve them (the engine's adapter loader, on
 * first load), so start-up does not grow with the weights in the store.
 *
 * Any other directory gets the full check (`verify`): it resolves inside ADAPTERS_DIR, and the validator runs on
 * its files; a directory without a manifest has its checksums computed and is adopted (the verifier writes its
 * manifest).
 */
import { realpathSync, type Stats } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomically } from '../storage/durable-files.ts';
import { StoreError } from './adapter-names.ts';
import { servableVersion, type AdapterState, type ServableVersion } from './adapter-catalog.ts';
import {
  ADAPTER_FILES,
  joinFingerprint,
  MANIFEST_FILE,
  MAX_MANIFEST_BYTES,
  missingRequiredFile,
  REQUIRED_FILES_TEXT,
  parseManifest,
  serializeManifest,
  servedFiles,
  type Manifest,
} from './manifest.ts';
import {
  digestBytes,
  digestFile,
  fileIn,
  isInside,
  lstatIfPresent,
  readSmallFile,
  readRegularFile,
  readSmallFileWithStats,
  statFingerprint,
  type FileDigest,
} from './store-files.ts';
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
   * The servable state of a version from its manifest alone, fingerprinted by the stats this check took (the
   * manifest's as it was read, the listed files' as their sizes were compared), so whatever changes after is
   * checked again by the next scan. Null when the version needs the full check: it has no manifest, or the server
   * does not accept the manifest's summary. Throws what is wrong with it.
   *
   * It does not resolve the path: the scanner reaches a version directory only through entries listed as real
   * directories (never links) below ADAPTERS_DIR's resolved root, and lstat refuses a linked file.
   */
  verifyListed(state: AdapterState<Summary>, version: string, path: string): ServableVersion<Summary> | null {
    const read = readSmallFileWithStats(fileIn(path, MANIFEST_FILE), MAX_MANIFEST_BYTES);
    if (read === null) return null;
    const manifest = parseManifest(read.text, version);
    const summary = this.readSummary(manifest.summary);
    if (summary === undefined) return null;
    const stats = new Map([[MANIFEST_FILE, statFingerprint(read.info)]]);
    for (const [name, expected] of Object.entries(manifest.files)) {
      stats.set(name, statFingerprint(checkListedFile(path, name, expected)));
    }
    const listed = servableVersion(state, version, path, manifest, summary);
    listed.fingerprint = joinFingerprint(stats, servedFiles(manifest.files));
    return listed;
  }

  /**
   * The full check: the servable state of the version directory, and whether it was found by reading more than the
   * manifest (adopted, or checked by the validator); throws what is wrong with it.
   */
  async verify(state: AdapterState<Summary>, version: string, path: string): Promise<{ state: ServableVersion<Summary>; readFiles: boolean }> {
    const real = realpathSync.native(path);
    if (!isInside(this.layout.realRoot, real)) {
      throw new StoreError('unsafe_path', `${path} resolves to ${real}, outside ADAPTERS_DIR; it is not served`);
    }
    const manifestText = readSmallFile(join(path, MANIFEST_FILE), MAX_MANIFEST_BYTES);
    if (manifestText === null) return { state: await this.adopt(state, version, path), readFiles: true };
    const manifest = parseManifest(manifestText, version);
    for (const [name, expected] of Object.entries(manifest.files)) checkListedFile(path, name, expected);
    const trusted = this.readSummary(manifest.summary);
    const summary = trusted ?? (await this.validate(path));
    return { state: servableVersion(state, version, path, manifest, summary), readFiles: trusted === undefined };
  }

  /** A version directory without a manifest (placed by hand or by an external publisher): check it and write one. */
  private async adopt(state: AdapterState<Summary>, version: string, path: string): Promise<ServableVersion<Summary>> {
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

/** The lstat of a file a manifest lists, once it is known to be a regular file of the listed size. */
function checkListedFile(dir: string, name: string, expected: FileDigest): Stats {
  const info = lstatIfPresent(fileIn(dir, name));
  if (info === null) {
    throw new StoreError('invalid_file', `${name} is listed in ${MANIFEST_FILE} but missing; publish it again`);
  }
  if (info.isSymbolicLink()) {
    throw new StoreError('unsafe_path', `${join(dir, name)} is a symbolic link; put the file itself in the version directory`);
  }
  if (!info.isFile()) throw new StoreError('invalid_file', `${join(dir, name)} is not a regular file`);
  if (info.size !== expected.size) {
    throw new AlteredFileError(
      name,
      `${name} does not match ${MANIFEST_FILE} (size ${info.size}; listed size ${expected.size}): it changed after ` +
        `publishing. Publish a new version, or delete ${MANIFEST_FILE} to have the directory checked and adopted ` +
        'as it is now.',
    );
  }
  return info;
}

/**
 * Reads every file a version's manifest lists and checks its size and checksum: what a loader does the first time
 * it reads a version listed without reading its weights. Throws AlteredFileError naming the first file that differs.
 */
export async function checkVersionFiles(dir: string, files: Readonly<Record<string, FileDigest>>): Promise<void> {
  for (const [name, expected] of Object.entries(files)) checkDigest(name, await digestFile(join(dir, name)), expected);
}

/**
 * checkVersionFiles, keeping what it read: each listed file's bytes by name, exactly the bytes whose checksums
 * matched, so whoever parses them next parses what was verified (and does not read the files again).
 */
export async function readVersionFiles(dir: string, files: Readonly<Record<string, FileDigest>>): Promise<Map<string, Buffer>> {
  const contents = new Map<string, Buffer>();
  for (const [name, expected] of Object.entries(files)) {
    const bytes = await readRegularFile(join(dir, name));
    checkDigest(name, bytes && digestBytes(bytes), expected);
    contents.set(name, bytes!);
  }
  return contents;
}

function checkDigest(name: string, actual: FileDigest | null, expected: FileDigest): void {
  if (actual === null) throw new AlteredFileError(name, `${name} is listed in ${MANIFEST_FILE} but missing`);
  if (actual.size !== expected.size || actual.sha256 !== expected.sha256) {
    throw new AlteredFileError(
      name,
      `${name} does not match ${MANIFEST_FILE} (size ${actual.size}, sha256 ${actual.sha256}; listed size ` +
        `${expected.size}, sha256 ${expected.sha256}): it changed after publishing`,
    );
  }
}

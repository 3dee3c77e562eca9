/**
 * Decides whether a version directory may be served: it stays inside ADAPTERS_DIR, its manifest is valid, every
 * listed file has the listed size and checksum, and the injected validator accepts the directory. A directory
 * without a manifest is checked and adopted: the verifier writes its manifest.
 */
import { realpath } from 'node:fs/promises';
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
import { digestFile, isInside, readSmallFile, type FileDigest } from './store-files.ts';
import type { StoreLayout } from './store-layout.ts';

export class VersionVerifier<Summary> {
  constructor(
    private readonly layout: StoreLayout,
    private readonly validate: (dir: string) => Promise<Summary>,
  ) {}

  /** The servable state of the version directory; throws what is wrong with it. */
  async verify(state: AdapterState<Summary>, version: string, path: string): Promise<VersionState<Summary>> {
    const real = await realpath(path);
    if (!isInside(this.layout.realRoot, real)) {
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

/**
 * Tenant, adapter and version names, and the public id `<tenant>/<adapter>[@<version>]` built from them.
 *
 * Names become path segments under ADAPTERS_DIR, so the rules are what keeps them safe there: tenant and adapter
 * names have no dots at all (no `..`, no hidden files), and a version must start with a letter or digit (never `.`
 * or `..`). Everything a caller supplies is checked here before the store builds a path from it.
 */

export type StoreErrorCode =
  /** A tenant, adapter or version name, or a public id, breaks the naming rules. */
  | 'invalid_name'
  /** An uploaded file is not one the store accepts (wrong name, pickled weights, a path). */
  | 'invalid_file'
  /** The version already exists. */
  | 'conflict'
  /** No such adapter or version. */
  | 'not_found'
  /** A path resolved outside ADAPTERS_DIR; only reachable through a bug, kept as a last line of defence. */
  | 'unsafe_path';

export class StoreError extends Error {
  readonly code: StoreErrorCode;

  constructor(code: StoreErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreError';
    this.code = code;
  }
}

/** A tenant's adapter, optionally pinned to one version (without one it means the latest). */
export interface AdapterRef {
  tenant: string;
  adapter: string;
  version?: string;
}

const NAME_PATTERN = /^[a-z0-9][a-z0-9_-]{0,63}$/;
const VERSION_PATTERN = /^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$/;

/** The adapter directory holds this file beside its version directories, so no version may take its name. */
export const VISIBILITY_FILE = 'visibility.json';

export function isValidName(name: string): boolean {
  return NAME_PATTERN.test(name);
}

export function isValidVersion(version: string): boolean {
  return VERSION_PATTERN.test(version) && version !== VISIBILITY_FILE;
}

function checkName(kind: 'tenant' | 'adapter', name: string): void {
  if (!isValidName(name)) {
    throw new StoreError(
      'invalid_name',
      `${kind} name ${JSON.stringify(name)} is not allowed: use 1 to 64 lowercase letters, digits, "-" or "_", ` +
        'starting with a letter or digit',
    );
  }
}

function checkVersion(version: string): void {
  if (version === VISIBILITY_FILE) {
    throw new StoreError('invalid_name', `version name "${VISIBILITY_FILE}" is reserved; choose another version name`);
  }
  if (!VERSION_PATTERN.test(version)) {
    throw new StoreError(
      'invalid_name',
      `version ${JSON.stringify(version)} is not allowed: use 1 to 64 letters, digits, ".", "-" or "_", ` +
        'starting with a letter or digit',
    );
  }
}

/** Throws a StoreError('invalid_name') unless `name` is a valid tenant name. */
export function checkTenantName(name: string): void {
  checkName('tenant', name);
}

/** Throws a StoreError('invalid_name') naming the first part of the reference that breaks the rules. */
export function checkAdapterRef(ref: AdapterRef): void {
  checkName('tenant', ref.tenant);
  checkName('adapter', ref.adapter);
  if (ref.version !== undefined) checkVersion(ref.version);
}

/** Parses `<tenant>/<adapter>` or `<tenant>/<adapter>@<version>`. */
export function parseAdapterId(id: string): AdapterRef {
  const parts = /^([^/@]+)\/([^/@]+)(?:@([^/@]+))?$/.exec(id);
  if (!parts) {
    throw new StoreError(
      'invalid_name',
      `adapter id ${JSON.stringify(id)} is malformed: write it as <tenant>/<adapter> or <tenant>/<adapter>@<version>`,
    );
  }
  const [, tenant, adapter, version] = parts;
  const ref: AdapterRef = version === undefined ? { tenant, adapter } : { tenant, adapter, version };
  checkAdapterRef(ref);
  return ref;
}

export function formatAdapterId(ref: AdapterRef): string {
  checkAdapterRef(ref);
  const base = `${ref.tenant}/${ref.adapter}`;
  return ref.version === undefined ? base : `${base}@${ref.version}`;
}

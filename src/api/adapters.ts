/**
 * The adapter registry over HTTP: tenants upload, list, inspect and delete their adapters under
 * `/v1/adapters/<tenant>/<adapter>`; admins may act on every tenant and decide which adapters are public.
 *
 * Isolation rules: a tenant reading another tenant's private adapter gets exactly the 404 a nonexistent adapter
 * gets, so names never leak; a tenant writing into another tenant's namespace gets 403 whatever exists there.
 * Responses never carry filesystem paths.
 */
import type { Context, Hono, MiddlewareHandler } from 'hono';
import { AdapterError } from '../adapters/adapter-error.ts';
import { ADAPTER_WEIGHTS_FILES } from '../adapters/adapter.ts';
import { ADAPTER_CONFIG_FILE } from '../adapters/peft-config.ts';
import type { Principal } from '../gateway/auth.ts';
import { ApiError, invalidRequest, notFound, permissionDenied } from '../gateway/errors.ts';
import { engineRef, type AdapterSummary } from '../gateway/model-resolver.ts';
import type { GatewayEnv, GatewayServices } from '../gateway/services.ts';
import { checkAdapterRef, formatAdapterId, StoreError, type AdapterRef, type StoreErrorCode } from '../registry/adapter-names.ts';
import { ADAPTER_README_FILE, type AdapterRecord, type InvalidAdapterVersion } from '../registry/adapter-store.ts';
import { readMultipartForm } from './multipart.ts';

type VersionRecord = AdapterRecord<AdapterSummary>;

const UPLOAD_FILES = [ADAPTER_CONFIG_FILE, ...ADAPTER_WEIGHTS_FILES, ADAPTER_README_FILE];
const UPLOAD_HELP =
  `Upload multipart/form-data with the files ${ADAPTER_CONFIG_FILE} and ${ADAPTER_WEIGHTS_FILES.join(' (PEFT) or ')} (AdapterHub) (optionally ` +
  `${ADAPTER_README_FILE}), each in a field named after the file or in a "file" field carrying that file name, and ` +
  'optionally a "version" field.';
/** Fields that carry a file under its own file name, as generic upload forms and clients send them. */
const GENERIC_FILE_FIELDS = new Set(['file', 'file[]', 'files', 'files[]']);

export function registerAdapterRoutes(app: Hono<GatewayEnv>, services: GatewayServices): void {
  const { store, models, engine } = services;

  // Listings show every version on disk, including those a start from the catalog snapshot has not checked yet.
  const fullyListed: MiddlewareHandler<GatewayEnv> = async (_c, next) => {
    await store.fullyListed();
    await next();
  };
  for (const path of ['/v1/adapters', '/v1/adapters/*', '/admin/adapters', '/admin/adapters/*']) app.use(path, fullyListed);

  const versionView = (record: VersionRecord) => ({
    object: 'adapter.version' as const,
    id: record.id,
    tenant: record.tenant,
    adapter: record.adapter,
    version: record.version,
    /** What to send as `model` to use this adapter (its latest version). */
    model: models.modelId(record),
    publishedAt: record.publishedAt,
    files: record.files,
    summary: record.summary,
    public: record.public,
  });

  /** One adapter with its servable versions, oldest first (the store's order). */
  const adapterView = (ref: AdapterRef, versions: VersionRecord[], isPublic: boolean) => {
    const latest = store.resolve(ref.tenant, ref.adapter)?.version ?? null;
    const id = formatAdapterId({ tenant: ref.tenant, adapter: ref.adapter });
    return {
      object: 'adapter' as const,
      id,
      tenant: ref.tenant,
      adapter: ref.adapter,
      model: `${models.baseName}+${id}`,
      public: isPublic,
      latestVersion: latest,
      versions: versions.map((record) => ({
        id: record.id,
        version: record.version,
        model: models.modelId(record, true),
        publishedAt: record.publishedAt,
        files: record.files,
        summary: record.summary,
        latest: record.version === latest,
      })),
    };
  };

  const groupedViews = (records: VersionRecord[]) => {
    const groups = new Map<string, VersionRecord[]>();
    for (const record of records) {
      const key = formatAdapterId({ tenant: record.tenant, adapter: record.adapter });
      groups.set(key, [...(groups.get(key) ?? []), record]);
    }
    return [...groups.values()].map((versions) => adapterView(versions[0], versions, versions[0].public));
  };

  /** The adapter's servable versions if the caller may see it; otherwise the same 404 as for a missing adapter. */
  const visibleVersions = (principal: Principal, ref: AdapterRef): VersionRecord[] => {
    const versions = store.list(ref.tenant).filter((record) => record.adapter === ref.adapter);
    if (versions.length === 0 || !models.canUse(principal, versions[0])) throw adapterNotFound(ref);
    return versions;
  };

  const pathRef = (c: Context<GatewayEnv>, withVersion = false): AdapterRef => {
    const ref: AdapterRef = { tenant: c.req.param('tenant') ?? '', adapter: c.req.param('adapter') ?? '' };
    if (withVersion) ref.version = c.req.param('version') ?? '';
    try {
      checkAdapterRef(ref);
    } catch (err) {
      throw apiErrorFromStore(err, ref, store.root);
    }
    return ref;
  };

  app.post('/v1/adapters/:tenant/:adapter', async (c) => {
    const ref = pathRef(c);
    requireWriteAccess(c.get('principal'), ref);
    const { files, version } = await readUpload(c);
    const record = await callStore(() => store.publish(ref.tenant, ref.adapter, files, { version }), ref, store.root);
    // Its first request then reads a slot layout made now (layout-cache.ts). DoRA's layout needs the base model's
    // session, so it is made at first use and never kept on disk.
    if (record.summary.family !== 'dora') engine.prepareLayout(engineRef(record));
    return c.json(versionView(record), 201);
  });

  app.get('/v1/adapters', (c) => {
    const principal = c.get('principal');
    return c.json({ object: 'list', data: groupedViews(store.list().filter((record) => models.canUse(principal, record))) });
  });

  app.get('/v1/adapters/:tenant/:adapter', (c) => {
    const ref = pathRef(c);
    const versions = visibleVersions(c.get('principal'), ref);
    return c.json(adapterView(ref, versions, versions[0].public));
  });

  app.delete('/v1/adapters/:tenant/:adapter', async (c) => {
    const ref = pathRef(c);
    requireWriteAccess(c.get('principal'), ref);
    await callStore(() => store.remove(ref.tenant, ref.adapter), ref, store.root);
    return c.json({ object: 'adapter', id: formatAdapterId(ref), deleted: true });
  });

  app.delete('/v1/adapters/:tenant/:adapter/versions/:version', async (c) => {
    const ref = pathRef(c, true);
    requireWriteAccess(c.get('principal'), ref);
    await callStore(() => store.remove(ref.tenant, ref.adapter, ref.version), ref, store.root);
    return c.json({ object: 'adapter.version', id: formatAdapterId(ref), deleted: true });
  });

  // The /admin/* middleware has already refused every key but an admin's.
  app.put('/admin/adapters/:tenant/:adapter/visibility', async (c) => {
    const ref = pathRef(c);
    const body: unknown = await c.req.json();
    const isPublic = (body as { public?: unknown } | null)?.public;
    if (typeof isPublic !== 'boolean') {
      throw invalidRequest('Send a JSON body {"public": true} or {"public": false}.', 'public', 'invalid_visibility');
    }
    await callStore(() => store.setPublic(ref.tenant, ref.adapter, isPublic), ref, store.root);
    const versions = store.list(ref.tenant).filter((record) => record.adapter === ref.adapter);
    return c.json(adapterView(ref, versions, isPublic));
  });

  app.get('/admin/adapters', (c) =>
    c.json({
      object: 'list',
      data: groupedViews(store.list()),
      invalid: store.listInvalid().map((entry) => invalidView(entry, store.root)),
    }),
  );
}

/** Writes go only to the caller's own namespace; the refusal is the same whether or not anything exists there. */
function requireWriteAccess(principal: Principal, ref: AdapterRef): void {
  if (principal.kind === 'admin' || principal.tenant.name === ref.tenant) return;
  throw permissionDenied(
    `Tenant "${principal.tenant.name}" may only change adapters under /v1/adapters/${principal.tenant.name}/.`,
  );
}

function adapterNotFound(ref: AdapterRef): ApiError {
  return notFound(
    `The adapter '${formatAdapterId(ref)}' does not exist or you do not have access to it.`,
    null,
    'adapter_not_found',
  );
}

async function readUpload(c: Context<GatewayEnv>): Promise<{ files: Map<string, Uint8Array>; version?: string }> {
  const form = await readMultipartForm(c, UPLOAD_HELP);
  const files = new Map<string, Uint8Array>();
  let version: string | undefined;
  for (const [field, value] of form) {
    if (field === 'version' && typeof value === 'string' && version === undefined) {
      version = value;
      continue;
    }
    if (typeof value === 'string') {
      throw invalidRequest(`Unexpected form field "${field}". ${UPLOAD_HELP}`, field, 'invalid_upload');
    }
    const name = uploadedFileName(field, value);
    if (files.has(name)) throw invalidRequest(`${name} was sent twice. ${UPLOAD_HELP}`, field, 'invalid_file');
    files.set(name, new Uint8Array(await value.arrayBuffer()));
  }
  return { files, version };
}

/**
 * The name the store gets: the field name, or the file's own name for a generic "file" field. Anything that looks
 * like a path is refused outright rather than reduced to a base name, since the client meant something else.
 */
function uploadedFileName(field: string, file: File): string {
  for (const name of [field, file.name]) {
    if (/[/\\\0]/.test(name) || name === '..' || name === '.') {
      throw invalidRequest(
        `The multipart file name ${JSON.stringify(name)} contains a path; send each file under its bare name ` +
          `(${UPLOAD_FILES.join(', ')}).`,
        field,
        'invalid_file',
      );
    }
  }
  return GENERIC_FILE_FIELDS.has(field) ? file.name : field;
}

function invalidView(entry: InvalidAdapterVersion, storeRoot: string) {
  return {
    id: entry.id,
    tenant: entry.tenant,
    adapter: entry.adapter,
    version: entry.version,
    error: withoutStorePaths(entry.error, storeRoot),
  };
}

async function callStore<T>(work: () => Promise<T>, ref: AdapterRef, storeRoot: string): Promise<T> {
  try {
    return await work();
  } catch (err) {
    throw apiErrorFromStore(err, ref, storeRoot);
  }
}

const STORE_ERROR_STATUS: Record<Exclude<StoreErrorCode, 'not_found'>, number> = {
  invalid_name: 400,
  invalid_file: 400,
  unsafe_path: 400,
  conflict: 409,
};

/** Store and adapter-validation failures become client errors; anything else stays a 500. */
function apiErrorFromStore(err: unknown, ref: AdapterRef, storeRoot: string): unknown {
  if (err instanceof StoreError) {
    // The same answer as for an adapter the caller may not see, so the two cannot be told apart.
    if (err.code === 'not_found') return adapterNotFound(ref);
    const message = withoutStorePaths(err.message, storeRoot);
    return new ApiError(STORE_ERROR_STATUS[err.code], 'invalid_request_error', message, { code: err.code });
  }
  if (err instanceof AdapterError) {
    return invalidRequest(`The adapter was refused: ${withoutStorePaths(err.message, storeRoot)}`, null, 'invalid_adapter');
  }
  return err;
}

/** Where the store lives on disk is the operator's business, so messages name it as the setting instead. */
function withoutStorePaths(message: string, storeRoot: string): string {
  return message.replaceAll(storeRoot, 'ADAPTERS_DIR');
}

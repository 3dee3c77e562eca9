/**
 * OpenAI's files API for fine-tuning datasets: `POST /v1/files` (multipart `file` + `purpose: fine-tune`),
 * `GET /v1/files`, `GET /v1/files/{id}`, `GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`.
 *
 * Files belong to the uploading tenant; another tenant's file answers the same 404 as a missing one. Admin keys see
 * every tenant's files but own none, so they cannot upload. Uploads are limited per file (MAX_FILE_BYTES, 413) and
 * per tenant (the tenant's `max_stored_bytes`, else MAX_STORED_BYTES_PER_TENANT; 413), and validated line by line as
 * a fine-tuning dataset.
 */
import type { Context, Hono } from 'hono';
import type { Principal } from '../gateway/auth.ts';
import type { TenantSettings, TrainingSettings } from '../gateway/config.ts';
import { ApiError, invalidRequest, notFound, permissionDenied } from '../gateway/errors.ts';
import type { GatewayEnv, GatewayServices } from '../gateway/services.ts';
import { DatasetError } from '../training/data/jsonl-examples.ts';
import type { StoredFile, TrainingFileStore } from '../training/jobs/file-store.ts';
import { isId, newestFirst } from '../training/jobs/training-dir.ts';
import { listPage } from './list-page.ts';
import { readMultipartForm } from './multipart.ts';

const UPLOAD_HELP = 'Upload multipart/form-data with a "file" field holding the JSONL dataset and a "purpose" field set to "fine-tune".';

export function registerFileRoutes(app: Hono<GatewayEnv>, services: GatewayServices): void {
  const { files } = services.training;
  const { maxFileBytes } = services.settings.training;

  app.post('/v1/files', async (c) => {
    const tenant = owningTenant(c.get('principal'));
    const { file, filename } = await readUpload(c);
    if (file.byteLength > maxFileBytes) throw fileTooLarge(`The file is larger than the limit of ${maxFileBytes} bytes.`);
    const used = await files.bytesUsed(tenant.name);
    const { maxStoredBytes } = trainingLimits(tenant, services.settings.training);
    if (used + file.byteLength > maxStoredBytes) {
      throw fileTooLarge(
        `Storing this file would take the tenant's files to ${used + file.byteLength} bytes, over the limit of ` +
          `${maxStoredBytes} bytes; delete files that are no longer needed.`,
      );
    }
    try {
      return c.json(fileView(await files.create(tenant.name, filename, file)));
    } catch (error) {
      if (error instanceof DatasetError || error instanceof TypeError) {
        throw invalidRequest(`The file is not a valid fine-tuning dataset: ${error.message}.`, 'file', 'invalid_file');
      }
      throw error;
    }
  });

  app.get('/v1/files', async (c) => {
    const purpose = c.req.query('purpose');
    const all = purpose === undefined || purpose === 'fine-tune' ? await visibleFiles(files, c.get('principal')) : [];
    const ordered = c.req.query('order') === 'asc' ? [...all].reverse() : all;
    return c.json(listPage(ordered.map(fileView), c.req.query('after'), c.req.query('limit'), 10_000));
  });

  app.get('/v1/files/:id', async (c) => c.json(fileView(await findFile(files, c.get('principal'), c.req.param('id')))));

  app.get('/v1/files/:id/content', async (c) => {
    const file = await findFile(files, c.get('principal'), c.req.param('id'));
    return c.body(await files.content(file), 200, { 'content-type': 'application/jsonl' });
  });

  app.delete('/v1/files/:id', async (c) => {
    const file = await findFile(files, c.get('principal'), c.req.param('id'));
    await files.remove(file);
    return c.json({ id: file.id, object: 'file', deleted: true });
  });
}

/** The file as OpenAI shows it (the owning tenant and validation notes are not part of it). */
function fileView(file: StoredFile) {
  const { tenant: _tenant, examples: _examples, format: _format, ...view } = file;
  return view;
}

export function owningTenant(principal: Principal): TenantSettings {
  if (principal.kind === 'admin') {
    throw permissionDenied('Admin keys see every tenant but own nothing; upload files and create jobs with a tenant key.');
  }
  return principal.tenant;
}

/** A tenant's fine-tuning limits: its own from the tenants file, else the deployment-wide settings. */
export function trainingLimits(tenant: TenantSettings, training: TrainingSettings): { maxActiveJobs: number; maxStoredBytes: number } {
  return {
    maxActiveJobs: tenant.limits.maxActiveJobs ?? training.maxActiveJobsPerTenant,
    maxStoredBytes: tenant.limits.maxStoredBytes ?? training.maxStoredBytesPerTenant,
  };
}

async function visibleFiles(files: TrainingFileStore, principal: Principal): Promise<StoredFile[]> {
  if (principal.kind === 'tenant') return files.list(principal.tenant.name);
  const all = (await Promise.all((await files.tenants()).map((tenant) => files.list(tenant)))).flat();
  return all.sort(newestFirst);
}

/** The caller's file (any tenant's for an admin); otherwise the 404 a missing file gets. */
export async function findFile(files: TrainingFileStore, principal: Principal, id: string, param: string | null = null): Promise<StoredFile> {
  if (isId(id, 'file')) {
    const tenants = principal.kind === 'tenant' ? [principal.tenant.name] : await files.tenants();
    for (const tenant of tenants) {
      const file = await files.get(tenant, id);
      if (file) return file;
    }
  }
  throw notFound(`No such File object: ${id}`, param, 'file_not_found');
}

async function readUpload(c: Context<GatewayEnv>): Promise<{ file: Uint8Array; filename: string }> {
  const form = await readMultipartForm(c, UPLOAD_HELP);
  const purpose = form.get('purpose');
  if (purpose !== 'fine-tune') {
    throw invalidRequest(`Invalid value for 'purpose': this server stores only "fine-tune" files. ${UPLOAD_HELP}`, 'purpose', 'invalid_value');
  }
  const file = form.get('file');
  if (file === null || typeof file === 'string') throw invalidRequest(`Missing required parameter: 'file'. ${UPLOAD_HELP}`, 'file');
  const filename = file.name.replace(/^.*[/\\]/, '').slice(0, 255) || 'upload.jsonl';
  return { file: new Uint8Array(await file.arrayBuffer()), filename };
}

function fileTooLarge(message: string): ApiError {
  return new ApiError(413, 'invalid_request_error', message, { param: 'file', code: 'file_too_large' });
}

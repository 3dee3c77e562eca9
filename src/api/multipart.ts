/** Multipart bodies of the upload routes (adapters, fine-tuning files): one parse, one error shape. */
import type { Context } from 'hono';
import { invalidRequest } from '../gateway/errors.ts';
import type { GatewayEnv } from '../gateway/services.ts';

/** The request's multipart form, or a 400 that repeats the route's upload instructions (`help`). */
export async function readMultipartForm(c: Context<GatewayEnv>, help: string): Promise<FormData> {
  const mediaType = c.req.header('content-type')?.split(';')[0].trim().toLowerCase();
  if (mediaType !== 'multipart/form-data') throw invalidRequest(help, null, 'invalid_upload');
  try {
    return await c.req.formData();
  } catch {
    throw invalidRequest(`The multipart body could not be parsed. ${help}`, null, 'invalid_upload');
  }
}

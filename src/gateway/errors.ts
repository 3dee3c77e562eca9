/**
 * Errors in the shape OpenAI clients parse: `{"error":{"message","type","param","code"}}`. Handlers throw an
 * ApiError; `installErrorHandlers` turns it (and anything else that escapes a handler) into that body, so no route
 * writes error JSON itself.
 */

import type { Context, Env, Hono } from 'hono';
import { HTTPException } from 'hono/http-exception';

export type ApiErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'permission_error'
  /** OpenAI names the limit a 429 hit: `requests` for concurrency, `tokens` for token budgets. */
  | 'requests'
  | 'tokens'
  | 'server_error';

export interface ApiErrorBody {
  error: { message: string; type: ApiErrorType; param: string | null; code: string | null };
}

export class ApiError extends Error {
  readonly status: number;
  readonly type: ApiErrorType;
  readonly param: string | null;
  readonly code: string | null;
  readonly headers: Readonly<Record<string, string>>;

  constructor(
    status: number,
    type: ApiErrorType,
    message: string,
    options: { param?: string | null; code?: string | null; headers?: Record<string, string>; cause?: unknown } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = 'ApiError';
    this.status = status;
    this.type = type;
    this.param = options.param ?? null;
    this.code = options.code ?? null;
    this.headers = options.headers ?? {};
  }
}

export function toResponseBody(err: ApiError): ApiErrorBody {
  return { error: { message: err.message, type: err.type, param: err.param, code: err.code } };
}

export function toResponse(err: ApiError): Response {
  return new Response(JSON.stringify(toResponseBody(err)), {
    status: err.status,
    headers: { 'content-type': 'application/json; charset=utf-8', ...err.headers },
  });
}

/** 400: the request itself is wrong; `param` names the offending field so clients can point at it. */
export function invalidRequest(message: string, param: string | null = null, code: string | null = null): ApiError {
  return new ApiError(400, 'invalid_request_error', message, { param, code });
}

/** 401. The message never echoes the presented key. */
export function invalidApiKey(
  message = 'Missing or invalid API key. Send it as "Authorization: Bearer <key>".',
  challenge = 'Bearer',
): ApiError {
  return new ApiError(401, 'authentication_error', message, {
    code: 'invalid_api_key',
    headers: { 'www-authenticate': challenge },
  });
}

/** 403: the caller is known but may not do this (a tenant calling an admin route, or using another tenant's adapter). */
export function permissionDenied(message: string): ApiError {
  return new ApiError(403, 'permission_error', message, { code: 'permission_denied' });
}

/** 404 for the `model` field, as OpenAI answers an unknown model. */
export function modelNotFound(model: string): ApiError {
  return new ApiError(404, 'invalid_request_error', `The model '${model}' does not exist or you do not have access to it.`, {
    param: 'model',
    code: 'model_not_found',
  });
}

/**
 * 503 for an adapter version that exists but cannot be served (its stored files changed after publishing, or it
 * never validated). Retrying does not help until it is published again, so clients are told not to retry.
 */
export function adapterUnavailable(model: string, reason: string): ApiError {
  return new ApiError(503, 'server_error', `The model '${model}' is unavailable: ${reason}`, {
    param: 'model',
    code: 'adapter_unavailable',
    headers: { 'x-should-retry': 'false' },
  });
}

/** 404 for anything else that does not exist (an adapter version, a route). */
export function notFound(message: string, param: string | null = null, code: string | null = null): ApiError {
  return new ApiError(404, 'invalid_request_error', message, { param, code });
}

/** 413. `limitBytes` is stated so the client knows how far to shrink. */
export function payloadTooLarge(limitBytes: number): ApiError {
  return new ApiError(413, 'invalid_request_error', `Request body is larger than the limit of ${limitBytes} bytes.`, {
    code: 'request_too_large',
  });
}

/**
 * 429. A refusal that waiting cannot cure (`retryable: false`) carries `x-should-retry: false`, which OpenAI clients
 * obey instead of retrying blindly. The parameter's shape matches a tenant-limit refusal, so one can be passed as is.
 */
export function rateLimited(refusal: {
  limit: 'concurrency' | 'tokens_per_minute';
  message: string;
  retryAfterSeconds?: number;
  retryable: boolean;
}): ApiError {
  const headers: Record<string, string> = {};
  if (refusal.retryAfterSeconds !== undefined) headers['retry-after'] = String(refusal.retryAfterSeconds);
  if (!refusal.retryable) headers['x-should-retry'] = 'false';
  return new ApiError(429, refusal.limit === 'concurrency' ? 'requests' : 'tokens', refusal.message, {
    code: 'rate_limit_exceeded',
    headers,
  });
}

/** Seconds a client refused during shutdown should wait; by then a replacement instance is usually up. */
const SHUTDOWN_RETRY_AFTER_SECONDS = 5;

/** 503 while draining: this instance starts no new work, another one (or this one after a restart) will. */
export function shuttingDown(message = 'The server is shutting down and starts no new generations; retry the request.'): ApiError {
  return overloaded(SHUTDOWN_RETRY_AFTER_SECONDS, message);
}

/** 503: the whole server is saturated (its queue is full), not one tenant over its limit. */
export function overloaded(retryAfterSeconds: number, message = 'The server is overloaded; retry later.'): ApiError {
  return new ApiError(503, 'server_error', message, {
    code: 'overloaded',
    headers: { 'retry-after': String(retryAfterSeconds) },
  });
}

/** Errno codes of a write the filesystem refused for lack of room: a full disk, a quota, a file-size limit. */
const NO_ROOM_CODES = new Set(['ENOSPC', 'EDQUOT', 'EFBIG']);
/** Errno codes of storage the server may not change at all: permissions, a read-only filesystem. */
const NO_ACCESS_CODES = new Set(['EACCES', 'EPERM', 'EROFS']);

/**
 * 507 (WebDAV's Insufficient Storage: the server, not the request, lacks room) or 503 for a write the server's own
 * storage refused. Stores write into a staging area and publish by rename, so a refused write leaves nothing
 * behind; retrying does not help until an operator frees space or fixes the storage, hence `x-should-retry: false`.
 * Undefined for any other error.
 */
export function storageFailure(err: unknown): ApiError | undefined {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  if (code === undefined) return undefined;
  const options = { headers: { 'x-should-retry': 'false' }, cause: err };
  if (NO_ROOM_CODES.has(code)) {
    const message = 'The server has no storage space left for this (disk full or over quota); nothing was saved. Retry once space was freed.';
    return new ApiError(507, 'server_error', message, { ...options, code: 'insufficient_storage' });
  }
  if (NO_ACCESS_CODES.has(code)) {
    const message = 'The server cannot write to its storage (read-only or permission denied); nothing was saved.';
    return new ApiError(503, 'server_error', message, { ...options, code: 'storage_unavailable' });
  }
  return undefined;
}

/** 500 with a fixed message: internal details belong in the server log, not in the response. */
export function internalError(cause?: unknown): ApiError {
  return new ApiError(500, 'server_error', 'The server had an internal error while processing the request.', { cause });
}

export interface ErrorHandlerOptions {
  /**
   * Receives what caused each 500 (a bug, usually) and each refused storage write (507/503, for the operator to
   * act on); defaults to writing its stack to stderr.
   */
  logUnexpected?: (err: unknown, request: { method: string; path: string }) => void;
  /** Sees every error answer, for counting by status and code. */
  onErrorAnswer?: (error: ApiError) => void;
}

function logToStderr(err: unknown, request: { method: string; path: string }): void {
  const detail = err instanceof Error ? (err.stack ?? err.message) : String(err);
  console.error(`unexpected error in ${request.method} ${request.path}: ${detail}`);
}

/** Hono's own middleware (validators, bearerAuth) reports problems as HTTPExceptions. */
function fromHttpException(err: HTTPException): ApiError {
  if (err.status >= 500) return internalError(err);
  if (err.status === 401) return invalidApiKey();
  return new ApiError(err.status, 'invalid_request_error', err.message || 'The request is invalid.');
}

/** Maps whatever a handler threw to the ApiError the client will see. */
export function asApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof HTTPException) return fromHttpException(err);
  // `c.req.json()` throws a bare SyntaxError for an unparsable body; its message quotes the body, so it is not echoed.
  if (err instanceof SyntaxError) return invalidRequest('The request body is not valid JSON.', null, 'invalid_json');
  return storageFailure(err) ?? internalError(err);
}

export function installErrorHandlers<E extends Env>(app: Hono<E>, options: ErrorHandlerOptions = {}): void {
  const logUnexpected = options.logUnexpected ?? logToStderr;
  app.onError((err, c: Context<E>) => {
    const apiError = asApiError(err);
    // Only the method and path are logged: bodies and query strings may carry prompts or credentials.
    if (apiError.status === 500 || storageFailure(apiError.cause)) {
      logUnexpected(apiError.cause ?? err, { method: c.req.method, path: c.req.path });
    }
    options.onErrorAnswer?.(apiError);
    return toResponse(apiError);
  });
  app.notFound((c: Context<E>) => {
    const apiError = notFound(`Unknown route ${c.req.method} ${c.req.path}.`, null, 'unknown_route');
    options.onErrorAnswer?.(apiError);
    return toResponse(apiError);
  });
}

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { HTTPException } from 'hono/http-exception';
import OpenAI from 'openai';
import {
  ApiError,
  installErrorHandlers,
  internalError,
  invalidApiKey,
  invalidRequest,
  modelNotFound,
  notFound,
  overloaded,
  payloadTooLarge,
  permissionDenied,
  rateLimited,
  toResponseBody,
} from '../src/gateway/errors.ts';
import { TenantLimiter } from '../src/gateway/tenant-limits.ts';

function appThrowing(logged: unknown[] = []) {
  const app = new Hono();
  installErrorHandlers(app, { logUnexpected: (err, request) => logged.push({ err, request }) });
  app.get('/invalid', () => {
    throw invalidRequest('temperature must be between 0 and 2', 'temperature');
  });
  app.get('/unauthenticated', () => {
    throw invalidApiKey();
  });
  app.get('/forbidden', () => {
    throw permissionDenied('Admin key required.');
  });
  app.get('/no-model', () => {
    throw modelNotFound('acme/missing');
  });
  app.get('/no-adapter-version', () => {
    throw notFound('Adapter acme/support has no version 7.', 'model', 'adapter_version_not_found');
  });
  app.get('/too-large', () => {
    throw payloadTooLarge(1024);
  });
  app.get('/rate-limited', () => {
    throw rateLimited({ limit: 'tokens_per_minute', message: 'Slow down.', retryAfterSeconds: 12, retryable: true });
  });
  app.get('/never-fits', () => {
    const refusal = new TenantLimiter({ maxConcurrentRequests: 1, tokensPerMinute: 100 }).admit(101);
    assert.ok(!refusal.ok);
    throw rateLimited(refusal);
  });
  app.get('/busy', () => {
    throw rateLimited({ limit: 'concurrency', message: 'Too many.', retryAfterSeconds: 1, retryable: true });
  });
  app.get('/overloaded', () => {
    throw overloaded(5);
  });
  app.get('/bug', () => {
    throw new TypeError('cannot read properties of undefined (secret internals)');
  });
  app.get('/wrapped-bug', () => {
    throw internalError(new Error('disk on fire'));
  });
  app.get('/http-exception', () => {
    throw new HTTPException(400, { message: 'Malformed JSON in request body' });
  });
  app.get('/http-exception-401', () => {
    throw new HTTPException(401, { message: 'Unauthorized' });
  });
  app.get('/http-exception-500', () => {
    throw new HTTPException(500, { message: 'database password is hunter2' });
  });
  app.post('/json', async (c) => c.json(await c.req.json()));
  app.post(
    '/limited',
    bodyLimit({
      maxSize: 16,
      onError: () => {
        throw payloadTooLarge(16);
      },
    }),
    async (c) => c.text(await c.req.text()),
  );
  return app;
}

const INVALID_API_KEY = {
  message: /Missing or invalid API key/,
  type: 'authentication_error',
  param: null,
  code: 'invalid_api_key',
};

async function expectError(
  response: Response,
  status: number,
  error: { message: string | RegExp; type: string; param: string | null; code: string | null },
  headers: Record<string, string | null> = {},
): Promise<void> {
  assert.equal(response.status, status);
  assert.match(response.headers.get('content-type') ?? '', /^application\/json/);
  const body = await response.json();
  assert.deepEqual(Object.keys(body), ['error']);
  assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type']);
  const { message, ...rest } = body.error;
  if (typeof error.message === 'string') assert.equal(message, error.message);
  else assert.match(message, error.message);
  const { message: _, ...expectedRest } = error;
  assert.deepEqual(rest, expectedRest);
  for (const [name, value] of Object.entries(headers)) assert.equal(response.headers.get(name), value, name);
}

test('client errors answer in the OpenAI shape with their status, type, param and code', async () => {
  const app = appThrowing();
  await expectError(await app.request('/invalid'), 400, {
    message: 'temperature must be between 0 and 2',
    type: 'invalid_request_error',
    param: 'temperature',
    code: null,
  });
  await expectError(
    await app.request('/unauthenticated'),
    401,
    INVALID_API_KEY,
    { 'www-authenticate': 'Bearer' },
  );
  await expectError(await app.request('/forbidden'), 403, {
    message: 'Admin key required.',
    type: 'permission_error',
    param: null,
    code: 'permission_denied',
  });
  await expectError(await app.request('/no-model'), 404, {
    message: "The model 'acme/missing' does not exist or you do not have access to it.",
    type: 'invalid_request_error',
    param: 'model',
    code: 'model_not_found',
  });
  await expectError(await app.request('/no-adapter-version'), 404, {
    message: 'Adapter acme/support has no version 7.',
    type: 'invalid_request_error',
    param: 'model',
    code: 'adapter_version_not_found',
  });
  await expectError(await app.request('/too-large'), 413, {
    message: 'Request body is larger than the limit of 1024 bytes.',
    type: 'invalid_request_error',
    param: null,
    code: 'request_too_large',
  });
});

test('rate limits carry Retry-After, and x-should-retry: false only when waiting cannot help', async () => {
  const app = appThrowing();
  await expectError(
    await app.request('/rate-limited'),
    429,
    { message: 'Slow down.', type: 'tokens', param: null, code: 'rate_limit_exceeded' },
    { 'retry-after': '12', 'x-should-retry': null },
  );
  await expectError(
    await app.request('/busy'),
    429,
    { message: 'Too many.', type: 'requests', param: null, code: 'rate_limit_exceeded' },
    { 'retry-after': '1', 'x-should-retry': null },
  );
  await expectError(
    await app.request('/never-fits'),
    429,
    { message: /can never be admitted/, type: 'tokens', param: null, code: 'rate_limit_exceeded' },
    { 'retry-after': null, 'x-should-retry': 'false' },
  );
  await expectError(
    await app.request('/overloaded'),
    503,
    { message: 'The server is overloaded; retry later.', type: 'server_error', param: null, code: 'overloaded' },
    { 'retry-after': '5' },
  );
});

test('unexpected errors answer 500 with a generic message and are logged with method and path only', async () => {
  const logged: { err: unknown; request: unknown }[] = [];
  const app = appThrowing(logged);
  const generic = {
    message: 'The server had an internal error while processing the request.',
    type: 'server_error',
    param: null,
    code: null,
  };
  await expectError(await app.request('/bug?token=abc'), 500, generic);
  await expectError(await app.request('/wrapped-bug'), 500, generic);
  await expectError(await app.request('/http-exception-500'), 500, generic);
  assert.equal(logged.length, 3);
  assert.match(String(logged[0].err), /secret internals/);
  assert.deepEqual(logged[0].request, { method: 'GET', path: '/bug' });
  assert.match(String(logged[1].err), /disk on fire/);
  assert.match(String((logged[2].err as Error).message), /hunter2/);
});

test('expected errors are not logged as failures', async () => {
  const logged: unknown[] = [];
  const app = appThrowing(logged);
  for (const path of ['/invalid', '/no-model', '/rate-limited', '/overloaded']) await app.request(path);
  assert.deepEqual(logged, []);
});

test('malformed JSON and Hono HTTP exceptions answer in the OpenAI shape with their status', async () => {
  const app = appThrowing();
  const malformed = await app.request('/json', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: '{"model": "acme", ',
  });
  await expectError(malformed, 400, {
    message: 'The request body is not valid JSON.',
    type: 'invalid_request_error',
    param: null,
    code: 'invalid_json',
  });
  await expectError(await app.request('/http-exception'), 400, {
    message: 'Malformed JSON in request body',
    type: 'invalid_request_error',
    param: null,
    code: null,
  });
  await expectError(
    await app.request('/http-exception-401'),
    401,
    INVALID_API_KEY,
    { 'www-authenticate': 'Bearer' },
  );
  const wellFormed = await app.request('/json', { method: 'POST', body: '{"ok":true}' });
  assert.deepEqual(await wellFormed.json(), { ok: true });
});

test("Hono's body limit can answer 413 in the OpenAI shape", async () => {
  const app = appThrowing();
  const response = await app.request('/limited', { method: 'POST', body: 'x'.repeat(17) });
  await expectError(response, 413, {
    message: 'Request body is larger than the limit of 16 bytes.',
    type: 'invalid_request_error',
    param: null,
    code: 'request_too_large',
  });
  assert.equal(await (await app.request('/limited', { method: 'POST', body: 'small' })).text(), 'small');
});

test('an unknown route answers 404 in the OpenAI shape', async () => {
  await expectError(await appThrowing().request('/v1/nowhere?x=1', { method: 'DELETE' }), 404, {
    message: 'Unknown route DELETE /v1/nowhere.',
    type: 'invalid_request_error',
    param: null,
    code: 'unknown_route',
  });
});

test('toResponseBody gives exactly the four OpenAI fields', () => {
  const err = new ApiError(400, 'invalid_request_error', 'bad n', { param: 'n', code: 'invalid_value', headers: { a: 'b' } });
  assert.deepEqual(toResponseBody(err), {
    error: { message: 'bad n', type: 'invalid_request_error', param: 'n', code: 'invalid_value' },
  });
});

test('the OpenAI client reads the error fields and does not retry a request that can never fit', async () => {
  const app = appThrowing();
  let attempts = 0;
  app.post('/v1/chat/completions', () => {
    attempts += 1;
    const refusal = new TenantLimiter({ maxConcurrentRequests: 1, tokensPerMinute: 100 }).admit(101);
    assert.ok(!refusal.ok);
    throw rateLimited(refusal);
  });
  const server = serve({ fetch: app.fetch, hostname: '127.0.0.1', port: 0 });
  try {
    await once(server, 'listening');
    const { port } = server.address() as AddressInfo;
    const client = new OpenAI({ apiKey: 'sk-test', baseURL: `http://127.0.0.1:${port}/v1`, maxRetries: 2 });
    await assert.rejects(
      client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: 101 }),
      (error: unknown) => {
        assert.ok(error instanceof OpenAI.RateLimitError);
        assert.equal(error.status, 429);
        assert.equal(error.code, 'rate_limit_exceeded');
        assert.equal(error.type, 'tokens');
        assert.match(error.message, /can never be admitted/);
        return true;
      },
    );
    assert.equal(attempts, 1);
  } finally {
    server.close();
  }
});

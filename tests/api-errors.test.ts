import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI, { APIError } from 'openai';
import { SseStream } from '../src/api/sse.ts';
import { overloaded } from '../src/gateway/errors.ts';
import { stepUntilStreaming } from './support/engine-steps.ts';
import { BASE_MODEL, KEYS, startTestGateway, type TestGateway } from './support/gateway.ts';

/** Tight limits, so that every refusal can be provoked with small requests. */
const MAX_BODY_BYTES = 1024;
/** Below the context length (512), so a request can fit the context yet never the token budget. */
const TOKENS_PER_MINUTE = 480;
/** Fits the token budget and runs long enough (about a second) to overlap a second request. */
const LONG_GENERATION = 450;
const USER_PROMPT = [{ role: 'user' as const, content: 'Once upon a time' }];

let gateway: TestGateway;
let client: OpenAI;

before(async () => {
  gateway = await startTestGateway({ maxConcurrentRequests: 1, tokensPerMinute: TOKENS_PER_MINUTE }, { MAX_BODY_BYTES: String(MAX_BODY_BYTES) });
  client = gateway.client();
});

after(() => gateway.stop());

async function expectApiError<E extends APIError>(
  request: Promise<unknown>,
  errorClass: new (...args: never[]) => E,
  expected: { status: number; param?: string | null; code?: string | null; type?: string },
): Promise<E> {
  let caught: unknown;
  await request.catch((error: unknown) => (caught = error));
  assert.ok(caught instanceof errorClass, `expected ${errorClass.name}, got ${String(caught)}`);
  const error = caught as E;
  const actual = { status: error.status, param: error.param, code: error.code, type: error.type };
  assert.deepEqual(
    Object.fromEntries(Object.keys(expected).map((key) => [key, actual[key as keyof typeof actual]])),
    expected,
    error.message,
  );
  return error;
}

/** A POST with a hand-made body, to send what the official client never would. */
async function post(path: string, body: string) {
  const response = await fetch(`${gateway.url}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${KEYS.acme}`, 'content-type': 'application/json' },
    body,
  });
  return { status: response.status, headers: response.headers, body: await response.json() };
}

describe('invalid chat requests are refused naming the parameter', () => {
  const cases: [string, Record<string, unknown>, string, string][] = [
    ['tools', { tools: [{ type: 'function', function: { name: 'lookup' } }] }, 'tools', 'unsupported_parameter'],
    ['logit_bias', { logit_bias: { '50': 5 } }, 'logit_bias', 'unsupported_parameter'],
    ['a JSON response format', { response_format: { type: 'json_object' } }, 'response_format', 'unsupported_parameter'],
    ['a misspelt field', { temprature: 0.5 }, 'temprature', 'unknown_parameter'],
    ['n above the limit', { n: 100 }, 'n', 'invalid_value'],
    ['a temperature above 2', { temperature: 5 }, 'temperature', 'invalid_value'],
    ['top_p of 0', { top_p: 0 }, 'top_p', 'invalid_value'],
    ['a negative max_tokens', { max_tokens: -1 }, 'max_tokens', 'invalid_value'],
    ['a fractional seed', { seed: 1.5 }, 'seed', 'invalid_value'],
    ['five stop sequences', { stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop', null as never],
    ['an empty stop sequence', { stop: ['a', ''] }, 'stop[1]', 'invalid_value'],
    ['top_logprobs without logprobs', { top_logprobs: 2 }, 'top_logprobs', null as never],
    ['stream_options without stream', { stream_options: { include_usage: true } }, 'stream_options', null as never],
    ['messages that are not an array', { messages: 'Once upon a time' }, 'messages', 'invalid_value'],
    ['no messages', { messages: [] }, 'messages', null as never],
    [
      'an image content part',
      { messages: [{ role: 'user', content: [{ type: 'text', text: 'Look:' }, { type: 'image_url', image_url: { url: 'https://example.com/cat.png' } }] }] },
      'messages[0].content[1].type',
      'unsupported_parameter',
    ],
    ['a tool message', { messages: [{ role: 'tool', content: '42', tool_call_id: 'call_1' }] }, 'messages[0].role', 'unsupported_parameter'],
    ['an unknown role', { messages: [{ role: 'narrator', content: 'Once' }] }, 'messages[0].role', 'invalid_value'],
    ['no model', { model: undefined }, 'model', null as never],
  ];
  for (const [name, fields, param, code] of cases) {
    test(name, async () => {
      const request = { model: BASE_MODEL, messages: USER_PROMPT, max_tokens: 4, ...fields };
      await expectApiError(client.chat.completions.create(request as never), OpenAI.BadRequestError, {
        status: 400,
        param,
        code,
        type: 'invalid_request_error',
      });
    });
  }
});

describe('invalid completions requests are refused naming the parameter', () => {
  const cases: [string, Record<string, unknown>, string][] = [
    ['echo', { echo: true }, 'echo'],
    ['best_of above 1', { best_of: 2 }, 'best_of'],
    ['more than 5 logprobs', { logprobs: 6 }, 'logprobs'],
    ['several prompts', { prompt: ['Once', 'Twice'] }, 'prompt'],
    ['a token id outside the vocabulary', { prompt: [1, 99999] }, 'prompt[1]'],
    ['a chat-only field', { max_completion_tokens: 4 }, 'max_completion_tokens'],
  ];
  for (const [name, fields, param] of cases) {
    test(name, async () => {
      const request = { model: BASE_MODEL, prompt: 'Once upon a time', max_tokens: 4, ...fields };
      await expectApiError(client.completions.create(request as never), OpenAI.BadRequestError, { status: 400, param });
    });
  }
});

describe('malformed and oversized bodies', () => {
  test('malformed JSON is a 400 in the OpenAI error shape', async () => {
    const response = await post('/v1/chat/completions', '{"model": "stories260K-hf", "messages": [');
    assert.equal(response.status, 400);
    assert.deepEqual(response.body, {
      error: { message: 'The request body is not valid JSON.', type: 'invalid_request_error', param: null, code: 'invalid_json' },
    });
  });

  test('a JSON body that is not an object is a 400', async () => {
    const response = await post('/v1/completions', '["Once upon a time"]');
    assert.equal(response.status, 400);
    assert.equal(response.body.error.type, 'invalid_request_error');
    assert.equal(response.body.error.code, 'invalid_json');
    assert.match(response.body.error.message, /must be a JSON object/);
  });

  test('a body over MAX_BODY_BYTES is a 413', async () => {
    const body = JSON.stringify({ model: BASE_MODEL, messages: [{ role: 'user', content: 'x'.repeat(MAX_BODY_BYTES) }] });
    const response = await post('/v1/chat/completions', body);
    assert.equal(response.status, 413);
    assert.equal(response.body.error.code, 'request_too_large');
  });
});

describe('model, key and limits', () => {
  test('an unknown model is a NotFoundError on the model parameter', async () => {
    await expectApiError(client.chat.completions.create({ model: 'gpt-4o', messages: USER_PROMPT }), OpenAI.NotFoundError, {
      status: 404,
      param: 'model',
      code: 'model_not_found',
    });
    await expectApiError(client.completions.create({ model: `${BASE_MODEL}+acme/missing`, prompt: 'Once' }), OpenAI.NotFoundError, {
      status: 404,
      code: 'model_not_found',
    });
  });

  test('a wrong API key is an AuthenticationError', async () => {
    await expectApiError(
      gateway.client('sk-wrong').chat.completions.create({ model: BASE_MODEL, messages: USER_PROMPT }),
      OpenAI.AuthenticationError,
      { status: 401, code: 'invalid_api_key' },
    );
  });

  test('a prompt plus max_tokens beyond the context is refused as context_length_exceeded', async () => {
    const maxPositions = gateway.services.engine.info.maxPositions;
    const error = await expectApiError(
      client.chat.completions.create({ model: BASE_MODEL, messages: USER_PROMPT, max_tokens: maxPositions }),
      OpenAI.BadRequestError,
      { status: 400, code: 'context_length_exceeded', param: 'messages' },
    );
    assert.match(error.message, new RegExp(`maximum context length is ${maxPositions} tokens`));
    // A stream refused before its first token answers with the status too, not with a 200 event stream.
    await expectApiError(
      client.chat.completions.create({ model: BASE_MODEL, messages: USER_PROMPT, max_tokens: maxPositions, stream: true }),
      OpenAI.BadRequestError,
      { status: 400, code: 'context_length_exceeded' },
    );
  });

  test('a request that can never fit tokens_per_minute is a 429 that must not be retried', async () => {
    const error = await expectApiError(
      client.chat.completions.create({ model: BASE_MODEL, messages: USER_PROMPT, max_tokens: TOKENS_PER_MINUTE }),
      OpenAI.RateLimitError,
      { status: 429, code: 'rate_limit_exceeded', type: 'tokens' },
    );
    assert.equal(error.headers?.get('x-should-retry'), 'false');
  });

  test('while the gateway drains, new generations are refused with 503', async () => {
    gateway.services.draining = true;
    try {
      const error = await expectApiError(
        client.completions.create({ model: BASE_MODEL, prompt: 'Once', max_tokens: 4 }),
        OpenAI.InternalServerError,
        { status: 503, type: 'server_error' },
      );
      assert.ok(error.headers?.get('retry-after'));
    } finally {
      gateway.services.draining = false;
    }
  });

  test('a second concurrent request over max_concurrent_requests is a RateLimitError with Retry-After', async () => {
    // The engine pauses once the first request runs: it is still running when the second arrives.
    const { engine } = gateway.services;
    engine.pause();
    const streaming = client.chat.completions.create({ model: BASE_MODEL, messages: USER_PROMPT, max_tokens: LONG_GENERATION, stream: true });
    await stepUntilStreaming(engine);
    const first = await streaming;
    try {
      const error = await expectApiError(
        client.chat.completions.create({ model: BASE_MODEL, messages: USER_PROMPT, max_tokens: 4 }),
        OpenAI.RateLimitError,
        { status: 429, code: 'rate_limit_exceeded', type: 'requests' },
      );
      assert.equal(error.headers?.get('retry-after'), '1');
      assert.equal(gateway.services.engine.pendingRequests, 1);
    } finally {
      first.controller.abort();
      engine.resume();
    }
  });
});

describe('errors in a stream that has begun', () => {
  test('are sent as one error event, and the stream ends without [DONE]', async () => {
    const sse = new SseStream(() => assert.fail('the stream was not cancelled'));
    sse.send({ choices: [] });
    sse.fail(overloaded(5, 'The server is shutting down.'));
    sse.send({ choices: ['after the end'] });
    assert.equal(
      await sse.response.text(),
      'data: {"choices":[]}\n\n' +
        'data: {"error":{"message":"The server is shutting down.","type":"server_error","param":null,"code":"overloaded"}}\n\n',
    );
  });

  test('a reader that goes away cancels the producer, and later events are dropped', async () => {
    let cancelled = 0;
    const sse = new SseStream(() => cancelled++);
    await sse.response.body?.cancel();
    sse.send({ choices: [] });
    sse.done();
    assert.equal(cancelled, 1);
  });
});

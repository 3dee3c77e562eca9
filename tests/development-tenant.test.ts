/**
 * Without a tenants file, `npm start` serves one development tenant, `local`. It may run as many requests at once
 * as the engine batches (MAX_BATCH_SIZE), so a load test with that many clients fills the batch instead of hearing
 * 429; one more is refused.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import OpenAI from 'openai';
import { stepUntilStreaming } from './support/engine-steps.ts';
import { BASE_MODEL, startTestGateway, type TestGateway } from './support/gateway.ts';

const MAX_BATCH_SIZE = 16;
const DEVELOPMENT_KEY = 'sk-local-dev';

let gateway: TestGateway;

before(async () => {
  // An empty GATEWAY_CONFIG counts as unset: the development keys and the `local` tenant serve.
  gateway = await startTestGateway({}, { GATEWAY_CONFIG: '', MAX_BATCH_SIZE: String(MAX_BATCH_SIZE) });
});

after(() => gateway.stop());

test('the local tenant runs MAX_BATCH_SIZE streams at once; one more is a 429', async () => {
  const client = gateway.client(DEVELOPMENT_KEY);
  const { engine } = gateway.services;
  engine.pause();
  const requests = Array.from({ length: MAX_BATCH_SIZE }, (_, i) =>
    client.completions.create({ model: BASE_MODEL, prompt: `Once upon a time ${i}`, max_tokens: 400, stream: true }),
  );
  // Every one of them gets a batch row and streams a token: none is refused or left waiting. A refusal rejects
  // Promise.all and fails the test at once instead of leaving the stepping to wait forever.
  await Promise.race([stepUntilStreaming(engine, MAX_BATCH_SIZE), Promise.all(requests)]);
  const streams = await Promise.all(requests);
  try {
    assert.equal(engine.streamingRequests, MAX_BATCH_SIZE);
    assert.equal(engine.pendingRequests, MAX_BATCH_SIZE);
    let refused: unknown;
    await client.completions.create({ model: BASE_MODEL, prompt: 'One more', max_tokens: 4 }).catch((error: unknown) => (refused = error));
    assert.ok(refused instanceof OpenAI.RateLimitError, `expected a 429, got ${String(refused)}`);
    assert.equal(refused.code, 'rate_limit_exceeded');
  } finally {
    for (const stream of streams) stream.controller.abort();
    engine.resume();
  }
});

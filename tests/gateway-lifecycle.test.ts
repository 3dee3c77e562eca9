import { after, before, test } from 'node:test';
import type OpenAI from 'openai';
import assert from 'node:assert/strict';
import { loraAdapterFiles, randomLoraAdapter } from '../src/adapters/lora-writer.ts';
import { stepUntilStreaming } from './support/engine-steps.ts';
import { BASE_MODEL, KEYS, startTestGateway, type TestGateway } from './support/gateway.ts';

let gateway: TestGateway;

before(async () => {
  gateway = await startTestGateway();
});

after(async () => {
  await gateway.stop();
});

test('health and readiness answer without credentials', async () => {
  assert.equal((await fetch(`${gateway.url}/health`)).status, 200);
  const ready = await fetch(`${gateway.url}/ready`);
  assert.equal(ready.status, 200);
  const body = await ready.json();
  assert.equal(body.model, BASE_MODEL);
  assert.equal(body.checksum, `sha256:${gateway.services.engine.info.checksum}`);
  assert.match(body.checksum, /^sha256:[0-9a-f]{64}$/);
});

test('a request shows up in vLLM-compatible metrics, per-tenant counters and a GenAI trace', async () => {
  const completion = await gateway.client().chat.completions.create({
    model: BASE_MODEL,
    messages: [{ role: 'user', content: 'Once upon a time' }],
    max_tokens: 6,
    temperature: 0,
  });
  const metrics = await (await fetch(`${gateway.url}/metrics`)).text();
  for (const name of ['vllm:num_requests_running', 'vllm:num_requests_waiting', 'vllm:kv_cache_usage_perc', 'vllm:lora_requests_info']) {
    assert.match(metrics, new RegExp(`^${name}\\{`, 'm'), name);
  }
  assert.match(metrics, new RegExp(`^vllm:generation_tokens_total\\{model_name="${BASE_MODEL}"\\} ${completion.usage!.completion_tokens}$`, 'm'));
  assert.match(metrics, /^vllm:request_success_total\{[^}]*finished_reason="length"[^}]*\} 1$/m);
  assert.match(metrics, /^gateway_requests_total\{[^}]*tenant="acme"[^}]*\} 1$/m);
  assert.match(metrics, /^vllm:time_to_first_token_seconds_count\{[^}]*\} 1$/m);

  const spans = gateway.traces.getFinishedSpans();
  const request = spans.find((s) => s.name === `chat ${BASE_MODEL}`);
  assert.ok(request, `spans: ${spans.map((s) => s.name).join(', ')}`);
  assert.equal(request.attributes['gen_ai.request.model'], BASE_MODEL);
  assert.equal(request.attributes['gen_ai.usage.input_tokens'], completion.usage!.prompt_tokens);
  assert.equal(request.attributes['gen_ai.usage.output_tokens'], completion.usage!.completion_tokens);
  assert.equal(request.attributes['gateway.tenant'], 'acme');
  const children = spans.filter((s) => s.parentSpanContext?.spanId === request.spanContext().spanId).map((s) => s.name).sort();
  assert.deepEqual(children, ['decode', 'prefill', 'queue']);
  // Nothing the user wrote ends up in a span.
  assert.ok(!JSON.stringify(spans.map((s) => s.attributes)).includes('Once upon a time'));
});

test('graceful shutdown lets an in-flight stream finish, refuses new work, then exits', async () => {
  const own = await startTestGateway();
  const { engine } = own.services;
  // The engine pauses once the stream has its first token, so it is still running however fast this machine is.
  engine.pause();
  const streaming = own.client().chat.completions.create({
    model: BASE_MODEL,
    messages: [{ role: 'user', content: 'Once upon a time' }],
    max_tokens: 60,
    temperature: 0,
    stream: true,
  });
  await stepUntilStreaming(engine);
  const chunks = (await streaming)[Symbol.asyncIterator]();
  const received = [((await chunks.next()).value as OpenAI.ChatCompletionChunk).choices[0]?.delta.content ?? ''];
  // A grace far longer than the stream can take: it is the stream's end, not the clock, that ends the wait.
  const closing = own.close(10 * 60_000);
  assert.equal(engine.pendingRequests, 1);
  const refused = await fetch(`${own.url}/v1/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${KEYS.acme}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: BASE_MODEL, prompt: 'Once upon a time', max_tokens: 2 }),
  }).catch((error: Error) => error);
  // Refused with 503, or not even connected once the listener has closed.
  if (!(refused instanceof Error)) {
    assert.equal(refused.status, 503);
    assert.match((await refused.json()).error.message, /shutting down/);
  }
  engine.resume();
  let finish: string | null = null;
  for await (const chunk of { [Symbol.asyncIterator]: () => chunks }) {
    received.push(chunk.choices[0]?.delta.content ?? '');
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  await closing;
  assert.ok(finish === 'length' || finish === 'stop', `finish_reason ${finish}`);
  assert.ok(received.join('').length > 0);
  await assert.rejects(fetch(`${own.url}/health`));
  await own.stop();
});

test('a shutdown that runs out of grace cancels in-flight streams cleanly', async () => {
  const own = await startTestGateway();
  const { engine } = own.services;
  // Paused once it has its first token, the generation cannot finish inside the grace on any machine.
  engine.pause();
  const responding = fetch(`${own.url}/v1/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${KEYS.acme}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: BASE_MODEL, prompt: 'Once upon a time', max_tokens: 400, temperature: 1, seed: 3, stream: true }),
  });
  await stepUntilStreaming(engine);
  const reader = (await responding).body!.getReader();
  await reader.read();
  const closing = own.close(300);
  let text = '';
  for (;;) {
    const { done, value } = await reader.read().catch(() => ({ done: true, value: undefined }));
    if (done) break;
    text += new TextDecoder().decode(value);
  }
  // The grace ran out with the generation still paused: the stream was cut, and closing the engine lets
  // the engine thread go on to retire it.
  await closing;
  assert.equal(engine.pendingRequests, 0);
  assert.ok(!text.includes('"finish_reason":"length"'), 'the stream was cut short, not completed');
  await own.stop();
});

test('vllm:lora_requests_info lists running adapters by the model ids clients send, pinned versions included', async () => {
  const spec = randomLoraAdapter(gateway.services.engine.info.config, { rank: 4, targetModules: ['q_proj', 'v_proj'], seed: 9 });
  const { version } = await gateway.services.store.publish('acme', 'storyteller', loraAdapterFiles(spec));
  const latest = `${BASE_MODEL}+acme/storyteller`;
  const pinned = `${latest}@${version}`;
  const { engine } = gateway.services;
  // Step the paused engine until both requests run in one batch (the second may join a step later), so the
  // metrics are read while both run however fast this machine is.
  engine.pause();
  const streams = [latest, pinned].map((model) =>
    gateway.client().completions.create({ model, prompt: 'Once upon a time', max_tokens: 300, temperature: 1, seed: 1, stream: true }),
  );
  try {
    await stepUntilStreaming(engine, 2);
    const info = /^vllm:lora_requests_info\{([^}]*)\}/m.exec(await (await fetch(`${gateway.url}/metrics`)).text())?.[1] ?? '';
    assert.match(info, /max_lora="4"/);
    assert.deepEqual((/running_lora_adapters="([^"]*)"/.exec(info)?.[1].split(',') ?? []).sort(), [latest, pinned].sort());
  } finally {
    engine.resume();
  }
  for (const stream of await Promise.all(streams)) for await (const chunk of stream) void chunk;
});

test('logs are JSON lines with request metadata and never the prompt, the output or the key', async () => {
  const lines: string[] = [];
  const own = await startTestGateway({}, { LOG_LEVEL: 'debug' }, (line) => lines.push(line));
  try {
    const secretPrompt = 'The dragon whispered a password: zebra-quartz';
    const reply = await own.client().chat.completions.create({
      model: BASE_MODEL,
      messages: [{ role: 'user', content: secretPrompt }],
      max_tokens: 8,
      temperature: 0,
    });
    await fetch(`${own.url}/health`);
    const records = lines.map((line) => JSON.parse(line));
    const access = records.find((r) => r.msg === 'request' && r.path === '/v1/chat/completions');
    assert.ok(access, lines.join('\n'));
    assert.equal(access.status, 200);
    assert.equal(access.tenant, 'acme');
    assert.equal(access.level, 'info');
    assert.ok(records.some((r) => r.msg === 'request' && r.path === '/health' && r.level === 'debug'));
    const everything = lines.join('\n');
    for (const secret of [secretPrompt, 'zebra-quartz', KEYS.acme, reply.choices[0].message.content!]) {
      assert.ok(!everything.includes(secret), `logs contain ${JSON.stringify(secret)}`);
    }
  } finally {
    await own.stop();
  }
});

test('if the engine thread dies, requests fail fast and health checks fail so the pod is restarted', async () => {
  const own = await startTestGateway();
  try {
    // A request the HTTP layer would never send (no prompt) crashes the engine thread's message handler.
    const crash = own.services.engine.generate({
      promptIds: null as unknown as number[],
      adapter: null,
      sampling: { temperature: 0, topP: 1, topK: 0, presencePenalty: 0, frequencyPenalty: 0 },
      maxTokens: 4,
      stopTokenIds: [],
    });
    await assert.rejects(crash, /engine thread/);
    assert.equal((await fetch(`${own.url}/health`)).status, 503);
    assert.equal((await fetch(`${own.url}/ready`)).status, 503);
    // Refused at once from the recorded failure: nothing is left waiting on the dead thread.
    await assert.rejects(
      own.client().chat.completions.create({ model: BASE_MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 }),
      (error: { status?: number }) => error.status === 500,
    );
    assert.equal(own.services.engine.pendingRequests, 0);
  } finally {
    await own.stop();
  }
});

test('a request carrying W3C trace context continues the caller\'s trace', async () => {
  const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
  const parentSpanId = '00f067aa0ba902b7';
  const client = gateway.client(KEYS.acme, { defaultHeaders: { traceparent: `00-${traceId}-${parentSpanId}-01` } });
  await client.completions.create({ model: BASE_MODEL, prompt: 'Once upon a time', max_tokens: 3, temperature: 0 });
  const span = gateway.traces.getFinishedSpans().find((s) => s.name === `text_completion ${BASE_MODEL}` && s.spanContext().traceId === traceId);
  assert.ok(span, 'the request span joined the caller\'s trace');
  assert.equal(span.parentSpanContext?.spanId, parentSpanId);
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { createTracing, type RequestSpanStart } from '../src/observability/tracing.ts';

const START: RequestSpanStart = {
  operation: 'chat',
  requestModel: 'stories260K+acme/support',
  tenant: 'acme',
  adapter: 'acme/support',
  maxTokens: 32,
  temperature: 0.7,
  topP: 0.9,
  seed: 42,
};

const OUTCOME = {
  responseId: 'chatcmpl-123',
  responseModel: 'stories260K+acme/support',
  finishReasons: ['stop'],
  usage: { inputTokens: 5, outputTokens: 12 },
};

function inMemoryTracing() {
  const exporter = new InMemorySpanExporter();
  return { exporter, tracing: createTracing({ serviceName: 'gateway-test', exporter }) };
}

/** The spans exported so far; shutting down afterwards because the in-memory exporter forgets them on shutdown. */
async function exportedSpans(tracing: { shutdown(): Promise<void> }, exporter: InMemorySpanExporter) {
  const spans = [...exporter.getFinishedSpans()];
  await tracing.shutdown();
  return spans;
}

function byName(spans: ReadableSpan[], name: string): ReadableSpan {
  const found = spans.filter((span) => span.name === name);
  assert.equal(found.length, 1, `expected one span named ${name}, got ${spans.map((s) => s.name).join(', ')}`);
  return found[0];
}

function seconds([secs, nanos]: [number, number]): number {
  return secs + nanos / 1e9;
}

function assertChildOf(child: ReadableSpan, parent: ReadableSpan): void {
  assert.equal(child.spanContext().traceId, parent.spanContext().traceId, `${child.name} shares the trace`);
  const parentId = child.parentSpanContext?.spanId;
  assert.equal(parentId, parent.spanContext().spanId, `${child.name} is a child of ${parent.name}`);
}

test('the request span follows the GenAI conventions', async () => {
  const { exporter, tracing } = inMemoryTracing();
  const request = tracing.startRequestSpan(START);
  request.finish(OUTCOME);
  const spans = await exportedSpans(tracing, exporter);
  assert.equal(spans.length, 1);
  const [span] = spans;
  assert.equal(span.name, 'chat stories260K+acme/support');
  assert.equal(span.kind, SpanKind.SERVER);
  assert.equal(span.status.code, SpanStatusCode.UNSET);
  assert.equal(span.parentSpanContext, undefined, 'the request span is a root');
  assert.equal(request.traceId, span.spanContext().traceId);
  assert.equal(span.resource.attributes['service.name'], 'gateway-test');
  // Exactly these keys: nothing else, in particular no prompt or completion text, reaches the span.
  assert.deepEqual(span.attributes, {
    'gen_ai.operation.name': 'chat',
    'gen_ai.provider.name': 'peft-gateway',
    'gen_ai.system': 'peft-gateway',
    'gen_ai.request.model': 'stories260K+acme/support',
    'gen_ai.request.max_tokens': 32,
    'gen_ai.request.temperature': 0.7,
    'gen_ai.request.top_p': 0.9,
    'gen_ai.request.seed': 42,
    'gen_ai.response.id': 'chatcmpl-123',
    'gen_ai.response.model': 'stories260K+acme/support',
    'gen_ai.response.finish_reasons': ['stop'],
    'gen_ai.usage.input_tokens': 5,
    'gen_ai.usage.output_tokens': 12,
    'gateway.tenant': 'acme',
    'gateway.adapter': 'acme/support',
  });
});

test('sampling parameters the client left out are left off the span', async () => {
  const { exporter, tracing } = inMemoryTracing();
  const request = tracing.startRequestSpan({
    operation: 'text_completion',
    requestModel: 'stories260K',
    tenant: 'beta',
    adapter: '',
  });
  request.finish({ ...OUTCOME, responseModel: 'stories260K', finishReasons: ['length'] });
  const [span] = await exportedSpans(tracing, exporter);
  assert.equal(span.name, 'text_completion stories260K');
  for (const key of ['max_tokens', 'temperature', 'top_p', 'seed']) {
    assert.equal(`gen_ai.request.${key}` in span.attributes, false, `${key} is absent`);
  }
  assert.deepEqual(span.attributes['gen_ai.response.finish_reasons'], ['length']);
});

test('the engine start becomes queue, adapter load, prefill and decode spans', async () => {
  const { exporter, tracing } = inMemoryTracing();
  const request = tracing.startRequestSpan(START);
  request.started({ queueMs: 120, prefillMs: 30, adapterLoad: { key: 'acme/support@1', tier: 'disk', ms: 45 } });
  request.finish(OUTCOME);
  const spans = await exportedSpans(tracing, exporter);

  assert.equal(spans.length, 5);
  const root = byName(spans, 'chat stories260K+acme/support');
  const [queue, prefill, decode, load] = ['queue', 'prefill', 'decode', 'adapter.load'].map((n) => byName(spans, n));
  for (const phase of [queue, prefill, decode]) {
    assertChildOf(phase, root);
    assert.equal(phase.kind, SpanKind.INTERNAL);
  }
  assertChildOf(load, queue);
  assert.equal(load.kind, SpanKind.INTERNAL);

  const close = (actual: number, expected: number) => Math.abs(actual - expected) < 1e-5;
  assert.ok(close(seconds(queue.duration), 0.12), `queue lasted ${seconds(queue.duration)} s`);
  assert.ok(close(seconds(prefill.duration), 0.03), `prefill lasted ${seconds(prefill.duration)} s`);
  assert.ok(close(seconds(load.duration), 0.045), `load lasted ${seconds(load.duration)} s`);
  // Back to back: the load ends the wait, prefill follows it, decode runs until the request ends.
  assert.ok(close(seconds(load.endTime), seconds(queue.endTime)));
  assert.ok(close(seconds(queue.endTime), seconds(prefill.startTime)));
  assert.ok(close(seconds(prefill.endTime), seconds(decode.startTime)));
  assert.ok(close(seconds(decode.endTime), seconds(root.endTime)));

  assert.deepEqual(load.attributes, { 'gateway.adapter': 'acme/support', 'gateway.adapter.tier': 'disk' });
  assert.equal(root.attributes['gateway.adapter.tier'], 'disk');
});

test('an adapter already in a slot is noted on the request, with no load span', async () => {
  const { exporter, tracing } = inMemoryTracing();
  const request = tracing.startRequestSpan(START);
  request.started({ queueMs: 1, prefillMs: 2, adapterLoad: { key: 'acme/support@1', tier: 'slot', ms: 0 } });
  request.started({ queueMs: 5, prefillMs: 5 });
  request.finish(OUTCOME);
  const spans = await exportedSpans(tracing, exporter);
  const names = spans.map((span) => span.name).sort();
  assert.deepEqual(names, ['chat stories260K+acme/support', 'decode', 'prefill', 'queue']);
  assert.equal(byName(spans, 'chat stories260K+acme/support').attributes['gateway.adapter.tier'], 'slot');
  assert.ok(Math.abs(seconds(byName(spans, 'queue').duration) - 0.001) < 1e-5, 'a second start is ignored');
});

test('a load that outlasts the reported wait stays inside the queue span', async () => {
  const { exporter, tracing } = inMemoryTracing();
  const request = tracing.startRequestSpan(START);
  request.started({ queueMs: 10, prefillMs: 1, adapterLoad: { key: 'k', tier: 'host', ms: 25 } });
  request.finish(OUTCOME);
  const spans = await exportedSpans(tracing, exporter);
  const [queue, load] = [byName(spans, 'queue'), byName(spans, 'adapter.load')];
  assert.deepEqual(load.startTime, queue.startTime);
  assert.deepEqual(load.endTime, queue.endTime);
});

test('a failure during decode marks the request and decode as errors', async () => {
  const { exporter, tracing } = inMemoryTracing();
  const request = tracing.startRequestSpan(START);
  request.started({ queueMs: 3, prefillMs: 4 });
  request.fail(new RangeError('KV cache exhausted: 512 positions in use'), '503');
  request.finish(OUTCOME);
  request.started({ queueMs: 3, prefillMs: 4 });
  const spans = await exportedSpans(tracing, exporter);

  assert.equal(spans.length, 4, 'nothing is recorded after the request failed');
  const root = byName(spans, 'chat stories260K+acme/support');
  assert.deepEqual(root.status, { code: SpanStatusCode.ERROR, message: 'KV cache exhausted: 512 positions in use' });
  assert.equal(root.attributes['error.type'], '503');
  assert.equal('gen_ai.response.id' in root.attributes, false, 'finish after fail is ignored');
  assert.equal(root.events[0]?.name, 'exception');
  assert.equal(root.events[0]?.attributes?.['exception.type'], 'RangeError');
  assert.equal(byName(spans, 'decode').status.code, SpanStatusCode.ERROR);
  assert.equal(byName(spans, 'queue').status.code, SpanStatusCode.UNSET);
  assert.equal(byName(spans, 'prefill').status.code, SpanStatusCode.UNSET);
});

test('a request refused before the engine started it is a lone error span typed by the error name', async () => {
  const { exporter, tracing } = inMemoryTracing();
  const request = tracing.startRequestSpan(START);
  request.fail(new TypeError('adapter_config.json has no "r"'));
  const spans = await exportedSpans(tracing, exporter);
  assert.equal(spans.length, 1);
  assert.equal(spans[0].status.code, SpanStatusCode.ERROR);
  assert.equal(spans[0].attributes['error.type'], 'TypeError');
});

test('with neither endpoint nor exporter, tracing is off and creates no spans, even with a global provider', async () => {
  const globalExporter = new InMemorySpanExporter();
  const globalProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(globalExporter)] });
  assert.ok(trace.setGlobalTracerProvider(globalProvider));
  try {
    const tracing = createTracing({ serviceName: 'gateway-test' });
    assert.equal(tracing.enabled, false);
    const request = tracing.startRequestSpan(START);
    assert.equal(request.traceId, undefined);
    request.started({ queueMs: 1, prefillMs: 1, adapterLoad: { key: 'k', tier: 'disk', ms: 1 } });
    request.finish(OUTCOME);
    tracing.tracer.startSpan('direct').end();
    await tracing.shutdown();
    await globalProvider.forceFlush();
    assert.deepEqual(globalExporter.getFinishedSpans(), []);
  } finally {
    trace.disable();
    await globalProvider.shutdown();
  }
});

test('an OTLP endpoint receives the batched spans over HTTP on shutdown', async () => {
  const received: { url: string | undefined; contentType: string | undefined; body: Buffer }[] = [];
  const collector = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      received.push({ url: req.url, contentType: req.headers['content-type'], body: Buffer.concat(chunks) });
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => collector.listen(0, '127.0.0.1', resolve));
  try {
    const { port } = collector.address() as AddressInfo;
    const tracing = createTracing({ serviceName: 'gateway-otlp-test', otlpEndpoint: `http://127.0.0.1:${port}/` });
    assert.equal(tracing.enabled, true);
    const request = tracing.startRequestSpan(START);
    request.started({ queueMs: 1, prefillMs: 1 });
    request.finish(OUTCOME);
    assert.equal(received.length, 0, 'spans wait in the batch until flushed');
    await tracing.shutdown();

    assert.equal(received.length, 1);
    assert.equal(received[0].url, '/v1/traces');
    assert.equal(received[0].contentType, 'application/json');
    const { resourceSpans } = JSON.parse(received[0].body.toString('utf8'));
    const serviceName = resourceSpans[0].resource.attributes.find(
      (attribute: { key: string }) => attribute.key === 'service.name',
    );
    assert.deepEqual(serviceName.value, { stringValue: 'gateway-otlp-test' });
    const names = resourceSpans[0].scopeSpans.flatMap((scope: { spans: { name: string }[] }) =>
      scope.spans.map((span) => span.name),
    );
    assert.deepEqual(names.sort(), ['chat stories260K+acme/support', 'decode', 'prefill', 'queue']);
  } finally {
    await new Promise((resolve) => collector.close(resolve));
  }
});

test('OTEL_RESOURCE_ATTRIBUTES reach the resource, but service.name comes from the options', async () => {
  const saved = process.env.OTEL_RESOURCE_ATTRIBUTES;
  process.env.OTEL_RESOURCE_ATTRIBUTES = 'k8s.pod.name=gateway-7d9f,service.name=from-env';
  try {
    const { exporter, tracing } = inMemoryTracing();
    tracing.startRequestSpan(START).finish(OUTCOME);
    const [span] = await exportedSpans(tracing, exporter);
    assert.equal(span.resource.attributes['k8s.pod.name'], 'gateway-7d9f');
    assert.equal(span.resource.attributes['service.name'], 'gateway-test');
  } finally {
    if (saved === undefined) delete process.env.OTEL_RESOURCE_ATTRIBUTES;
    else process.env.OTEL_RESOURCE_ATTRIBUTES = saved;
  }
});

test('a malformed endpoint is refused up front', () => {
  for (const otlpEndpoint of ['collector:4318', 'not a url']) {
    assert.throws(() => createTracing({ serviceName: 's', otlpEndpoint }), /is not an http\(s\) URL/);
  }
});

test('an endpoint and an exporter together are refused', () => {
  assert.throws(
    () =>
      createTracing({ serviceName: 's', otlpEndpoint: 'http://127.0.0.1:4318', exporter: new InMemorySpanExporter() }),
    /either otlpEndpoint .* or exporter/,
  );
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Registry } from 'prom-client';
import type { SchedulerStats } from '../src/engine/protocol.ts';
import { createGatewayMetrics, type FinishedRequest } from '../src/observability/metrics.ts';
import { parseScrape, samplesOf, valueOf, type Scrape } from './support/exposition.ts';

async function scrape(metrics: { metricsText(): Promise<string> }): Promise<Scrape> {
  return parseScrape(await metrics.metricsText());
}

const MODEL = { model_name: 'stories260K' };

function newMetrics() {
  return createGatewayMetrics({ maxLora: 4, modelName: MODEL.model_name });
}

const IDLE: SchedulerStats = {
  running: 0,
  waiting: 0,
  kvCacheUsage: 0,
  runningAdapters: [],
  waitingAdapters: [],
  slots: { capacity: 4, resident: 0, bytes: 0, adapters: [] },
  host: { entries: 0, bytes: 0, adapters: [] },
};

const REQUEST: FinishedRequest = {
  tenant: 'acme',
  adapter: 'acme/support',
  status: 200,
  promptTokens: 5,
  completionTokens: 3,
  finishReason: 'stop',
  ttftSeconds: 0.015,
  interTokenSeconds: [0.004, 0.006],
  e2eSeconds: 0.4,
};

test('exposes every series under its exact name and type, with zeroed series from the first scrape', async () => {
  const metrics = newMetrics();
  const { types, samples } = await scrape(metrics);
  assert.deepEqual(Object.fromEntries(types), {
    'vllm:num_requests_running': 'gauge',
    'vllm:num_requests_waiting': 'gauge',
    'vllm:kv_cache_usage_perc': 'gauge',
    'vllm:lora_requests_info': 'gauge',
    'vllm:time_to_first_token_seconds': 'histogram',
    'vllm:inter_token_latency_seconds': 'histogram',
    'vllm:e2e_request_latency_seconds': 'histogram',
    'vllm:prompt_tokens_total': 'counter',
    'vllm:generation_tokens_total': 'counter',
    'vllm:request_success_total': 'counter',
    gateway_requests_total: 'counter',
    gateway_tokens_total: 'counter',
    gateway_adapter_cold_starts_total: 'counter',
    gateway_errors_total: 'counter',
    gateway_engine_up: 'gauge',
    gateway_adapter_cache_hits_total: 'counter',
    gateway_adapter_cache_misses_total: 'counter',
    gateway_adapter_cache_loads_total: 'counter',
    gateway_adapter_cache_evictions_total: 'counter',
    gateway_adapter_load_failures_total: 'counter',
    gateway_adapter_altered_files_total: 'counter',
    gateway_adapter_load_seconds: 'histogram',
    gateway_adapter_cache_resident_bytes: 'gauge',
    gateway_adapter_cache_entries: 'gauge',
  });

  const vllmSamples = samples.filter((s) => s.name.startsWith('vllm:') && s.name !== 'vllm:lora_requests_info');
  for (const sample of vllmSamples) {
    assert.equal(sample.labels.model_name, MODEL.model_name, `${sample.name} carries model_name`);
  }
  for (const reason of ['stop', 'length', 'abort', 'error']) {
    assert.equal(valueOf({ types, samples }, 'vllm:request_success_total', { ...MODEL, finished_reason: reason }), 0);
  }
  for (const tier of ['slot', 'host', 'disk']) {
    const zeroed = ['gateway_adapter_cache_hits_total', 'gateway_adapter_cache_entries', 'gateway_adapter_load_seconds_count'];
    for (const name of zeroed) assert.equal(valueOf({ types, samples }, name, { tier }), 0);
  }
  assert.equal(valueOf({ types, samples }, 'vllm:num_requests_waiting', MODEL), 0);
  assert.match(metrics.contentType, /^text\/plain; version=0\.0\.4/);
});

test('histograms publish vLLM bucket boundaries', async () => {
  const { samples } = await scrape(newMetrics());
  const bounds = (name: string) =>
    samples
      .filter((s) => s.name === `${name}_bucket`)
      .map((s) => (s.labels.le === '+Inf' ? Infinity : Number(s.labels.le)));
  // Published in vLLM's Prometheus logger (vllm/v1/metrics/loggers.py).
  assert.deepEqual(bounds('vllm:time_to_first_token_seconds'), [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560,
    Infinity,
  ]);
  assert.deepEqual(bounds('vllm:e2e_request_latency_seconds'), [
    0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680, Infinity,
  ]);
  const interToken = bounds('vllm:inter_token_latency_seconds');
  const vllmInterToken = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
  for (const vllmBound of vllmInterToken) {
    assert.ok(interToken.includes(vllmBound), `inter-token buckets include vLLM's ${vllmBound}`);
  }
  assert.ok(interToken[0] < 0.01, 'inter-token buckets resolve sub-10ms decode steps');
  const adapterLoad = samples.filter((s) => s.name === 'gateway_adapter_load_seconds_bucket' && s.labels.tier === 'slot');
  assert.ok(adapterLoad.length > 5 && adapterLoad.at(-1)?.labels.le === '+Inf');
});

test('scheduler state sets the gauges and keeps only the latest lora_requests_info label set', async () => {
  const metrics = newMetrics();
  const before = Date.now() / 1000;
  metrics.setSchedulerState({
    running: 3,
    waiting: 2,
    kvCacheUsage: 0.375,
    runningAdapters: ['acme/support', 'beta/faq', 'acme/support'],
    waitingAdapters: ['gamma/legal'],
    slots: { capacity: 4, resident: 2, bytes: 65536, adapters: ["acme/a@1", "acme/b@1"] },
    host: { entries: 5, bytes: 163840, adapters: [] },
  });
  const after = Date.now() / 1000;
  let scraped = await scrape(metrics);
  assert.equal(valueOf(scraped, 'vllm:num_requests_running', MODEL), 3);
  assert.equal(valueOf(scraped, 'vllm:num_requests_waiting', MODEL), 2);
  assert.equal(valueOf(scraped, 'vllm:kv_cache_usage_perc', MODEL), 0.375);
  assert.equal(valueOf(scraped, 'gateway_adapter_cache_entries', { tier: 'slot' }), 2);
  assert.equal(valueOf(scraped, 'gateway_adapter_cache_resident_bytes', { tier: 'slot' }), 65536);
  assert.equal(valueOf(scraped, 'gateway_adapter_cache_entries', { tier: 'host' }), 5);
  assert.equal(valueOf(scraped, 'gateway_adapter_cache_resident_bytes', { tier: 'host' }), 163840);
  let lora = samplesOf(scraped, 'vllm:lora_requests_info');
  assert.equal(lora.length, 1);
  assert.deepEqual(lora[0].labels, {
    running_lora_adapters: 'acme/support,beta/faq',
    waiting_lora_adapters: 'gamma/legal',
    max_lora: '4',
  });
  assert.ok(lora[0].value >= before - 0.001 && lora[0].value <= after + 0.001, 'value is the update time in seconds');

  metrics.setSchedulerState({ ...IDLE, running: 1, kvCacheUsage: 0.1, runningAdapters: ['beta/faq'] });
  scraped = await scrape(metrics);
  lora = samplesOf(scraped, 'vllm:lora_requests_info');
  assert.equal(lora.length, 1, 'the previous label set is gone');
  assert.deepEqual(lora[0].labels, { running_lora_adapters: 'beta/faq', waiting_lora_adapters: '', max_lora: '4' });
  assert.ok(lora[0].value >= after - 0.001);
});

test('an idle server already publishes max_lora', async () => {
  const lora = samplesOf(await scrape(newMetrics()), 'vllm:lora_requests_info');
  assert.deepEqual(
    lora.map((s) => s.labels),
    [{ running_lora_adapters: '', waiting_lora_adapters: '', max_lora: '4' }],
  );
});

test('adapter names that would corrupt the comma-separated lists are refused', () => {
  const metrics = newMetrics();
  assert.throws(() => metrics.setSchedulerState({ ...IDLE, runningAdapters: ['a,b'] }), /no commas or whitespace/);
  assert.throws(() => metrics.setSchedulerState({ ...IDLE, waitingAdapters: ['a b'] }), /no commas or whitespace/);
  assert.throws(() => metrics.setSchedulerState({ ...IDLE, runningAdapters: [''] }), /non-empty/);
});

test('requests add their reported amounts to the counters and histograms', async () => {
  const metrics = newMetrics();
  metrics.observeRequest({ ...REQUEST, adapterTier: 'slot' });
  metrics.observeRequest({
    ...REQUEST,
    promptTokens: 7,
    completionTokens: 16,
    finishReason: 'length',
    ttftSeconds: 0.03,
    interTokenSeconds: [0.02],
    e2eSeconds: 1.2,
    adapterTier: 'disk',
  });
  metrics.observeRequest({
    ...REQUEST,
    tenant: 'beta',
    adapter: '',
    status: 499,
    promptTokens: 2,
    completionTokens: 0,
    finishReason: 'cancelled',
    ttftSeconds: undefined,
    interTokenSeconds: [],
    e2eSeconds: 0.1,
  });
  metrics.countRejectedRequest({ tenant: 'beta', adapter: '', status: 429 });
  const scraped = await scrape(metrics);

  assert.equal(valueOf(scraped, 'gateway_requests_total', { tenant: 'acme', adapter: 'acme/support', status: '200' }), 2);
  assert.equal(valueOf(scraped, 'gateway_requests_total', { tenant: 'beta', adapter: '', status: '499' }), 1);
  assert.equal(valueOf(scraped, 'gateway_requests_total', { tenant: 'beta', adapter: '', status: '429' }), 1);
  const acme = { tenant: 'acme', adapter: 'acme/support' };
  assert.equal(valueOf(scraped, 'gateway_tokens_total', { ...acme, kind: 'prompt' }), 12);
  assert.equal(valueOf(scraped, 'gateway_tokens_total', { ...acme, kind: 'completion' }), 19);
  assert.equal(valueOf(scraped, 'gateway_tokens_total', { tenant: 'beta', adapter: '', kind: 'prompt' }), 2);
  assert.equal(valueOf(scraped, 'gateway_adapter_cold_starts_total', { ...acme, tier: 'disk' }), 1, 'slot starts are not cold');
  assert.equal(samplesOf(scraped, 'gateway_adapter_cold_starts_total').length, 1);

  assert.equal(valueOf(scraped, 'vllm:prompt_tokens_total', MODEL), 14);
  assert.equal(valueOf(scraped, 'vllm:generation_tokens_total', MODEL), 19);
  assert.equal(valueOf(scraped, 'vllm:request_success_total', { ...MODEL, finished_reason: 'stop' }), 1);
  assert.equal(valueOf(scraped, 'vllm:request_success_total', { ...MODEL, finished_reason: 'length' }), 1);
  const aborted = valueOf(scraped, 'vllm:request_success_total', { ...MODEL, finished_reason: 'abort' });
  assert.equal(aborted, 1, 'cancelled is counted as vLLM abort');
  assert.equal(valueOf(scraped, 'vllm:request_success_total', { ...MODEL, finished_reason: 'error' }), 0);
  assert.equal(samplesOf(scraped, 'vllm:request_success_total').length, 4, 'only vLLM reasons appear');

  assert.equal(valueOf(scraped, 'vllm:time_to_first_token_seconds_count', MODEL), 2);
  assert.ok(Math.abs(valueOf(scraped, 'vllm:time_to_first_token_seconds_sum', MODEL) - 0.045) < 1e-9);
  assert.equal(valueOf(scraped, 'vllm:time_to_first_token_seconds_bucket', { ...MODEL, le: '0.02' }), 1);
  assert.equal(valueOf(scraped, 'vllm:inter_token_latency_seconds_count', MODEL), 3);
  assert.ok(Math.abs(valueOf(scraped, 'vllm:inter_token_latency_seconds_sum', MODEL) - 0.03) < 1e-9);
  assert.equal(valueOf(scraped, 'vllm:e2e_request_latency_seconds_count', MODEL), 3);
  assert.equal(valueOf(scraped, 'vllm:e2e_request_latency_seconds_bucket', { ...MODEL, le: '0.5' }), 2);
});

test('adapter cache events and residency are recorded per tier', async () => {
  const metrics = newMetrics();
  metrics.recordAdapterCache({ tier: 'slot', event: 'miss' });
  metrics.recordAdapterCache({ tier: 'host', event: 'hit' });
  metrics.recordAdapterCache({ tier: 'slot', event: 'load', seconds: 0.002 });
  metrics.recordAdapterCache({ tier: 'slot', event: 'load', seconds: 0.004 });
  metrics.recordAdapterCache({ tier: 'slot', event: 'eviction' });
  metrics.recordAdapterCache({ tier: 'disk', event: 'load', seconds: 0.3 });
  metrics.recordAdapterCache({ tier: 'disk', event: 'failure' });
  metrics.setAdapterCacheResidency('disk', { bytes: 3 * 1024 * 1024, entries: 12 });
  metrics.setAdapterCacheResidency('disk', { bytes: 2 * 1024 * 1024, entries: 8 });
  const scraped = await scrape(metrics);

  assert.equal(valueOf(scraped, 'gateway_adapter_cache_misses_total', { tier: 'slot' }), 1);
  assert.equal(valueOf(scraped, 'gateway_adapter_cache_hits_total', { tier: 'host' }), 1);
  assert.equal(valueOf(scraped, 'gateway_adapter_cache_hits_total', { tier: 'slot' }), 0);
  assert.equal(valueOf(scraped, 'gateway_adapter_cache_loads_total', { tier: 'slot' }), 2);
  assert.equal(valueOf(scraped, 'gateway_adapter_cache_evictions_total', { tier: 'slot' }), 1);
  assert.equal(valueOf(scraped, 'gateway_adapter_cache_loads_total', { tier: 'disk' }), 1);
  assert.equal(valueOf(scraped, 'gateway_adapter_load_seconds_count', { tier: 'slot' }), 2);
  assert.ok(Math.abs(valueOf(scraped, 'gateway_adapter_load_seconds_sum', { tier: 'slot' }) - 0.006) < 1e-9);
  assert.equal(valueOf(scraped, 'gateway_adapter_load_seconds_bucket', { tier: 'slot', le: '0.0025' }), 1);
  assert.equal(valueOf(scraped, 'gateway_adapter_load_seconds_count', { tier: 'disk' }), 1);
  assert.equal(valueOf(scraped, 'gateway_adapter_load_failures_total', { tier: 'disk' }), 1);
  assert.equal(valueOf(scraped, 'gateway_adapter_load_failures_total', { tier: 'host' }), 0);
  assert.equal(valueOf(scraped, 'gateway_adapter_cache_resident_bytes', { tier: 'disk' }), 2 * 1024 * 1024);
  assert.equal(valueOf(scraped, 'gateway_adapter_cache_entries', { tier: 'disk' }), 8);
});

test('instances are independent, and a given registry receives the series', async () => {
  const first = newMetrics();
  const second = newMetrics();
  first.observeRequest(REQUEST);
  assert.equal(valueOf(await scrape(second), 'vllm:prompt_tokens_total', MODEL), 0);

  const registry = new Registry();
  const shared = createGatewayMetrics({ maxLora: 2, modelName: 'other', registry });
  assert.equal(shared.registry, registry);
  shared.recordAdapterCache({ tier: 'disk', event: 'hit' });
  const viaRegistry = parseScrape(await registry.metrics());
  assert.equal(valueOf(viaRegistry, 'gateway_adapter_cache_hits_total', { tier: 'disk' }), 1);
});

test('options are validated', () => {
  assert.throws(() => createGatewayMetrics({ maxLora: 0, modelName: 'm' }), /maxLora must be a positive integer/);
  assert.throws(() => createGatewayMetrics({ maxLora: 1, modelName: '' }), /modelName/);
});

test('error answers are counted by status and code', async () => {
  const metrics = newMetrics();
  metrics.countErrorAnswer({ status: 401, code: 'invalid_api_key' });
  metrics.countErrorAnswer({ status: 401, code: 'invalid_api_key' });
  metrics.countErrorAnswer({ status: 500, code: null });
  const scraped = await scrape(metrics);
  assert.equal(valueOf(scraped, 'gateway_errors_total', { status: '401', code: 'invalid_api_key' }), 2);
  assert.equal(valueOf(scraped, 'gateway_errors_total', { status: '500', code: '' }), 1);
});

test('gateway_engine_up reads the engine state at each scrape', async () => {
  let alive = true;
  const metrics = createGatewayMetrics({ maxLora: 2, modelName: MODEL.model_name, engineAlive: () => alive });
  assert.equal(valueOf(await scrape(metrics), 'gateway_engine_up', {}), 1);
  alive = false;
  assert.equal(valueOf(await scrape(metrics), 'gateway_engine_up', {}), 0);
});

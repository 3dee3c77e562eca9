import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createRng } from '../src/engine/random.ts';
import { DEFAULT_OPTIONS, parseLoadTestArgs, runLoadTest, type LatencySummary, type LoadTestOptions } from '../loadtest/run.ts';
import { zipfSampler } from '../loadtest/zipf.ts';
import { BASE_MODEL, KEYS, startTestGateway, type TestGateway } from './support/gateway.ts';
import { STORIES_HF_DIR } from './support/models.ts';

function assertOrdered(summary: LatencySummary, name: string): void {
  assert.ok(summary.samples > 0, `${name} has samples`);
  const { p50, p90, p99 } = summary;
  assert.ok(p50 !== null && p90 !== null && p99 !== null && p50 >= 0 && p50 <= p90 && p90 <= p99, `${name}: ${JSON.stringify(summary)}`);
}

describe('load test against the real gateway', () => {
  let gateway: TestGateway;
  let base: LoadTestOptions;

  before(async () => {
    gateway = await startTestGateway();
    base = { ...DEFAULT_OPTIONS, url: gateway.url, apiKey: KEYS.acme, model: BASE_MODEL, tenant: 'acme', concurrency: 4, requests: 12, maxTokens: 8 };
  });
  after(() => gateway.stop());

  it('uploads Zipf-popular adapters, streams through them and reports consistent counts', async () => {
    const report = await runLoadTest({ ...base, adapters: 3, setupAdapters: true, modelPath: STORIES_HF_DIR, adapterRank: 4 });

    const uploaded = gateway.services.store.list('acme').map((record) => record.adapter).sort();
    assert.deepEqual(uploaded, ['loadtest-0', 'loadtest-1', 'loadtest-2']);
    assert.equal(report.requests, 12);
    assert.equal(report.succeeded + report.failed, report.requests);
    assert.equal(Object.values(report.errors).reduce((a, b) => a + b, 0), report.failed);
    assert.equal(report.failed, 0, `errors: ${JSON.stringify(report.errors)}`);
    const models = Object.keys(report.requestsByModel);
    for (const model of models) assert.match(model, /^stories260K-hf\+acme\/loadtest-[0-2]$/);
    assert.equal(Object.values(report.requestsByModel).reduce((a, b) => a + b, 0), 12);

    assert.ok(report.outputTokens > 0 && report.outputTokens <= 12 * 8);
    assert.ok(report.outputTokensPerSecond > 0 && report.requestsPerSecond > 0 && report.durationSeconds > 0);
    assertOrdered(report.timeToFirstTokenMs, 'TTFT');
    assertOrdered(report.interTokenLatencyMs, 'ITL');
    assertOrdered(report.requestLatencyMs, 'request latency');
    assert.ok(report.requestLatencyMs.p50! >= report.timeToFirstTokenMs.p50!);
  });

  it('drives the completions API on the base model too', async () => {
    const report = await runLoadTest({ ...base, mode: 'completions', requests: 6 });
    assert.deepEqual(report.requestsByModel, { [BASE_MODEL]: 6 });
    assert.equal(report.succeeded, 6);
    assert.ok(report.outputTokens > 0);
  });

  it('counts failed requests by status', async () => {
    const report = await runLoadTest({ ...base, adapters: 2, adapterPrefix: 'missing', requests: 5 });
    assert.deepEqual(report.errors, { 404: 5 });
    assert.equal(report.failed, 5);
    assert.equal(report.succeeded, 0);
    assert.equal(report.outputTokens, 0);
    assert.equal(report.timeToFirstTokenMs.p50, null);
  });

  it('stops by itself when its duration runs out', async () => {
    // The engine is paused while the duration runs out, so each client's first request is still in progress
    // then: each sends exactly one, however fast the machine is. A timer never fires early, so the wait is
    // at least the duration.
    const { engine } = gateway.services;
    engine.pause();
    const running = runLoadTest({ ...base, requests: 1000, durationSeconds: 0.2, concurrency: 2 });
    await new Promise((resolve) => setTimeout(resolve, 250));
    engine.resume();
    const report = await running;
    assert.equal(report.requests, 2);
    assert.equal(report.succeeded, 2);
  });
});

describe('load test options and adapter popularity', () => {
  it('refuses targets other than this machine', async () => {
    const { options } = parseLoadTestArgs(['--url', 'http://example.com:8000', '--model', 'm']);
    await assert.rejects(runLoadTest(options), /loopback/);
  });

  it('parses flags and names the bad one', () => {
    const { options, json } = parseLoadTestArgs(['--model', 'm', '--concurrency', '16', '--adapters', '8', '--zipf', '1.1', '--json']);
    assert.equal(options.concurrency, 16);
    assert.equal(options.adapters, 8);
    assert.equal(options.zipfExponent, 1.1);
    assert.equal(json, true);
    assert.throws(() => parseLoadTestArgs(['--model', 'm', '--concurrency', '0']), /--concurrency/);
    assert.throws(() => parseLoadTestArgs([]), /--model is required/);
  });

  it('draws Zipf ranks: repeatable per seed, most popular first', () => {
    const draw = (seed: number) => {
      const sample = zipfSampler(8, 1.1, createRng(seed));
      return Array.from({ length: 4000 }, sample);
    };
    const ranks = draw(7);
    assert.deepEqual(ranks, draw(7));
    const counts = Array.from({ length: 8 }, (_, k) => ranks.filter((r) => r === k).length);
    assert.equal(counts.reduce((a, b) => a + b, 0), 4000);
    // P(rank 0) = 1 / H(8, 1.1) ≈ 0.398, so ≈ 1593 ± 31 of 4000 draws; P(rank 7) ≈ 0.040.
    assert.ok(counts[0] > 1450 && counts[0] < 1740, `rank 0 drawn ${counts[0]} times`);
    assert.ok(counts[0] > counts[3] && counts[3] > counts[7] && counts[7] > 0, JSON.stringify(counts));
  });
});

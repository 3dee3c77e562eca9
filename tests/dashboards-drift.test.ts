/**
 * No drift between the shipped dashboards and alert rules and the metrics: every query is checked against the
 * `/metrics` of a real gateway that has served a little of every kind of traffic, and the training dashboard's
 * against the trainer sidecar's after it has run a fine-tuning job.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { shippedQueries } from '../src/observability/dashboards/queries.ts';
import { parseScrape, valueOf, type Scrape } from './support/exposition.ts';
import { startTestTrainer, type TestTrainer } from './support/fine-tuning.ts';
import type { TestGateway } from './support/gateway.ts';
import { driftProblems } from './support/metric-drift.ts';
import { mixedTraffic, publishAdapter, runSmallFineTuningJob, startTrafficGateway } from './support/traffic.ts';

let gateway: TestGateway;
let trainer: TestTrainer;
let scrape: Scrape;
let trainerScrape: Scrape;

before(async () => {
  gateway = await startTrafficGateway();
  const adapters = {
    acme: await publishAdapter(gateway, 'acme', 'support', 1),
    globex: await publishAdapter(gateway, 'globex', 'faq', 2),
  };
  await mixedTraffic(gateway, adapters);
  scrape = parseScrape(await (await fetch(`${gateway.url}/metrics`)).text());
  trainer = await startTestTrainer(gateway);
  await runSmallFineTuningJob(gateway, trainer);
  trainerScrape = parseScrape(await (await fetch(`${trainer.url}/metrics`)).text());
});

after(async () => {
  await trainer?.close();
  await gateway?.stop();
});

describe('dashboards and alert rules against the gateway /metrics', () => {
  it('every series, label and label value they use is exported', () => {
    const queries = shippedQueries().filter((query) => query.target === 'gateway');
    assert.ok(queries.length > 40, `${queries.length} queries`);
    const problems = queries.flatMap((query) => driftProblems(query.expr, scrape).map((problem) => `${query.where}: ${problem}`));
    assert.deepEqual(problems, []);
  });

  it('the training dashboard uses only what the trainer sidecar exports', () => {
    const queries = shippedQueries().filter((query) => query.target === 'trainer');
    assert.ok(queries.length >= 8, `${queries.length} queries`);
    const problems = queries.flatMap((query) => driftProblems(query.expr, trainerScrape).map((problem) => `${query.where}: ${problem}`));
    assert.deepEqual(problems, []);
    assert.equal(valueOf(trainerScrape, 'trainer_jobs', { status: 'succeeded' }), 1);
    assert.equal(valueOf(trainerScrape, 'trainer_job_duration_seconds_count', { status: 'succeeded' }), 1);
    assert.ok(valueOf(trainerScrape, 'trainer_trained_tokens_total', {}) > 0);
  });

  it('the traffic reached every series the panels chart', () => {
    assert.equal(valueOf(scrape, 'gateway_errors_total', { status: '401', code: 'invalid_api_key' }), 1);
    assert.equal(valueOf(scrape, 'gateway_errors_total', { status: '404', code: 'model_not_found' }), 1);
    assert.equal(valueOf(scrape, 'gateway_errors_total', { status: '429', code: 'rate_limit_exceeded' }), 1);
    assert.equal(valueOf(scrape, 'gateway_adapter_cold_starts_total', { tenant: 'acme', adapter: 'acme/support@1', tier: 'disk' }), 1);
    assert.equal(valueOf(scrape, 'gateway_engine_up', {}), 1);
  });

  it('a renamed series, a label it lacks or a misspelt value is reported', () => {
    assert.deepEqual(driftProblems('sum(rate(vllm:gpu_cache_usage_perc[$__rate_interval]))', scrape), ['vllm:gpu_cache_usage_perc is not exported']);
    assert.deepEqual(driftProblems('rate(gateway_adapter_cache_hits_total{tenant="acme"}[1m])', scrape), [
      'gateway_adapter_cache_hits_total has no label tenant',
    ]);
    assert.deepEqual(driftProblems('rate(gateway_adapter_cache_hits_total{tier="gpu"}[1m])', scrape), [
      'gateway_adapter_cache_hits_total has no series with tier="gpu"',
    ]);
    assert.deepEqual(driftProblems('sum by (tenant) (vllm:num_requests_running{instance=~"$instance"})', scrape), [
      'grouping by tenant, but vllm:num_requests_running has no such label',
    ]);
  });
});

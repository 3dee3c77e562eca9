/**
 * A real Prometheus (Debian's package) scrapes a real gateway and the trainer sidecar beside it, evaluates every
 * shipped dashboard query over its HTTP API, and loads the alert rules. Every wait polls a condition, with a
 * generous cap for a loaded machine.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { GATEWAY_JOB } from '../src/observability/dashboards/alerts.ts';
import { RULES_FILE } from '../src/observability/dashboards/files.ts';
import { shippedQueries, type ShippedQuery } from '../src/observability/dashboards/queries.ts';
import { startTestTrainer, type TestTrainer } from './support/fine-tuning.ts';
import type { TestGateway } from './support/gateway.ts';
import { REPO_ROOT } from './support/models.ts';
import { startPrometheus, waitFor, type RunningPrometheus } from './support/prometheus.ts';
import { withVariablesResolved } from './support/promql.ts';
import { mixedTraffic, publishAdapter, runSmallFineTuningJob, startTrafficGateway } from './support/traffic.ts';

/** Scrapes come every second; Grafana's $__rate_interval would be at least four of them. */
const RATE_INTERVAL = '30s';
const TRAINER_JOB = 'peft-trainer';

let gateway: TestGateway;
let trainer: TestTrainer;
let prometheus: RunningPrometheus;
let adapters: { acme: string; globex: string };

before(async () => {
  gateway = await startTrafficGateway();
  trainer = await startTestTrainer(gateway);
  prometheus = await startPrometheus(
    [
      { job: GATEWAY_JOB, url: gateway.url },
      { job: TRAINER_JOB, url: trainer.url },
    ],
    [join(REPO_ROOT, RULES_FILE)],
  );
  adapters = {
    acme: await publishAdapter(gateway, 'acme', 'support', 1),
    globex: await publishAdapter(gateway, 'globex', 'faq', 2),
  };
});

after(async () => {
  await prometheus?.stop();
  await trainer?.close();
  await gateway?.stop();
});

const hasFiniteValue = (samples: { value: [number, string] }[]) => samples.some((sample) => Number.isFinite(Number(sample.value[1])));

/** How many successful scrapes of a job Prometheus has stored so far. */
async function scrapesSoFar(job = GATEWAY_JOB): Promise<number> {
  const [sample] = await prometheus.query(`sum_over_time(up{job="${job}"}[1h])`);
  return sample ? Number(sample.value[1]) : 0;
}

/** Polls until every query has returned a finite value at least once, calling `drive` between polls. */
async function untilEveryQueryHasData(queries: ShippedQuery[], drive: () => Promise<void>): Promise<void> {
  const pending = new Map(queries.map((query) => [query.where, withVariablesResolved(query.expr, RATE_INTERVAL)]));
  await waitFor(
    () => `data for ${[...pending.keys()].join('; ')}`,
    async () => {
      await drive();
      for (const [where, expr] of pending) {
        if (hasFiniteValue(await prometheus.query(expr))) pending.delete(where);
      }
      return pending.size === 0 ? true : undefined;
    },
    300_000,
  );
}

describe('Prometheus scraping a gateway', () => {
  it('every dashboard query returns data', async () => {
    const queries = shippedQueries().filter((query) => query.kind !== 'alert' && query.target === 'gateway');
    assert.ok(queries.length > 35, `${queries.length} queries`);
    // Traffic in rounds, each once Prometheus has scraped the gateway twice since the previous one (or since it
    // started): a rate or quantile needs a counter to change between two scrapes inside its window.
    let scrapedAt = 0;
    let rounds = 0;
    await untilEveryQueryHasData(queries, async () => {
      if ((await scrapesSoFar()) < scrapedAt + 2 || rounds >= 20) return;
      await mixedTraffic(gateway, adapters);
      rounds += 1;
      scrapedAt = await scrapesSoFar();
    });
  });

  it('every training dashboard query returns data once the trainer has run a job', async () => {
    const queries = shippedQueries().filter((query) => query.target === 'trainer');
    assert.ok(queries.length >= 8, `${queries.length} queries`);
    // Scraped before the job, so the job's tokens and duration show as increases.
    await waitFor('two scrapes of the trainer', async () => ((await scrapesSoFar(TRAINER_JOB)) >= 2 ? true : undefined));
    await runSmallFineTuningJob(gateway, trainer);
    await untilEveryQueryHasData(queries, async () => {});
  });

  it('loads every alert rule, evaluates it without error, and none but the latency alerts can fire for a healthy gateway', async () => {
    type Rule = { name: string; health: string; lastError?: string; state: string; lastEvaluation: string };
    const rules = await waitFor('every rule to be evaluated', async () => {
      const { groups } = await prometheus.api<{ groups: { rules: Rule[] }[] }>('rules?type=alert');
      const all = groups.flatMap((group) => group.rules);
      return all.length > 0 && all.every((rule) => !rule.lastEvaluation.startsWith('0001')) ? all : undefined;
    });
    assert.equal(rules.length, 8);
    // Latency alerts watch how fast this machine happens to be (a loaded host may exceed the SLO for a moment),
    // so only their evaluation is checked; the others must stay quiet on a healthy gateway.
    const speedDependent = new Set(['PeftGatewayTtftP99AboveSlo', 'PeftGatewayAdapterLoadsSlow', 'PeftGatewayQueueBuildingUp']);
    for (const rule of rules) {
      assert.equal(rule.health, 'ok', `${rule.name}: ${rule.lastError}`);
      if (!speedDependent.has(rule.name)) assert.equal(rule.state, 'inactive', `${rule.name} is ${rule.state}`);
    }
  });
});

/**
 * A real Prometheus (Debian's package) scrapes a real gateway and evaluates every shipped dashboard query over its
 * HTTP API, and loads the alert rules. Every wait polls a condition, with a generous cap for a loaded machine.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { GATEWAY_JOB } from '../src/observability/dashboards/alerts.ts';
import { RULES_FILE } from '../src/observability/dashboards/files.ts';
import { shippedQueries } from '../src/observability/dashboards/queries.ts';
import type { TestGateway } from './support/gateway.ts';
import { REPO_ROOT } from './support/models.ts';
import { startPrometheus, waitFor, type RunningPrometheus } from './support/prometheus.ts';
import { withVariablesResolved } from './support/promql.ts';
import { mixedTraffic, publishAdapter, startTrafficGateway } from './support/traffic.ts';

/** Scrapes come every second; Grafana's $__rate_interval would be at least four of them. */
const RATE_INTERVAL = '30s';

let gateway: TestGateway;
let prometheus: RunningPrometheus;
let adapters: { acme: string; globex: string };

before(async () => {
  gateway = await startTrafficGateway();
  prometheus = await startPrometheus([{ job: GATEWAY_JOB, url: gateway.url }], [join(REPO_ROOT, RULES_FILE)]);
  adapters = {
    acme: await publishAdapter(gateway, 'acme', 'support', 1),
    globex: await publishAdapter(gateway, 'globex', 'faq', 2),
  };
});

after(async () => {
  await prometheus?.stop();
  await gateway?.stop();
});

const hasFiniteValue = (samples: { value: [number, string] }[]) => samples.some((sample) => Number.isFinite(Number(sample.value[1])));

/** How many scrapes of the gateway Prometheus has stored so far. */
async function scrapesSoFar(): Promise<number> {
  const [sample] = await prometheus.query(`count_over_time(up{job="${GATEWAY_JOB}"}[1h])`);
  return sample ? Number(sample.value[1]) : 0;
}

describe('Prometheus scraping a gateway', () => {
  it('every dashboard query returns data', async () => {
    const queries = shippedQueries().filter((query) => query.kind !== 'alert' && query.target === 'gateway');
    assert.ok(queries.length > 35, `${queries.length} queries`);
    const pending = new Map(queries.map((query) => [query.where, withVariablesResolved(query.expr, RATE_INTERVAL)]));
    // Traffic in rounds, each once Prometheus has scraped the gateway twice since the previous one (or since it
    // started), until every query has had a finite value: a rate or quantile needs a counter to change between two
    // scrapes inside its window.
    let scrapedAt = 0;
    let rounds = 0;
    await waitFor(
      () => `data for ${[...pending.keys()].join('; ')}`,
      async () => {
        const scrapes = await scrapesSoFar();
        if (scrapes >= scrapedAt + 2 && rounds < 20) {
          await mixedTraffic(gateway, adapters);
          rounds += 1;
          scrapedAt = await scrapesSoFar();
        }
        for (const [where, expr] of pending) {
          if (hasFiniteValue(await prometheus.query(expr))) pending.delete(where);
        }
        return pending.size === 0 ? true : undefined;
      },
      300_000,
    );
  });

  it('loads every alert rule, evaluates it without error, and fires none for a healthy gateway', async () => {
    type Rule = { name: string; health: string; lastError?: string; state: string; lastEvaluation: string };
    const rules = await waitFor('every rule to be evaluated', async () => {
      const { groups } = await prometheus.api<{ groups: { rules: Rule[] }[] }>('rules?type=alert');
      const all = groups.flatMap((group) => group.rules);
      return all.length > 0 && all.every((rule) => !rule.lastEvaluation.startsWith('0001')) ? all : undefined;
    });
    assert.equal(rules.length, 8);
    for (const rule of rules) {
      assert.equal(rule.health, 'ok', `${rule.name}: ${rule.lastError}`);
      assert.equal(rule.state, 'inactive', `${rule.name} is ${rule.state}`);
    }
  });
});

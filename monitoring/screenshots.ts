/**
 * `npm run screenshots`: the pictures in the README, taken with headless Chromium from a real gateway under load
 * and a real Prometheus scraping it: the live page, Prometheus evaluating dashboard queries, and the alert rules.
 * Uses the test support code (gateway, traffic, Prometheus, Chromium), so it needs the same Debian packages.
 */
import { join } from 'node:path';
import { GATEWAY_JOB } from '../src/observability/dashboards/alerts.ts';
import { RULES_FILE } from '../src/observability/dashboards/files.ts';
import { overviewDashboard } from '../src/observability/dashboards/overview.ts';
import { launchChromium } from '../tests/support/browser.ts';
import { BASE_MODEL, KEYS } from '../tests/support/gateway.ts';
import { REPO_ROOT } from '../tests/support/models.ts';
import { startPrometheus } from '../tests/support/prometheus.ts';
import { withVariablesResolved } from '../tests/support/promql.ts';
import { mixedTraffic, publishAdapter, startTrafficGateway } from '../tests/support/traffic.ts';

const LOAD_SECONDS = Number(process.argv[2] ?? 60);
const OUT = join(REPO_ROOT, 'docs/images');

const gateway = await startTrafficGateway();
const prometheus = await startPrometheus([{ job: GATEWAY_JOB, url: gateway.url }], [join(REPO_ROOT, RULES_FILE)]);
const browser = await launchChromium({ httpCredentials: { username: 'admin', password: KEYS.admin }, viewport: { width: 1400, height: 1000 } });
try {
  const adapters = {
    acme: await publishAdapter(gateway, 'acme', 'support', 1),
    globex: await publishAdapter(gateway, 'globex', 'faq', 2),
  };
  const page = await browser.context.newPage();
  await page.goto(`${gateway.url}/dashboard`);

  // Mixed traffic plus a varying number of longer generations, so the charts have something to show.
  const until = Date.now() + LOAD_SECONDS * 1000;
  let round = 0;
  while (Date.now() < until) {
    round += 1;
    const long = Array.from({ length: 1 + (round % 6) }, (_, i) => {
      const tenant = i % 2 ? 'acme' : 'globex';
      const model = i % 3 ? BASE_MODEL : adapters[tenant];
      return gateway.client(KEYS[tenant]).completions.create({ model, prompt: 'Once upon a time', max_tokens: 200 });
    });
    await Promise.all([mixedTraffic(gateway, adapters), ...long]);
  }
  await page.waitForFunction(() => document.body.dataset.state === 'live');
  await page.screenshot({ path: join(OUT, 'live-dashboard.png'), fullPage: true });

  const ttft = overviewDashboard().panels.find((panel) => panel.title === 'Time to first token')!;
  const graph = new URLSearchParams();
  ttft.targets.forEach((target, index) => {
    graph.set(`g${index}.expr`, withVariablesResolved(target.expr, '30s'));
    graph.set(`g${index}.tab`, '0');
    graph.set(`g${index}.range_input`, `${Math.max(1, Math.ceil(LOAD_SECONDS / 60))}m`);
  });
  const prometheusPage = await browser.context.newPage();
  // Tall enough for the three graphs: a full-page capture would paint the fixed menu bar mid-page.
  await prometheusPage.setViewportSize({ width: 1400, height: 2300 });
  await prometheusPage.goto(`${prometheus.url}/classic/graph?${graph}`);
  await prometheusPage.waitForLoadState('networkidle');
  await prometheusPage.screenshot({ path: join(OUT, 'prometheus-dashboard-queries.png') });

  await prometheusPage.setViewportSize({ width: 1400, height: 700 });
  await prometheusPage.goto(`${prometheus.url}/classic/alerts`);
  await prometheusPage.waitForLoadState('networkidle');
  await prometheusPage.screenshot({ path: join(OUT, 'prometheus-alert-rules.png') });
  console.log(`wrote ${OUT}/live-dashboard.png, prometheus-dashboard-queries.png, prometheus-alert-rules.png after ${round} rounds`);
} finally {
  await browser.close();
  await prometheus.stop();
  await gateway.stop();
}

/**
 * The live page `GET /dashboard` in a real browser: admins only, loads without console errors, and its figures
 * follow the gateway's own metrics as load is applied. Waits are on page state, never on time.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Page } from 'playwright-core';
import { parseScrape, samplesOf } from './support/exposition.ts';
import { launchChromium, type Browser } from './support/browser.ts';
import { KEYS, type TestGateway } from './support/gateway.ts';
import { mixedTraffic, publishAdapter, startTrafficGateway, TRAFFIC_PROMPTS } from './support/traffic.ts';

/** Generous: the machine may be shared; every wait ends as soon as its condition holds. */
const PAGE_TIMEOUT_MS = 120_000;

let gateway: TestGateway;
let adapters: { acme: string; globex: string };

before(async () => {
  gateway = await startTrafficGateway();
  adapters = {
    acme: await publishAdapter(gateway, 'acme', 'support', 1),
    globex: await publishAdapter(gateway, 'globex', 'faq', 2),
  };
});

after(async () => {
  await gateway.stop();
});

async function get(path: string, authorization?: string): Promise<Response> {
  return fetch(`${gateway.url}${path}`, { headers: authorization ? { authorization } : {} });
}

const basic = (password: string) => `Basic ${Buffer.from(`admin:${password}`).toString('base64')}`;

async function requestsTotalFromMetrics(): Promise<number> {
  const scrape = parseScrape(await (await get('/metrics')).text());
  return samplesOf(scrape, 'gateway_requests_total').reduce((sum, sample) => sum + sample.value, 0);
}

const text = (page: Page, id: string) => page.locator(`#${id}`).innerText();

describe('GET /dashboard', () => {
  it('opens only with an admin key, and asks the browser for one', async () => {
    for (const path of ['/dashboard', '/dashboard/data', '/dashboard/dashboard.js']) {
      const anonymous = await get(path);
      assert.equal(anonymous.status, 401, path);
      assert.match(anonymous.headers.get('www-authenticate') ?? '', /^Basic realm="peft-gateway dashboard"/);
      const body = await anonymous.json();
      assert.equal(body.error.code, 'invalid_api_key');
      assert.equal((await get(path, basic('sk-wrong'))).status, 401, path);
      const tenant = await get(path, basic(KEYS.acme));
      assert.equal(tenant.status, 403, path);
      assert.equal((await tenant.json()).error.type, 'permission_error');
      assert.equal((await get(path, `Bearer ${KEYS.acme}`)).status, 403, path);
    }
    const page = await get('/dashboard', `Bearer ${KEYS.admin}`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type') ?? '', /^text\/html/);
    assert.match(page.headers.get('content-security-policy') ?? '', /script-src 'self'/);
    assert.match(await page.text(), /<script src="\/dashboard\/dashboard.js"/);
    assert.equal((await get('/dashboard/data', basic(KEYS.admin))).status, 200);
  });

  it('shows the key figures in Chromium without console errors, and they move under load', async () => {
    const browser: Browser = await launchChromium({ httpCredentials: { username: 'admin', password: KEYS.admin } });
    const problems: string[] = [];
    try {
      const page = await browser.context.newPage();
      page.setDefaultTimeout(PAGE_TIMEOUT_MS);
      page.on('console', (message) => {
        if (message.type() === 'error' || message.type() === 'warning') problems.push(`${message.type()}: ${message.text()}`);
      });
      page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
      page.on('response', (response) => {
        if (response.status() >= 400) problems.push(`${response.status()} for ${response.url()}`);
      });
      await page.goto(`${gateway.url}/dashboard`);
      await page.waitForFunction(() => document.body.dataset.state === 'live');
      assert.equal(await text(page, 'model'), 'stories260K-hf');
      assert.equal(await text(page, 'status'), 'live');
      const idle = { total: await text(page, 'requests-total'), tokens: await text(page, 'generation-tps') };
      assert.equal(idle.total, '0');
      assert.equal(await text(page, 'ttft-p50'), '–', 'no quantile before the first request');

      await mixedTraffic(gateway, adapters);
      const expected = await requestsTotalFromMetrics();
      assert.ok(expected >= 5);
      // The first poll that sees the traffic compares against a snapshot from before it: rates are then positive.
      await page.waitForFunction((total) => document.getElementById('requests-total')!.textContent === String(total), expected);
      assert.ok(Number(await text(page, 'rps')) > 0, `requests/s ${await text(page, 'rps')}`);
      assert.ok(Number((await text(page, 'generation-tps')).replace(/,/g, '')) > 0, 'generated tokens/s');
      assert.match(await text(page, 'ttft-p50'), /^[\d.]+ (ms|s)$/);
      assert.match(await text(page, 'e2e-p99'), /^[\d.]+ (ms|s)$/);
      assert.ok(Number(await text(page, 'error-rps')) > 0, 'the 429 is an error answer');

      const tiers = await page.locator('#tiers tbody tr').allInnerTexts();
      assert.deepEqual(tiers.map((row) => row.split('\t')[0]), ['slot', 'host', 'disk']);
      const disk = (await page.locator('#tiers tbody tr').nth(2).locator('td').allInnerTexts());
      assert.equal(disk[1], '2', 'two adapters in the disk store');
      assert.deepEqual(await page.locator('#slot-adapters li').allInnerTexts(), ['acme/support@1', 'globex/faq@1']);
      assert.deepEqual((await page.locator('#host-adapters li').allInnerTexts()).sort(), ['acme/support@1', 'globex/faq@1']);
      assert.deepEqual(await page.locator('#stored-adapters li').allInnerTexts(), ['acme/support@1', 'globex/faq@1']);
      assert.equal(await text(page, 'stored-count'), '2');
      const statuses = await page.locator('#statuses tbody tr td:first-child').allInnerTexts();
      assert.deepEqual(statuses, ['200', '429']);

      // Requests in progress per tenant: hold one admission of globex open in the real limiter.
      const tenantRow = (tenant: string) => page.locator('#tenants tbody tr', { hasText: tenant }).locator('td').allInnerTexts();
      assert.deepEqual(await tenantRow('globex'), ['globex', '0', '0']);
      const admitted = gateway.services.limiters.get('globex')!.admit(10);
      assert.ok(admitted.ok);
      await page.waitForFunction(() => [...document.querySelectorAll('#tenants tbody tr')].some((row) => row.textContent === 'globex10'));
      admitted.admission.finish(0);
      await page.waitForFunction(() => [...document.querySelectorAll('#tenants tbody tr')].some((row) => row.textContent === 'globex00'));

      const shown = await page.locator('body').innerText();
      const data = await (await get('/dashboard/data', `Bearer ${KEYS.admin}`)).text();
      for (const prompt of TRAFFIC_PROMPTS) {
        assert.ok(!shown.includes(prompt), `the page shows the prompt ${prompt}`);
        assert.ok(!data.includes(prompt), `the data holds the prompt ${prompt}`);
      }
    } finally {
      await browser.close();
    }
    assert.deepEqual(problems, []);
  });
});

/**
 * The alert rules under Prometheus's own rule tests (`promtool test rules`): synthetic input series at one-minute
 * steps, and the exact alerts, labels and rendered annotations expected at given times.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { stringify } from 'yaml';
import { RULES_FILE } from '../src/observability/dashboards/files.ts';
import { debianBinary } from './support/binaries.ts';
import { REPO_ROOT } from './support/models.ts';

const run = promisify(execFile);
const PROMTOOL = debianBinary('/usr/bin/promtool', 'prometheus');
const RULES = join(REPO_ROOT, RULES_FILE);
const POD = { job: 'peft-gateway', instance: 'gw-0:8000' };
const OTHER_POD = { job: 'peft-gateway', instance: 'gw-1:8000' };

interface ExpectedAlert {
  exp_labels: Record<string, string>;
  exp_annotations: { summary: string; description: string };
}
interface RuleTest {
  name: string;
  input_series: { series: string; values: string }[];
  alert_rule_test: { eval_time: string; alertname: string; exp_alerts: ExpectedAlert[] }[];
}

function series(name: string, labels: Record<string, string>, values: string): { series: string; values: string } {
  return { series: `${name}{${Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(',')}}`, values };
}

/** Cumulative histogram buckets growing by `perMinute[le]` every minute, for `minutes` minutes. */
function histogram(name: string, labels: Record<string, string>, perMinute: Record<string, number>, minutes: number) {
  return Object.entries(perMinute).map(([le, step]) => series(`${name}_bucket`, { ...labels, le }, `0+${step}x${minutes}`));
}

const ruleTests: RuleTest[] = [
  {
    name: 'a queue above 10 for 5 minutes, and not a shorter or smaller one',
    input_series: [
      series('vllm:num_requests_waiting', { ...POD, model_name: 'm' }, '0 0 20x20'),
      series('vllm:num_requests_waiting', { ...OTHER_POD, model_name: 'm' }, '8x20'),
    ],
    alert_rule_test: [
      { eval_time: '6m', alertname: 'PeftGatewayQueueBuildingUp', exp_alerts: [] },
      {
        eval_time: '8m',
        alertname: 'PeftGatewayQueueBuildingUp',
        exp_alerts: [
          {
            exp_labels: { severity: 'warning', ...POD, model_name: 'm' },
            exp_annotations: {
              summary: 'Requests are queueing on gw-0:8000',
              description:
                '20 requests have been waiting for admission for 5m (threshold 10). The batch is full: add replicas, or raise MAX_BATCH_SIZE if the KV cache allows.',
            },
          },
        ],
      },
    ],
  },
  {
    name: 'TTFT p99 above the 2 s objective on one pod only',
    input_series: [
      // gw-0: every request takes between 2.5 s and 5 s to its first token; gw-1: all under 0.5 s.
      ...histogram('vllm:time_to_first_token_seconds', { ...POD, model_name: 'm' }, { '0.5': 0, '2.5': 0, '5': 10, '+Inf': 10 }, 40),
      ...histogram('vllm:time_to_first_token_seconds', { ...OTHER_POD, model_name: 'm' }, { '0.5': 10, '2.5': 10, '5': 10, '+Inf': 10 }, 40),
    ],
    alert_rule_test: [
      {
        eval_time: '20m',
        alertname: 'PeftGatewayTtftP99AboveSlo',
        exp_alerts: [
          {
            exp_labels: { severity: 'warning', ...POD, model_name: 'm' },
            exp_annotations: {
              summary: 'Time to first token p99 above the SLO on gw-0:8000',
              description: 'p99 time to first token is 4.975s, above the 2 s objective.',
            },
          },
        ],
      },
    ],
  },
  {
    name: '10% server errors on one pod (429s count as answers, not errors)',
    input_series: [
      series('gateway_requests_total', { ...POD, tenant: 'acme', adapter: '', status: '200' }, '0+60x30'),
      series('gateway_requests_total', { ...POD, tenant: 'acme', adapter: '', status: '503' }, '0+20x30'),
      series('gateway_requests_total', { ...POD, tenant: 'beta', adapter: '', status: '429' }, '0+120x30'),
      series('gateway_requests_total', { ...OTHER_POD, tenant: 'acme', adapter: '', status: '200' }, '0+100x30'),
    ],
    alert_rule_test: [
      {
        eval_time: '15m',
        alertname: 'PeftGatewayErrorRatioHigh',
        exp_alerts: [
          {
            exp_labels: { severity: 'critical', ...POD },
            exp_annotations: { summary: 'Many server errors on gw-0:8000', description: '10% of answers are 5xx (threshold 5%).' },
          },
        ],
      },
    ],
  },
  {
    name: 'KV cache above 95% for 10 minutes',
    input_series: [series('vllm:kv_cache_usage_perc', { ...POD, model_name: 'm' }, '0.97x20')],
    alert_rule_test: [
      { eval_time: '5m', alertname: 'PeftGatewayKvCacheSaturated', exp_alerts: [] },
      {
        eval_time: '12m',
        alertname: 'PeftGatewayKvCacheSaturated',
        exp_alerts: [
          {
            exp_labels: { severity: 'warning', ...POD, model_name: 'm' },
            exp_annotations: { summary: 'KV cache nearly full on gw-0:8000', description: 'KV-cache use is 97%; new requests wait for room.' },
          },
        ],
      },
    ],
  },
  {
    name: 'slow disk loads, fast slot loads',
    input_series: [
      ...histogram('gateway_adapter_load_seconds', { ...POD, tier: 'disk' }, { '1': 0, '2.5': 0, '5': 5, '+Inf': 5 }, 40),
      ...histogram('gateway_adapter_load_seconds', { ...POD, tier: 'slot' }, { '1': 50, '2.5': 50, '5': 50, '+Inf': 50 }, 40),
    ],
    alert_rule_test: [
      {
        eval_time: '25m',
        alertname: 'PeftGatewayAdapterLoadsSlow',
        exp_alerts: [
          {
            exp_labels: { severity: 'warning', ...POD, tier: 'disk' },
            exp_annotations: {
              summary: 'Slow adapter loads into the disk tier on gw-0:8000',
              description: "p95 load time is 4.875s (threshold 2 s). Check the adapter volume's latency.",
            },
          },
        ],
      },
    ],
  },
  {
    name: 'a failed adapter load alerts for 15 minutes',
    input_series: [series('gateway_adapter_load_failures_total', { ...POD, tier: 'disk' }, '0 0 0 0 0 1x40')],
    alert_rule_test: [
      { eval_time: '4m', alertname: 'PeftGatewayAdapterLoadsFailing', exp_alerts: [] },
      {
        eval_time: '10m',
        alertname: 'PeftGatewayAdapterLoadsFailing',
        exp_alerts: [
          {
            exp_labels: { severity: 'warning', ...POD, tier: 'disk' },
            exp_annotations: {
              summary: 'Adapter loads fail on gw-0:8000',
              description: '1 adapter loads from the disk tier failed in 15 minutes: unreadable or invalid adapter files.',
            },
          },
        ],
      },
      { eval_time: '25m', alertname: 'PeftGatewayAdapterLoadsFailing', exp_alerts: [] },
    ],
  },
  {
    name: 'a dead engine thread, and a pod that stops answering scrapes',
    input_series: [
      series('gateway_engine_up', POD, '1 1 0x20'),
      series('up', POD, '1x22'),
      series('gateway_engine_up', OTHER_POD, '1x22'),
      series('up', OTHER_POD, '1 1 1 1 1 0x20'),
    ],
    alert_rule_test: [
      {
        eval_time: '10m',
        alertname: 'PeftGatewayEngineDown',
        exp_alerts: [POD, OTHER_POD].map((pod) => ({
          exp_labels: { severity: 'critical', ...pod },
          exp_annotations: {
            summary: `Gateway engine down on ${pod.instance}`,
            description: 'The engine thread has died or the pod does not answer scrapes; it serves no requests.',
          },
        })),
      },
    ],
  },
  {
    name: 'no gateway target at all',
    input_series: [series('up', { job: 'something-else', instance: 'x:1' }, '1x20')],
    alert_rule_test: [
      {
        eval_time: '10m',
        alertname: 'PeftGatewayTargetAbsent',
        exp_alerts: [
          {
            exp_labels: { severity: 'critical', job: 'peft-gateway' },
            exp_annotations: {
              summary: 'No gateway target is scraped',
              description: 'Prometheus has no target in job peft-gateway: the ServiceMonitor or the pods are gone.',
            },
          },
        ],
      },
    ],
  },
];

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'alert-rules-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function promtool(...args: string[]): Promise<{ code: number; output: string }> {
  try {
    const { stdout, stderr } = await run(PROMTOOL, args);
    return { code: 0, output: stdout + stderr };
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string };
    return { code: failed.code, output: failed.stdout + failed.stderr };
  }
}

async function testRules(tests: RuleTest[]): Promise<{ code: number; output: string }> {
  const file = join(dir, `rules-${Math.random().toString(36).slice(2)}.test.yml`);
  await writeFile(file, stringify({ rule_files: [RULES], evaluation_interval: '1m', tests: tests.map((t) => ({ interval: '1m', ...t })) }));
  return promtool('test', 'rules', file);
}

describe('alert rules', () => {
  it('promtool accepts the rules file', async () => {
    const checked = await promtool('check', 'rules', RULES);
    assert.equal(checked.code, 0, checked.output);
    assert.match(checked.output, /SUCCESS: 8 rules found/);
  });

  for (const ruleTest of ruleTests) {
    it(`fires as expected: ${ruleTest.name}`, async () => {
      const result = await testRules([ruleTest]);
      assert.equal(result.code, 0, result.output);
    });
  }

  it('promtool fails a wrong expectation (the tests above can fail)', async () => {
    const early = { ...ruleTests[0], alert_rule_test: [{ ...ruleTests[0].alert_rule_test[1], eval_time: '6m' }] };
    const result = await testRules([early]);
    assert.notEqual(result.code, 0);
    assert.match(result.output, /FAILED/);
  });
});

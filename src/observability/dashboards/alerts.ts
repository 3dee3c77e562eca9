/**
 * Alert rules for the gateway, generated like the dashboards so they name only series the gateway exports (the
 * drift test checks this). The thresholds are deployment choices; change them here and run `npm run dashboards`.
 */

export interface AlertRule {
  alert: string;
  expr: string;
  /** How long the condition must hold before the alert fires; absent: at once. */
  for?: string;
  labels: { severity: 'warning' | 'critical' };
  annotations: { summary: string; description: string };
}

export interface RuleGroup {
  name: string;
  rules: AlertRule[];
}

/** The Prometheus job that scrapes the gateway: a ServiceMonitor names it after the Service (k8s/service.yaml). */
export const GATEWAY_JOB = 'peft-gateway';

export const ALERT_THRESHOLDS = {
  /** Requests waiting for admission, sustained for `queueFor`. */
  waitingRequests: 10,
  queueFor: '5m',
  /** Time-to-first-token service level objective for the 99th percentile, in seconds. */
  ttftP99Seconds: 2,
  /** Share of answers that are server errors (5xx). */
  errorRatio: 0.05,
  /** KV-cache use (0–1) above which new requests wait for room. */
  kvCacheUsage: 0.95,
  /** 95th percentile adapter load time per tier, in seconds. */
  adapterLoadP95Seconds: 2,
} as const;

const T = ALERT_THRESHOLDS;
const BY_POD = 'job, instance';

export function alertRuleGroups(): RuleGroup[] {
  return [
    {
      name: 'peft-gateway',
      rules: [
        {
          alert: 'PeftGatewayQueueBuildingUp',
          expr: `max by (${BY_POD}, model_name) (vllm:num_requests_waiting{job="${GATEWAY_JOB}"}) > ${T.waitingRequests}`,
          for: T.queueFor,
          labels: { severity: 'warning' },
          annotations: {
            summary: 'Requests are queueing on {{ $labels.instance }}',
            description:
              `{{ $value }} requests have been waiting for admission for ${T.queueFor} (threshold ${T.waitingRequests}). ` +
              'The batch is full: add replicas, or raise MAX_BATCH_SIZE if the KV cache allows.',
          },
        },
        {
          alert: 'PeftGatewayTtftP99AboveSlo',
          expr:
            `histogram_quantile(0.99, sum by (le, ${BY_POD}, model_name) ` +
            `(rate(vllm:time_to_first_token_seconds_bucket{job="${GATEWAY_JOB}"}[5m]))) > ${T.ttftP99Seconds}`,
          for: '10m',
          labels: { severity: 'warning' },
          annotations: {
            summary: 'Time to first token p99 above the SLO on {{ $labels.instance }}',
            description: `p99 time to first token is {{ $value | humanizeDuration }}, above the ${T.ttftP99Seconds} s objective.`,
          },
        },
        {
          alert: 'PeftGatewayErrorRatioHigh',
          expr:
            `sum by (${BY_POD}) (rate(gateway_requests_total{job="${GATEWAY_JOB}", status=~"5.."}[5m])) / ` +
            `sum by (${BY_POD}) (rate(gateway_requests_total{job="${GATEWAY_JOB}"}[5m])) > ${T.errorRatio}`,
          for: '5m',
          labels: { severity: 'critical' },
          annotations: {
            summary: 'Many server errors on {{ $labels.instance }}',
            description: `{{ $value | humanizePercentage }} of answers are 5xx (threshold ${T.errorRatio * 100}%).`,
          },
        },
        {
          alert: 'PeftGatewayKvCacheSaturated',
          expr: `max by (${BY_POD}, model_name) (vllm:kv_cache_usage_perc{job="${GATEWAY_JOB}"}) > ${T.kvCacheUsage}`,
          for: '10m',
          labels: { severity: 'warning' },
          annotations: {
            summary: 'KV cache nearly full on {{ $labels.instance }}',
            description: `KV-cache use is {{ $value | humanizePercentage }}; new requests wait for room.`,
          },
        },
        {
          alert: 'PeftGatewayAdapterLoadsSlow',
          expr:
            `histogram_quantile(0.95, sum by (le, ${BY_POD}, tier) ` +
            `(rate(gateway_adapter_load_seconds_bucket{job="${GATEWAY_JOB}"}[10m]))) > ${T.adapterLoadP95Seconds}`,
          for: '10m',
          labels: { severity: 'warning' },
          annotations: {
            summary: 'Slow adapter loads into the {{ $labels.tier }} tier on {{ $labels.instance }}',
            description: `p95 load time is {{ $value | humanizeDuration }} (threshold ${T.adapterLoadP95Seconds} s). Check the adapter volume's latency.`,
          },
        },
        {
          alert: 'PeftGatewayAdapterLoadsFailing',
          expr: `sum by (${BY_POD}, tier) (increase(gateway_adapter_load_failures_total{job="${GATEWAY_JOB}"}[15m])) > 0`,
          labels: { severity: 'warning' },
          annotations: {
            summary: 'Adapter loads fail on {{ $labels.instance }}',
            description: '{{ $value }} adapter loads from the {{ $labels.tier }} tier failed in 15 minutes: unreadable or invalid adapter files.',
          },
        },
        {
          alert: 'PeftGatewayEngineDown',
          expr: `gateway_engine_up{job="${GATEWAY_JOB}"} == 0 or up{job="${GATEWAY_JOB}"} == 0`,
          for: '2m',
          labels: { severity: 'critical' },
          annotations: {
            summary: 'Gateway engine down on {{ $labels.instance }}',
            description: 'The engine thread has died or the pod does not answer scrapes; it serves no requests.',
          },
        },
        {
          alert: 'PeftGatewayTargetAbsent',
          expr: `absent(up{job="${GATEWAY_JOB}"})`,
          for: '5m',
          labels: { severity: 'critical' },
          annotations: {
            summary: 'No gateway target is scraped',
            description: `Prometheus has no target in job ${GATEWAY_JOB}: the ServiceMonitor or the pods are gone.`,
          },
        },
      ],
    },
  ];
}

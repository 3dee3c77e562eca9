/** The overview dashboard: traffic, tokens, latency quantiles, the engine's queue and KV cache, errors. */
import { dashboard, INSTANCE_SELECTOR, latencyQuantiles, MODEL_SELECTOR, panel, rate, topWithOther, type GrafanaDashboard } from './grafana.ts';

export function overviewDashboard(): GrafanaDashboard {
  return dashboard({
    uid: 'peft-gateway-overview',
    title: 'PEFT gateway / Overview',
    description: 'Traffic, tokens, latency, queue, KV cache and errors of the inference gateway.',
    tags: ['peft-gateway'],
    variableSource: { metric: 'vllm:num_requests_running', hasModelName: true },
    items: [
      panel({
        title: 'Finished requests',
        description: 'Requests the engine finished per second, by finish reason (stop, length, abort, error).',
        unit: 'reqps',
        stacked: true,
        queries: [{ expr: `sum by (finished_reason) (${rate('vllm:request_success_total', MODEL_SELECTOR)})`, legend: '{{finished_reason}}' }],
      }),
      panel({
        title: 'Tokens',
        description: 'Prompt tokens prefilled and tokens generated per second.',
        unit: 'suffix:tok/s',
        queries: [
          { expr: `sum(${rate('vllm:prompt_tokens_total', MODEL_SELECTOR)})`, legend: 'prompt' },
          { expr: `sum(${rate('vllm:generation_tokens_total', MODEL_SELECTOR)})`, legend: 'generation' },
        ],
      }),
      panel({
        title: 'Time to first token',
        description: 'From arrival to the first generated token; queueing, adapter loading and prefill included.',
        unit: 's',
        width: 8,
        queries: latencyQuantiles('vllm:time_to_first_token_seconds', MODEL_SELECTOR),
      }),
      panel({
        title: 'Inter-token latency',
        description: 'Gap between consecutive generated tokens of a request: the decode step time as a client sees it.',
        unit: 's',
        width: 8,
        queries: latencyQuantiles('vllm:inter_token_latency_seconds', MODEL_SELECTOR),
      }),
      panel({
        title: 'End-to-end latency',
        description: 'From arrival to the last token.',
        unit: 's',
        width: 8,
        queries: latencyQuantiles('vllm:e2e_request_latency_seconds', MODEL_SELECTOR),
      }),
      panel({
        title: 'Running and waiting requests',
        description: 'Requests in the running batch, and requests queued for admission (what routers balance on).',
        unit: 'short',
        width: 8,
        queries: [
          { expr: `sum(vllm:num_requests_running{${MODEL_SELECTOR}})`, legend: 'running' },
          { expr: `sum(vllm:num_requests_waiting{${MODEL_SELECTOR}})`, legend: 'waiting' },
        ],
      }),
      panel({
        title: 'KV-cache use',
        description: 'Share of each instance\'s KV-cache capacity in use. Near 100% new requests wait for room.',
        unit: 'percentunit',
        width: 8,
        min: 0,
        max: 1,
        queries: [{ expr: `max by (instance) (vllm:kv_cache_usage_perc{${MODEL_SELECTOR}})`, legend: '{{instance}}' }],
      }),
      panel({
        title: 'Answers by status',
        description: 'Requests answered per second by HTTP status, including those refused before the engine.',
        unit: 'reqps',
        width: 8,
        stacked: true,
        queries: [{ expr: `sum by (status) (${rate('gateway_requests_total', INSTANCE_SELECTOR)})`, legend: '{{status}}' }],
      }),
      panel({
        title: 'Errors by status and code',
        description: 'HTTP error answers per second by status and OpenAI error code, on every route (authentication included).',
        unit: 'reqps',
        stacked: true,
        queries: [{ expr: `sum by (status, code) (${rate('gateway_errors_total', INSTANCE_SELECTOR)})`, legend: '{{status}} {{code}}' }],
      }),
      panel({
        title: 'Rate-limited requests (429) by tenant',
        description: 'Requests refused by tenant limits per second: the ten tenants refused most, the rest as (other).',
        unit: 'reqps',
        stacked: true,
        queries: [
          {
            expr: topWithOther(10, 'tenant', rate('gateway_requests_total', `${INSTANCE_SELECTOR}, status="429"`)),
            legend: '{{tenant}}',
          },
        ],
      }),
    ],
  });
}

/** The adapters dashboard: what routers see of the LoRA slots, the three cache tiers, and traffic per adapter and tenant. */
import { dashboard, INSTANCE_SELECTOR, panel, quantile, rate, table, topWithOther, type GrafanaDashboard } from './grafana.ts';

const TIER = '{{tier}}';

export function adaptersDashboard(): GrafanaDashboard {
  return dashboard({
    uid: 'peft-gateway-adapters',
    title: 'PEFT gateway / Adapters and tenants',
    description: 'LoRA slots, the slot/host/disk adapter cache, and traffic per adapter and tenant.',
    tags: ['peft-gateway'],
    variableSource: { metric: 'vllm:num_requests_running', hasModelName: true },
    items: [
      table({
        title: 'LoRA adapters in the batch (vllm:lora_requests_info)',
        description:
          'Per instance: the adapters of running and waiting requests, as named by the requests, and the slot count. ' +
          'Routers read this series for LoRA affinity.',
        unit: 'string',
        expr: `vllm:lora_requests_info{${INSTANCE_SELECTOR}}`,
        hide: ['Time', 'Value', '__name__', 'job'],
        rename: { instance: 'Instance', running_lora_adapters: 'Running adapters', waiting_lora_adapters: 'Waiting adapters', max_lora: 'Slots' },
        width: 24,
        height: 6,
      }),
      panel({
        title: 'Cache hit ratio by tier',
        description: 'Share of adapter lookups each tier answered (slot: already in the batch graph; host: parsed in memory).',
        unit: 'percentunit',
        width: 8,
        min: 0,
        max: 1,
        queries: [
          {
            expr:
              `sum by (tier) (${rate('gateway_adapter_cache_hits_total', INSTANCE_SELECTOR)}) / ` +
              `(sum by (tier) (${rate('gateway_adapter_cache_hits_total', INSTANCE_SELECTOR)}) + ` +
              `sum by (tier) (${rate('gateway_adapter_cache_misses_total', INSTANCE_SELECTOR)}))`,
            legend: TIER,
          },
        ],
      }),
      panel({
        title: 'Hits and misses by tier',
        description: 'Adapter lookups per second that each tier answered (hit) or passed on (miss).',
        unit: 'ops',
        width: 8,
        queries: [
          { expr: `sum by (tier) (${rate('gateway_adapter_cache_hits_total', INSTANCE_SELECTOR)})`, legend: `${TIER} hit` },
          { expr: `sum by (tier) (${rate('gateway_adapter_cache_misses_total', INSTANCE_SELECTOR)})`, legend: `${TIER} miss` },
        ],
      }),
      panel({
        title: 'Loads, evictions and failed loads by tier',
        description: 'Adapters brought into a tier per second, evicted from it to make room, and loads that failed (bad files).',
        unit: 'ops',
        width: 8,
        queries: [
          { expr: `sum by (tier) (${rate('gateway_adapter_cache_loads_total', INSTANCE_SELECTOR)})`, legend: `${TIER} load` },
          { expr: `sum by (tier) (${rate('gateway_adapter_cache_evictions_total', INSTANCE_SELECTOR)})`, legend: `${TIER} eviction` },
          { expr: `sum by (tier) (${rate('gateway_adapter_load_failures_total', INSTANCE_SELECTOR)})`, legend: `${TIER} failure` },
        ],
      }),
      panel({
        title: 'Adapter load latency by tier',
        description: 'Time to bring an adapter into a tier: slot is the upload into the batch graph, disk is reading and parsing its files.',
        unit: 's',
        width: 8,
        queries: [0.5, 0.99].map((q) => ({
          expr: quantile(q, 'gateway_adapter_load_seconds', INSTANCE_SELECTOR, ['tier']),
          legend: `${TIER} p${q * 100}`,
        })),
      }),
      panel({
        title: 'Resident bytes by tier',
        description: 'Bytes of adapter weights each tier holds, all instances together.',
        unit: 'bytes',
        width: 8,
        queries: [{ expr: `sum by (tier) (gateway_adapter_cache_resident_bytes{${INSTANCE_SELECTOR}})`, legend: TIER }],
      }),
      panel({
        title: 'Resident adapters by tier',
        description: 'Adapters each tier holds, all instances together.',
        unit: 'short',
        width: 8,
        queries: [{ expr: `sum by (tier) (gateway_adapter_cache_entries{${INSTANCE_SELECTOR}})`, legend: TIER }],
      }),
      panel({
        title: 'Top adapters by traffic',
        description: 'Requests per second of the ten busiest adapters, the rest as (other). Base-model requests are left out.',
        unit: 'reqps',
        stacked: true,
        queries: [
          { expr: topWithOther(10, 'adapter', rate('gateway_requests_total', `${INSTANCE_SELECTOR}, adapter!=""`)), legend: '{{adapter}}' },
        ],
      }),
      panel({
        title: 'Top adapters by cold starts',
        description:
          'Requests per second that had to wait for their adapter to be loaded into a slot (found in host memory or on disk), ' +
          'ten adapters loaded most, the rest as (other).',
        unit: 'reqps',
        stacked: true,
        queries: [{ expr: topWithOther(10, 'adapter', rate('gateway_adapter_cold_starts_total', INSTANCE_SELECTOR)), legend: '{{adapter}}' }],
      }),
      panel({
        title: 'Requests by tenant (top 10)',
        description: 'Requests answered per second for the ten busiest tenants, the rest as (other).',
        unit: 'reqps',
        width: 8,
        stacked: true,
        queries: [{ expr: topWithOther(10, 'tenant', rate('gateway_requests_total', INSTANCE_SELECTOR)), legend: '{{tenant}}' }],
      }),
      panel({
        title: 'Tokens by tenant (top 10)',
        description: 'Prompt and generated tokens per second for the ten tenants using most, the rest as (other).',
        unit: 'suffix:tok/s',
        width: 8,
        stacked: true,
        queries: [{ expr: topWithOther(10, 'tenant', rate('gateway_tokens_total', INSTANCE_SELECTOR)), legend: '{{tenant}}' }],
      }),
      panel({
        title: 'Error answers by tenant (top 10)',
        description: 'Non-2xx answers per second for the ten tenants with most, the rest as (other). 429s are tenant limits.',
        unit: 'reqps',
        width: 8,
        stacked: true,
        queries: [
          { expr: topWithOther(10, 'tenant', rate('gateway_requests_total', `${INSTANCE_SELECTOR}, status!~"2.."`)), legend: '{{tenant}}' },
        ],
      }),
    ],
  });
}

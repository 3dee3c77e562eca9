/**
 * What the live page (`GET /dashboard`) polls: the gateway's own metrics, read from its prom-client registry and
 * summed over labels, plus the engine's slot residents and each tenant's requests in progress. Counters and
 * histograms stay cumulative; the page turns two snapshots into rates and quantiles, as Prometheus would.
 * Nothing here comes from a request's content: prompts and outputs are never in it.
 */
import type { MetricObjectWithValues, MetricValue, Registry } from 'prom-client';
import type { AdapterTier, SchedulerStats } from '../engine/protocol.ts';

export interface CumulativeHistogram {
  /** Upper bounds of the buckets, the last one Infinity (sent as null in JSON). */
  bounds: (number | null)[];
  /** Cumulative count per bucket. */
  counts: number[];
  sum: number;
}

export interface TierSnapshot {
  tier: AdapterTier;
  entries: number;
  bytes: number;
  hits: number;
  misses: number;
  loads: number;
  evictions: number;
  failures: number;
}

export interface TenantActivity {
  tenant: string;
  /** Admitted and generating. */
  running: number;
  /** Admitted, waiting for the engine to start them. */
  waiting: number;
}

export interface LiveSnapshot {
  /** Unix milliseconds when the snapshot was taken. */
  time: number;
  model: string;
  /** Answers of every kind, and by HTTP status. */
  requests: number;
  byStatus: Record<string, number>;
  /** Finished in the engine, by vLLM finish reason. */
  finished: Record<string, number>;
  promptTokens: number;
  generationTokens: number;
  running: number;
  waiting: number;
  kvCacheUsage: number;
  engineUp: boolean;
  ttft: CumulativeHistogram;
  interToken: CumulativeHistogram;
  e2e: CumulativeHistogram;
  tiers: TierSnapshot[];
  slotCapacity: number;
  /** Cache keys of the adapters in runtime slots. */
  slotAdapters: string[];
  /** Cache keys of the most recently used adapters in host memory (at most HOST_ADAPTERS_NAMED of the tier's entries). */
  hostAdapters: string[];
  /** The first STORED_ADAPTERS_NAMED of the store's servable versions, sorted; the disk tier's entries count them all. */
  storedAdapters: string[];
  tenants: TenantActivity[];
}

export interface LiveSnapshotSources {
  registry: Registry;
  model: string;
  stats: SchedulerStats;
  tenants: TenantActivity[];
  /** Ids of every servable version in the adapter store. */
  storedAdapters: string[];
}

/** A store holds thousands of versions; the page names the first ones and counts the rest. */
export const STORED_ADAPTERS_NAMED = 50;

/** Histogram values name their series (`_bucket`, `_sum`, `_count`). */
type Value = MetricValue<string> & { metricName?: string };
type Values = Value[];
type Metric = MetricObjectWithValues<Value>;

function sum(values: Values, where: (labels: Value['labels']) => boolean = () => true): number {
  return values.filter((value) => where(value.labels)).reduce((total, value) => total + value.value, 0);
}

function sumBy(values: Values, label: string): Record<string, number> {
  const totals: Record<string, number> = {};
  for (const { labels, value } of values) {
    const key = String(labels[label]);
    totals[key] = (totals[key] ?? 0) + value;
  }
  return totals;
}

function histogram(metric: Metric | undefined): CumulativeHistogram {
  const counts = new Map<number, number>();
  let total = 0;
  for (const { metricName, labels, value } of metric?.values ?? []) {
    if (metricName?.endsWith('_sum')) total += value;
    if (!metricName?.endsWith('_bucket')) continue;
    const bound = labels.le === '+Inf' ? Infinity : Number(labels.le);
    counts.set(bound, (counts.get(bound) ?? 0) + value);
  }
  const bounds = [...counts.keys()].sort((a, b) => a - b);
  return { bounds: bounds.map((bound) => (bound === Infinity ? null : bound)), counts: bounds.map((bound) => counts.get(bound)!), sum: total };
}

export async function liveSnapshot(sources: LiveSnapshotSources): Promise<LiveSnapshot> {
  const metrics = new Map((await sources.registry.getMetricsAsJSON()).map((metric) => [metric.name, metric as Metric]));
  const values = (name: string): Values => metrics.get(name)?.values ?? [];
  const requests = values('gateway_requests_total');
  const perTier = (name: string, tier: AdapterTier) => sum(values(name), (labels) => labels.tier === tier);
  const tiers: AdapterTier[] = ['slot', 'host', 'disk'];
  return {
    time: Date.now(),
    model: sources.model,
    requests: sum(requests),
    byStatus: sumBy(requests, 'status'),
    finished: sumBy(values('vllm:request_success_total'), 'finished_reason'),
    promptTokens: sum(values('vllm:prompt_tokens_total')),
    generationTokens: sum(values('vllm:generation_tokens_total')),
    running: sum(values('vllm:num_requests_running')),
    waiting: sum(values('vllm:num_requests_waiting')),
    kvCacheUsage: sum(values('vllm:kv_cache_usage_perc')),
    engineUp: sum(values('gateway_engine_up')) === 1,
    ttft: histogram(metrics.get('vllm:time_to_first_token_seconds')),
    interToken: histogram(metrics.get('vllm:inter_token_latency_seconds')),
    e2e: histogram(metrics.get('vllm:e2e_request_latency_seconds')),
    tiers: tiers.map((tier) => ({
      tier,
      entries: perTier('gateway_adapter_cache_entries', tier),
      bytes: perTier('gateway_adapter_cache_resident_bytes', tier),
      hits: perTier('gateway_adapter_cache_hits_total', tier),
      misses: perTier('gateway_adapter_cache_misses_total', tier),
      loads: perTier('gateway_adapter_cache_loads_total', tier),
      evictions: perTier('gateway_adapter_cache_evictions_total', tier),
      failures: perTier('gateway_adapter_load_failures_total', tier),
    })),
    slotCapacity: sources.stats.slots.capacity,
    slotAdapters: [...sources.stats.slots.adapters].sort(),
    hostAdapters: sources.stats.host.adapters,
    storedAdapters: [...sources.storedAdapters].sort().slice(0, STORED_ADAPTERS_NAMED),
    tenants: sources.tenants,
  };
}

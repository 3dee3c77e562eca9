/**
 * Where the load test's adapters were found, from the gateway's own counters (GET /metrics) scraped before and
 * after a phase. The gateway counts each request that found its adapter outside a runtime slot by the tier it came
 * from (`gateway_adapter_cold_starts_total{tier}`: host memory or the disk store); the phase's other adapter
 * requests found theirs in a slot.
 */

export interface TierShares {
  /** Successful requests on adapters in the phase. */
  requests: number;
  /** Share of them whose adapter was in a runtime slot, in host memory, or read from disk, 0..1 (null: none). */
  slot: number | null;
  host: number | null;
  disk: number | null;
  /** Adapters read from disk, and adapters evicted from slots and from host memory, in the phase. */
  diskLoads: number;
  slotEvictions: number;
  hostEvictions: number;
}

/** Counter values summed by series name and tier, keyed `name{tier}`. */
type Counters = Map<string, number>;

const SERIES = new Set(['gateway_adapter_cold_starts_total', 'gateway_adapter_cache_loads_total', 'gateway_adapter_cache_evictions_total']);

export async function scrapeAdapterCounters(url: string): Promise<Counters> {
  const response = await fetch(`${url}/metrics`);
  if (!response.ok) throw new Error(`GET ${url}/metrics answered ${response.status}; tier shares need the gateway's metrics`);
  const counters: Counters = new Map();
  for (const line of (await response.text()).split('\n')) {
    const match = /^(\w+)\{(.*)\} (\S+)$/.exec(line);
    const tier = match && /(?:^|,)tier="(\w+)"/.exec(match[2])?.[1];
    if (!match || !tier || !SERIES.has(match[1])) continue;
    const key = `${match[1]}{${tier}}`;
    counters.set(key, (counters.get(key) ?? 0) + Number(match[3]));
  }
  return counters;
}

export function tierShares(before: Counters, after: Counters, adapterRequests: number): TierShares {
  const delta = (name: string, tier: string) => (after.get(`${name}{${tier}}`) ?? 0) - (before.get(`${name}{${tier}}`) ?? 0);
  const host = delta('gateway_adapter_cold_starts_total', 'host');
  const disk = delta('gateway_adapter_cold_starts_total', 'disk');
  const share = (count: number) => (adapterRequests === 0 ? null : Number((count / adapterRequests).toFixed(4)));
  return {
    requests: adapterRequests,
    slot: share(Math.max(0, adapterRequests - host - disk)),
    host: share(host),
    disk: share(disk),
    diskLoads: delta('gateway_adapter_cache_loads_total', 'disk'),
    slotEvictions: delta('gateway_adapter_cache_evictions_total', 'slot'),
    hostEvictions: delta('gateway_adapter_cache_evictions_total', 'host'),
  };
}

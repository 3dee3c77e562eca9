/**
 * Prometheus metrics for the gateway. The `vllm:` series copy vLLM's names, types, labels and buckets so that
 * Kubernetes inference routers (the gateway-api-inference-extension Endpoint Picker) and existing vLLM dashboards
 * read this gateway as if it were a vLLM server; the `gateway_` series add what vLLM has no words for: tenants
 * and the adapter cache tiers.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { AdapterCacheEvent, AdapterTier, FinishReason, SchedulerStats } from '../engine/protocol.ts';

// A Record rather than a list, so a tier added to the engine protocol fails to compile until it is listed here.
const TIERS: Record<AdapterTier, true> = { slot: true, host: true, disk: true };
const ADAPTER_TIERS = Object.keys(TIERS) as AdapterTier[];

/** How a request ended: as the engine finished it, or 'error' when it failed after reaching the engine. */
export type RequestFinishReason = FinishReason | 'error';

/** The engine's reasons in vLLM's words, the values of `vllm:request_success_total{finished_reason}`. */
const VLLM_FINISH_REASON: Record<RequestFinishReason, string> = {
  stop: 'stop',
  length: 'length',
  cancelled: 'abort',
  error: 'error',
};

/** One request that reached the engine, reported once when it ends. */
export interface FinishedRequest {
  /** Validated tenant name; never free text from the request. */
  tenant: string;
  /** Adapter id as registered, or '' for the bare base model. */
  adapter: string;
  /** HTTP status the gateway answered with. */
  status: number;
  promptTokens: number;
  completionTokens: number;
  finishReason: RequestFinishReason;
  /** Absent when the request ended before its first token. */
  ttftSeconds?: number;
  /** Gap before each token after the first. */
  interTokenSeconds: readonly number[];
  e2eSeconds: number;
  /** Where the request's adapter was found when it started; absent for the base model or a request that never started. */
  adapterTier?: AdapterTier;
}

/** A request refused before the engine saw it (auth, rate limit, unknown adapter, bad input). */
export interface RejectedRequest {
  tenant: string;
  /** Adapter id only when it was resolved; '' otherwise, so a made-up name never becomes a label. */
  adapter: string;
  status: number;
}

export interface GatewayMetricsOptions {
  /** Slots the engine has for adapters; published as `max_lora` for the router's LoRA affinity. */
  maxLora: number;
  /** Served base model name, the `model_name` label on every `vllm:` series (vLLM labels LoRA requests this way too). */
  modelName: string;
  /** Read at every scrape into `gateway_engine_up`; absent: always up. */
  engineAlive?: () => boolean;
  /** Registry to register into; a fresh one by default so several instances can live in one process. */
  registry?: Registry;
}

export interface GatewayMetrics {
  readonly registry: Registry;
  /** Content-Type header value for `metricsText()`. */
  readonly contentType: string;
  /** The engine's state after a step: scheduler gauges, LoRA info, and slot and host residency. */
  setSchedulerState(stats: SchedulerStats): void;
  observeRequest(request: FinishedRequest): void;
  countRejectedRequest(request: RejectedRequest): void;
  /** An HTTP error answer; `code` is the OpenAI error code the gateway chose (a fixed word, never request text). */
  countErrorAnswer(error: { status: number; code: string | null }): void;
  recordAdapterCache(event: AdapterCacheEvent): void;
  /** A stored adapter file found altered after publishing; `file` is one of the fixed adapter file names. */
  countAlteredAdapterFile(file: string): void;
  /** Residency of a tier the engine does not report in its stats (the disk store). */
  setAdapterCacheResidency(tier: AdapterTier, residency: { bytes: number; entries: number }): void;
  metricsText(): Promise<string>;
}

// vLLM's own bucket boundaries, so quantiles line up with vLLM dashboards.
const TTFT_BUCKETS = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0,
  640.0, 2560.0,
];
// vLLM's inter-token buckets start at 10 ms; a small model decodes faster than that, so three finer bounds go below.
const INTER_TOKEN_BUCKETS = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
  40.0, 80.0,
];
const E2E_BUCKETS = [
  0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0,
  7680.0,
];
// From a slot upload of a tiny adapter (sub-millisecond) to reading a large one from cold disk (seconds).
const ADAPTER_LOAD_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export function createGatewayMetrics(options: GatewayMetricsOptions): GatewayMetrics {
  const { maxLora, modelName } = options;
  if (!Number.isInteger(maxLora) || maxLora < 1) {
    throw new Error(`maxLora must be a positive integer (the number of adapter slots), got ${maxLora}`);
  }
  if (modelName === '') throw new Error('modelName must name the served base model; it labels every vllm: series');
  const registry = options.registry ?? new Registry();
  const registers = [registry];
  const model = { model_name: modelName };

  const running = new Gauge({
    name: 'vllm:num_requests_running',
    help: 'Number of requests in model execution batches.',
    labelNames: ['model_name'],
    registers,
  });
  const waiting = new Gauge({
    name: 'vllm:num_requests_waiting',
    help: 'Number of requests waiting to be processed.',
    labelNames: ['model_name'],
    registers,
  });
  const kvCacheUsage = new Gauge({
    name: 'vllm:kv_cache_usage_perc',
    help: 'KV-cache usage. 1 means 100 percent usage.',
    labelNames: ['model_name'],
    registers,
  });
  const loraInfo = new Gauge({
    name: 'vllm:lora_requests_info',
    help: 'Running stats on LoRA requests; the value is the unix time of the update.',
    labelNames: ['running_lora_adapters', 'waiting_lora_adapters', 'max_lora'],
    registers,
  });
  const ttft = new Histogram({
    name: 'vllm:time_to_first_token_seconds',
    help: 'Histogram of time to first token in seconds.',
    labelNames: ['model_name'],
    buckets: TTFT_BUCKETS,
    registers,
  });
  const interToken = new Histogram({
    name: 'vllm:inter_token_latency_seconds',
    help: 'Histogram of inter-token latency in seconds.',
    labelNames: ['model_name'],
    buckets: INTER_TOKEN_BUCKETS,
    registers,
  });
  const e2e = new Histogram({
    name: 'vllm:e2e_request_latency_seconds',
    help: 'Histogram of e2e request latency in seconds.',
    labelNames: ['model_name'],
    buckets: E2E_BUCKETS,
    registers,
  });
  const promptTokens = new Counter({
    name: 'vllm:prompt_tokens_total',
    help: 'Number of prefill tokens processed.',
    labelNames: ['model_name'],
    registers,
  });
  const generationTokens = new Counter({
    name: 'vllm:generation_tokens_total',
    help: 'Number of generation tokens processed.',
    labelNames: ['model_name'],
    registers,
  });
  const requestSuccess = new Counter({
    name: 'vllm:request_success_total',
    help: 'Count of finished requests by finish reason.',
    labelNames: ['model_name', 'finished_reason'],
    registers,
  });

  const gatewayRequests = new Counter({
    name: 'gateway_requests_total',
    help: 'Requests answered, by tenant, adapter and HTTP status.',
    labelNames: ['tenant', 'adapter', 'status'],
    registers,
  });
  const gatewayTokens = new Counter({
    name: 'gateway_tokens_total',
    help: 'Tokens processed, by tenant, adapter and kind (prompt or completion).',
    labelNames: ['tenant', 'adapter', 'kind'],
    registers,
  });
  const coldStarts = new Counter({
    name: 'gateway_adapter_cold_starts_total',
    help: 'Requests whose adapter was not in a runtime slot when they started, by the tier it was found in.',
    labelNames: ['tenant', 'adapter', 'tier'],
    registers,
  });
  const engineAlive = options.engineAlive ?? (() => true);
  new Gauge({
    name: 'gateway_engine_up',
    help: '1 while the engine thread runs, 0 once it has died (the pod still answers scrapes until it is restarted).',
    registers,
    collect() {
      this.set(engineAlive() ? 1 : 0);
    },
  });
  const errorAnswers = new Counter({
    name: 'gateway_errors_total',
    help: 'HTTP error answers, by status and OpenAI error code.',
    labelNames: ['status', 'code'],
    registers,
  });
  const cacheEvents: Record<AdapterCacheEvent['event'], Counter<'tier'>> = {
    hit: new Counter({
      name: 'gateway_adapter_cache_hits_total',
      help: 'Adapter lookups answered by this tier.',
      labelNames: ['tier'],
      registers,
    }),
    miss: new Counter({
      name: 'gateway_adapter_cache_misses_total',
      help: 'Adapter lookups this tier could not answer.',
      labelNames: ['tier'],
      registers,
    }),
    load: new Counter({
      name: 'gateway_adapter_cache_loads_total',
      help: 'Adapters brought into this tier.',
      labelNames: ['tier'],
      registers,
    }),
    eviction: new Counter({
      name: 'gateway_adapter_cache_evictions_total',
      help: 'Adapters evicted from this tier to make room.',
      labelNames: ['tier'],
      registers,
    }),
    failure: new Counter({
      name: 'gateway_adapter_load_failures_total',
      help: 'Loads from this tier that failed (unreadable or invalid adapter files).',
      labelNames: ['tier'],
      registers,
    }),
  };
  const alteredFiles = new Counter({
    name: 'gateway_adapter_altered_files_total',
    help: 'Stored adapter files found altered after publishing (checksum or size no longer matching the manifest).',
    labelNames: ['file'],
    registers,
  });
  const adapterLoadSeconds = new Histogram({
    name: 'gateway_adapter_load_seconds',
    help: 'Time to bring an adapter into this tier.',
    labelNames: ['tier'],
    buckets: ADAPTER_LOAD_BUCKETS,
    registers,
  });
  const residentBytes = new Gauge({
    name: 'gateway_adapter_cache_resident_bytes',
    help: 'Bytes of adapter weights held by this tier.',
    labelNames: ['tier'],
    registers,
  });
  const residentEntries = new Gauge({
    name: 'gateway_adapter_cache_entries',
    help: 'Adapters held by this tier.',
    labelNames: ['tier'],
    registers,
  });

  // Series that exist from the first scrape read as 0 instead of missing, so rate() and alerts work at once.
  for (const histogram of [ttft, interToken, e2e]) histogram.zero(model);
  for (const counter of [promptTokens, generationTokens]) counter.inc(model, 0);
  for (const reason of Object.values(VLLM_FINISH_REASON)) requestSuccess.inc({ ...model, finished_reason: reason }, 0);
  for (const tier of ADAPTER_TIERS) {
    for (const counter of Object.values(cacheEvents)) counter.inc({ tier }, 0);
    adapterLoadSeconds.zero({ tier });
    residentBytes.set({ tier }, 0);
    residentEntries.set({ tier }, 0);
  }

  function setAdapterCacheResidency(tier: AdapterTier, residency: { bytes: number; entries: number }): void {
    residentBytes.set({ tier }, residency.bytes);
    residentEntries.set({ tier }, residency.entries);
  }

  function setSchedulerState(stats: SchedulerStats): void {
    running.set(model, stats.running);
    waiting.set(model, stats.waiting);
    kvCacheUsage.set(model, stats.kvCacheUsage);
    // The router keeps whichever label set carries the newest timestamp; dropping the previous set means a
    // scrape only ever shows the current adapters.
    loraInfo.reset();
    loraInfo.setToCurrentTime({
      running_lora_adapters: adapterList(stats.runningAdapters),
      waiting_lora_adapters: adapterList(stats.waitingAdapters),
      max_lora: String(maxLora),
    });
    setAdapterCacheResidency('slot', { bytes: stats.slots.bytes, entries: stats.slots.resident });
    setAdapterCacheResidency('host', stats.host);
  }

  // An idle server still publishes its slot count, so the router can place the first LoRA request.
  setSchedulerState({
    running: 0,
    waiting: 0,
    kvCacheUsage: 0,
    runningAdapters: [],
    waitingAdapters: [],
    slots: { capacity: maxLora, resident: 0, bytes: 0, adapters: [] },
    host: { entries: 0, bytes: 0, adapters: [] },
  });

  return {
    registry,
    contentType: registry.contentType,
    setSchedulerState,

    observeRequest(request) {
      const owner = { tenant: request.tenant, adapter: request.adapter };
      gatewayRequests.inc({ ...owner, status: String(request.status) });
      gatewayTokens.inc({ ...owner, kind: 'prompt' }, request.promptTokens);
      gatewayTokens.inc({ ...owner, kind: 'completion' }, request.completionTokens);
      promptTokens.inc(model, request.promptTokens);
      generationTokens.inc(model, request.completionTokens);
      requestSuccess.inc({ ...model, finished_reason: VLLM_FINISH_REASON[request.finishReason] });
      if (request.ttftSeconds !== undefined) ttft.observe(model, request.ttftSeconds);
      for (const gap of request.interTokenSeconds) interToken.observe(model, gap);
      e2e.observe(model, request.e2eSeconds);
      if (request.adapterTier !== undefined && request.adapterTier !== 'slot') coldStarts.inc({ ...owner, tier: request.adapterTier });
    },

    countRejectedRequest(request) {
      gatewayRequests.inc({ tenant: request.tenant, adapter: request.adapter, status: String(request.status) });
    },

    countErrorAnswer({ status, code }) {
      errorAnswers.inc({ status: String(status), code: code ?? '' });
    },

    recordAdapterCache({ tier, event, seconds }) {
      cacheEvents[event].inc({ tier });
      if (event === 'load' && seconds !== undefined) adapterLoadSeconds.observe({ tier }, seconds);
    },

    countAlteredAdapterFile(file) {
      alteredFiles.inc({ file });
    },

    setAdapterCacheResidency,

    metricsText: () => registry.metrics(),
  };
}

/** The router splits these labels on ',', so a name with a comma or whitespace would corrupt the list. */
function adapterList(adapters: readonly string[]): string {
  for (const adapter of adapters) {
    if (adapter === '' || /[,\s]/.test(adapter)) {
      throw new Error(
        `adapter name ${JSON.stringify(adapter)} cannot appear in vllm:lora_requests_info: ` +
          'names must be non-empty and contain no commas or whitespace',
      );
    }
  }
  return [...new Set(adapters)].join(',');
}

/**
 * Messages between the engine facade (HTTP thread) and the engine worker thread. Everything here is
 * structured-clone friendly: plain objects, arrays and typed arrays.
 */
import type { LayoutCacheOptions } from './layout-cache.ts';
import type { ExecutionProvider } from '../runtime/model-runner.ts';
import type { SessionSource } from '../runtime/saved-sessions.ts';
import type { LlamaConfig, LoadQuantization } from '../model/types.ts';
import type { SamplingParams } from './sampling.ts';

/**
 * The largest budget whose typical step in a burst of 128-token prompts stays within 3× an undisturbed decode step
 * on the 135M shape (`npm run bench:stall -- --budgets 16,32,64,128`; the engine README has the sweep and what it
 * costs in time to first token).
 */
export const DEFAULT_PREFILL_TOKEN_BUDGET = 16;

export interface EngineOptions {
  /** A GGUF file or a Hugging Face model directory. */
  modelPath: string;
  /** Most sequences decoded together. */
  maxBatch: number;
  /** Runtime adapter slots (adapters resident in the graph's stacked tensors at once). */
  adapterSlots: number;
  /** Slot rank: lower-rank adapters are zero-padded, higher ranks refused. */
  maxLoraRank: number;
  /** Bound on parsed adapters kept in host memory. */
  hostCacheBytes: number;
  /** Bound on sequences waiting to start; past it, submissions are refused as overloaded. */
  maxQueue: number;
  /** Longest prompt + completion; defaults to the model's context length. */
  maxPositions?: number;
  /**
   * Most prompt tokens one engine step prefills beside the decoding rows (rows × padded width); longer prompts
   * are split across steps. Smaller keeps running streams smoother, larger gives new requests their first token
   * sooner. Default DEFAULT_PREFILL_TOKEN_BUDGET.
   */
  prefillTokenBudget?: number;
  threads?: number;
  /** Whether idle engine threads spin between operators (RunnerOptions.threadSpinning); default true. */
  threadSpinning?: boolean;
  /** Whether a session of the mixed graph runs decode rows and prompt chunks together (RunnerOptions.mixedPasses); default true. */
  mixedPasses?: boolean;
  executionProvider?: ExecutionProvider;
  /** Quantize the float projection weights on load (llama.cpp's Q8_0 or Q4_0); a quantized GGUF is served as stored. */
  quantize?: LoadQuantization;
  /** Sequences longer than this many positions decode in a separate pass (ModelRunner.lanes); default 1024. */
  longSequencePositions?: number;
  /** Where the compiled base model is cached between starts (runtime/compiled-model-cache.ts); absent: no cache. */
  compiledModelCacheDir?: string;
  /** Where adapters' slot layouts are kept between loads and starts (layout-cache.ts); absent: no cache. */
  adapterLayoutCache?: LayoutCacheOptions;
}

/** An adapter version as the engine sees it: a stable cache key and the directory holding its PEFT files. */
/** Separates a cache key's version id from the tag of its content: `<tenant>/<adapter>@<version>#<tag>`. */
export const CACHE_KEY_TAG = '#';

/** The version a cache key belongs to: the key up to its content tag (the whole key when it has none). */
export function versionOfCacheKey(key: string): string {
  const tag = key.indexOf(CACHE_KEY_TAG);
  return tag < 0 ? key : key.slice(0, tag);
}

export interface AdapterRef {
  /** Identifies the adapter's content in the engine's caches (see CACHE_KEY_TAG). */
  key: string;
  path: string;
  /** The name the request used for it, reported in the scheduler's stats (the key when absent). */
  servedAs?: string;
  /** The manifest's sizes and checksums of the version's files, verified when the engine first reads them. */
  files?: Readonly<Record<string, { size: number; sha256: string }>>;
}

export interface SequenceRequest {
  id: number;
  /** Who the sequence is for; the scheduler shares the batch fairly between tenants. */
  tenant: string;
  promptIds: number[];
  adapter: AdapterRef | null;
  sampling: SamplingParams;
  maxTokens: number;
  /** Generating any of these ends the sequence with reason "stop". */
  stopTokenIds: number[];
}

export type FinishReason = 'stop' | 'length' | 'cancelled';

export interface TokenEvent {
  id: number;
  token: number;
  /** Present when the request asked for logprobs or samples stochastically. */
  logprob?: number;
  topLogprobs?: { id: number; logprob: number }[];
}

export interface FinishEvent {
  id: number;
  reason: FinishReason;
  promptTokens: number;
  completionTokens: number;
}

/** Timing of a sequence's start: waiting in the queue (including adapter loading) and prefill. */
export interface StartEvent {
  id: number;
  queueMs: number;
  prefillMs: number;
  adapterLoad?: AdapterLoadEvent;
}

export type AdapterTier = 'slot' | 'host' | 'disk';

export interface AdapterLoadEvent {
  key: string;
  /** The tier the adapter was found in. */
  tier: AdapterTier;
  ms: number;
}

export interface AdapterCacheEvent {
  tier: AdapterTier;
  /** `failure`: a load from this tier that threw (unreadable or invalid files); the request fails. */
  event: 'hit' | 'miss' | 'load' | 'eviction' | 'failure';
  seconds?: number;
}

/** Stats name this many host-tier adapters: they travel with every step's report, so the list stays short. */
export const HOST_ADAPTERS_NAMED = 50;

export interface SchedulerStats {
  running: number;
  waiting: number;
  /** Share of the KV cache's token capacity in use, 0..1. */
  kvCacheUsage: number;
  /** Adapters of running and waiting sequences, each by the name its requests used (AdapterRef.servedAs). */
  runningAdapters: string[];
  waitingAdapters: string[];
  /** `adapters`: the cache keys of the adapters resident in slots (at most `capacity` of them). */
  slots: { capacity: number; resident: number; bytes: number; adapters: string[] };
  /** `adapters`: cache keys of the most recently used adapters in host memory, at most HOST_ADAPTERS_NAMED. */
  host: { entries: number; bytes: number; adapters: string[] };
}

export interface ModelInfo {
  config: LlamaConfig;
  checksum: string;
  format: 'gguf' | 'hf';
  path: string;
  maxPositions: number;
  /**
   * Whether the compiled model came from the cache, where the sessions came from (saved-sessions.ts), and the
   * milliseconds of each part of the engine's start.
   */
  startup: { cached: boolean; sessions: SessionSource; ms: Record<string, number> };
}

export type ToWorker =
  | { type: 'submit'; request: SequenceRequest }
  | { type: 'cancel'; id: number }
  | { type: 'evict-adapter'; version: string }
  | { type: 'preload-adapter'; id: number; ref: AdapterRef }
  | { type: 'prepare-layout'; ref: AdapterRef }
  | { type: 'shutdown' };

export type FromWorker =
  | { type: 'ready'; info: ModelInfo }
  | { type: 'startup-failed'; message: string }
  | {
      type: 'step';
      started: StartEvent[];
      tokens: TokenEvent[];
      finished: FinishEvent[];
      adapterCache: AdapterCacheEvent[];
      stats: SchedulerStats;
    }
  | { type: 'sequence-failed'; id: number; message: string; code: string }
  /** A preload-adapter request ended: the adapter is in the host cache, or `error` says why not. */
  | { type: 'adapter-preloaded'; id: number; error?: string }
  /** The engine thread stopped at a step boundary because it was paused (see Engine.pause). */
  | { type: 'paused' }
  | { type: 'closed' };

/**
 * What the engine thread starts with: its options and the step gate, one Int32 shared with the HTTP thread that
 * says how many more steps the thread may run before it pauses (RUN_FREELY: no limit).
 */
export interface EngineWorkerData extends EngineOptions {
  stepGate: SharedArrayBuffer;
}

export const RUN_FREELY = -1;

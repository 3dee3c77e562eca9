/**
 * The gateway's settings, resolved once at start from environment variables and an optional tenants file
 * (GATEWAY_CONFIG, YAML or JSON). Every value is validated here so a bad deployment fails at boot with the variable
 * or key path at fault, never on the first request. API keys are kept only as sha256 digests.
 */

import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { availableParallelism } from 'node:os';
import { join as joinPath } from 'node:path';
import { LineCounter, parse as parseYaml, YAMLError } from 'yaml';
import { DEFAULT_PREFILL_TOKEN_BUDGET } from '../engine/protocol.ts';
import type { LayoutCacheOptions } from '../engine/layout-cache.ts';
import { checkTenantName, StoreError } from '../registry/adapter-names.ts';
import { isJsonObject } from '../storage/json-files.ts';
import type { LoadQuantization } from '../model/types.ts';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type ExecutionProvider = 'cpu' | 'cuda';

export interface TenantLimits {
  maxConcurrentRequests: number;
  tokensPerMinute: number;
  /** How many of the tenant's requests may wait in the engine queue; absent: only MAX_QUEUE applies. */
  maxQueuedRequests?: number;
  /** The tenant's unfinished fine-tuning jobs; absent: MAX_ACTIVE_JOBS_PER_TENANT. */
  maxActiveJobs?: number;
  /** All of the tenant's stored fine-tuning files together; absent: MAX_STORED_BYTES_PER_TENANT. */
  maxStoredBytes?: number;
}

export interface TenantSettings {
  name: string;
  /** sha256 of each key the tenant may present (several, so keys can be rotated without downtime). */
  keyDigests: readonly Buffer[];
  limits: TenantLimits;
}

export interface EngineSettings {
  maxBatchSize: number;
  adapterSlots: number;
  maxLoraRank: number;
  hostCacheBytes: number;
  maxQueue: number;
  /** Prompt tokens one engine step may prefill beside the decoding rows (stall-free batching). */
  prefillTokenBudget: number;
  threads: number;
  /** ENGINE_THREAD_SPINNING: idle engine threads spin between operators (`on`) or sleep (`off`). */
  threadSpinning: boolean;
  /** ENGINE_MIXED_PASSES: decode rows and prompt chunks share a pass (`on`), or the memory of its session is saved (`off`). */
  mixedPasses: boolean;
  executionProvider: ExecutionProvider;
  /** On-load quantization of float projection weights (QUANTIZE); absent: served as the file stores them. */
  quantize?: LoadQuantization;
  /** Where the compiled base model is cached between starts (MODEL_CACHE_DIR); absent when set to `off`. */
  compiledModelCacheDir?: string;
  /** Adapters' slot layouts kept on disk, in MODEL_CACHE_DIR (LAYOUT_CACHE_BYTES); absent when either is off. */
  adapterLayoutCache?: LayoutCacheOptions;
}

/** Fine-tuning: where files and jobs live, per-tenant limits, and whether `npm start` runs the trainer sidecar. */
export interface TrainingSettings {
  dir: string;
  maxFileBytes: number;
  maxActiveJobsPerTenant: number;
  maxStoredBytesPerTenant: number;
  /** `child`: `npm start` starts the sidecar as a child process; `external`: it runs separately (`npm run trainer`). */
  trainer: 'child' | 'external';
}

/** Per-socket limits of the WebSocket API, so one connection cannot take more than its share. */
export interface WebSocketLimits {
  /** Largest client message; a larger one closes the socket with 1009. */
  maxMessageBytes: number;
  /** Responses in progress at once on one socket; each holds an engine row. */
  maxResponsesPerSocket: number;
  /** Client messages per minute on one socket (a bucket of one minute's messages, refilled continuously). */
  messagesPerMinute: number;
}

export interface GatewaySettings {
  port: number;
  host: string;
  modelPath: string | undefined;
  modelName: string | undefined;
  adaptersDir: string;
  maxBodyBytes: number;
  maxAdapterBytes: number;
  engine: EngineSettings;
  training: TrainingSettings;
  /** How often WebSocket clients are pinged; one that misses a pong is disconnected. */
  webSocketPingSeconds: number;
  webSocketLimits: WebSocketLimits;
  /** How long a shutdown lets in-flight requests finish before cancelling them. */
  shutdownGraceSeconds: number;
  /** OTLP endpoint for traces; tracing is off when absent. */
  otlpEndpoint: string | undefined;
  logLevel: LogLevel;
  /** The tenants file as given in GATEWAY_CONFIG; absent when tenants come from the environment. */
  configFile: string | undefined;
  adminKeyDigests: readonly Buffer[];
  tenants: readonly TenantSettings[];
  /** True when a published development key can authenticate; the caller should warn loudly. */
  usingDevelopmentKeys: boolean;
}

/** The tenant that exists when no GATEWAY_CONFIG is given. */
export const LOCAL_TENANT_NAME = 'local';
/** Published development keys: anyone can read them here, so they must never guard a reachable server. */
export const DEVELOPMENT_API_KEY = 'sk-local-dev';
export const DEVELOPMENT_ADMIN_KEY = 'sk-admin-dev';

/** Limits for a tenant whose file entry and `defaults` leave a value out. */
export const BUILT_IN_TENANT_LIMITS: Readonly<TenantLimits> = Object.freeze({ maxConcurrentRequests: 8, tokensPerMinute: 100_000 });

/** Keys travel in `Authorization: Bearer <key>`, so only visible ASCII without spaces can ever be presented. */
const API_KEY_PATTERN = /^[\x21-\x7e]+$/;
const SHA256_HEX_PATTERN = /^[0-9a-fA-F]{64}$/;

const KIB = 1024;
const MIB = 1024 * KIB;
const GIB = 1024 * MIB;
const BYTE_UNITS: Record<string, number> = { '': 1, KiB: KIB, MiB: MIB, GiB: GIB };
/** Bounds of a tenant's stored fine-tuning files, as MAX_STORED_BYTES_PER_TENANT or a tenant's `max_stored_bytes`. */
const STORED_BYTES_RANGE = { min: KIB, max: 1024 * GIB };

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export function sha256Digest(key: string): Buffer {
  return createHash('sha256').update(key, 'utf8').digest();
}

// ---- environment variables ----

/** Empty values count as unset, as orchestrators often render an absent variable as `NAME=`. */
export function envString(env: NodeJS.ProcessEnv, name: string): string | undefined {
  const value = env[name]?.trim();
  return value ? value : undefined;
}

export function envInteger(env: NodeJS.ProcessEnv, name: string, fallback: number, min: number, max: number): number {
  const raw = envString(env, name);
  if (raw === undefined) return fallback;
  const value = /^\d+$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  }
  return value;
}

/** `512MiB`, `4096`: the byte count, or NaN when the text is not one. */
function parseByteCount(raw: string): number {
  const match = /^(\d+)\s*(KiB|MiB|GiB)?$/.exec(raw);
  return match ? Number(match[1]) * BYTE_UNITS[match[2] ?? ''] : NaN;
}

function byteCountRule(min: number, max: number): string {
  return `a byte count from ${min} to ${max}, optionally with a unit (KiB, MiB, GiB) as in "256MiB"`;
}

/** Byte counts accept a binary unit (`512MiB`) because raw byte counts of this size are easy to get wrong. */
export function envBytes(env: NodeJS.ProcessEnv, name: string, fallback: number, min: number, max: number): number {
  const raw = envString(env, name);
  if (raw === undefined) return fallback;
  const value = parseByteCount(raw);
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name} must be ${byteCountRule(min, max)}, got ${JSON.stringify(raw)}`);
  }
  return value;
}

export function envChoice<T extends string>(env: NodeJS.ProcessEnv, name: string, choices: readonly T[], fallback: T): T {
  const raw = envString(env, name);
  if (raw === undefined) return fallback;
  if (!(choices as readonly string[]).includes(raw)) {
    throw new ConfigError(`${name} must be one of ${choices.join(', ')}, got ${JSON.stringify(raw)}`);
  }
  return raw as T;
}

/** QUANTIZE: `q8` or `q4` quantize float weights on load; `none` (the default) serves them as stored. */
function envQuantization(env: NodeJS.ProcessEnv): { quantize?: LoadQuantization } {
  const choice = envChoice(env, 'QUANTIZE', ['none', 'q8', 'q4'] as const, 'none');
  return choice === 'none' ? {} : { quantize: choice };
}

export function envHost(env: NodeJS.ProcessEnv): string {
  const host = envString(env, 'HOST') ?? '127.0.0.1';
  if (!isIP(host) && !/^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(host)) {
    throw new ConfigError(`HOST must be an IP address or host name (0.0.0.0 to listen on every interface), got ${JSON.stringify(host)}`);
  }
  return host;
}

export function envUrl(env: NodeJS.ProcessEnv, name: string): string | undefined {
  const raw = envString(env, name);
  if (raw === undefined) return undefined;
  let protocol: string;
  try {
    protocol = new URL(raw).protocol;
  } catch {
    protocol = '';
  }
  if (protocol !== 'http:' && protocol !== 'https:') {
    throw new ConfigError(`${name} must be an http:// or https:// URL such as http://localhost:4318, got ${JSON.stringify(raw)}`);
  }
  return raw;
}

/** The key value is never echoed: error messages end up in logs. */
function envApiKey(env: NodeJS.ProcessEnv, name: string): string | undefined {
  const key = envString(env, name);
  if (key !== undefined && !API_KEY_PATTERN.test(key)) {
    throw new ConfigError(`${name} must consist of visible ASCII characters without spaces`);
  }
  return key;
}

// ---- tenants file ----

type Mapping = Record<string, unknown>;

/** Validates the parsed tenants file, naming the key path of the first problem found. */
class TenantsFileReader {
  readonly #file: string;
  /** Where each digest was declared, to refuse one key serving two principals. */
  readonly #digestOwners = new Map<string, string>();

  constructor(file: string) {
    this.#file = file;
  }

  #fail(path: string, problem: string): never {
    throw new ConfigError(`${this.#file}: ${path || 'the top level'} ${problem}`);
  }

  /** `allowedKeys` absent: any key is allowed (the mapping is keyed by names). */
  #mapping(value: unknown, path: string, allowedKeys?: readonly string[]): Mapping {
    if (!isJsonObject(value)) this.#fail(path, 'must be a mapping');
    const mapping = value as Mapping;
    if (allowedKeys) {
      const unknownKey = Object.keys(mapping).find((key) => !allowedKeys.includes(key));
      if (unknownKey !== undefined) {
        this.#fail(join(path, unknownKey), `is not a known key; expected one of ${allowedKeys.join(', ')}`);
      }
    }
    return mapping;
  }

  #integer(value: unknown, path: string, min: number): number {
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
      this.#fail(path, `must be an integer of at least ${min}, got ${JSON.stringify(value)}`);
    }
    return value;
  }

  #bytes(value: unknown, path: string, min: number, max: number): number {
    const bytes = typeof value === 'number' ? value : typeof value === 'string' ? parseByteCount(value.trim()) : NaN;
    if (!Number.isSafeInteger(bytes) || bytes < min || bytes > max) {
      this.#fail(path, `must be ${byteCountRule(min, max)}, got ${JSON.stringify(value)}`);
    }
    return bytes;
  }

  #limits(value: unknown, path: string, inherited: TenantLimits): TenantLimits {
    if (value === undefined) return inherited;
    const raw = this.#mapping(value, path, [
      'max_concurrent_requests',
      'tokens_per_minute',
      'max_queued_requests',
      'max_active_jobs',
      'max_stored_bytes',
    ]);
    const limits: TenantLimits = {
      maxConcurrentRequests:
        raw.max_concurrent_requests === undefined
          ? inherited.maxConcurrentRequests
          : this.#integer(raw.max_concurrent_requests, join(path, 'max_concurrent_requests'), 1),
      tokensPerMinute:
        raw.tokens_per_minute === undefined
          ? inherited.tokensPerMinute
          : this.#integer(raw.tokens_per_minute, join(path, 'tokens_per_minute'), 1),
    };
    const maxQueued =
      raw.max_queued_requests === undefined
        ? inherited.maxQueuedRequests
        : this.#integer(raw.max_queued_requests, join(path, 'max_queued_requests'), 0);
    if (maxQueued !== undefined) limits.maxQueuedRequests = maxQueued;
    const maxActiveJobs =
      raw.max_active_jobs === undefined
        ? inherited.maxActiveJobs
        : this.#integer(raw.max_active_jobs, join(path, 'max_active_jobs'), 1);
    if (maxActiveJobs !== undefined) limits.maxActiveJobs = maxActiveJobs;
    const maxStoredBytes =
      raw.max_stored_bytes === undefined
        ? inherited.maxStoredBytes
        : this.#bytes(raw.max_stored_bytes, join(path, 'max_stored_bytes'), STORED_BYTES_RANGE.min, STORED_BYTES_RANGE.max);
    if (maxStoredBytes !== undefined) limits.maxStoredBytes = maxStoredBytes;
    return limits;
  }

  /**
   * Each entry is `{ sha256: <hex> }` or `{ key: <plaintext> }`; plaintext is hashed here and not kept. An empty
   * list is refused where it would make the owner unreachable (a tenant), allowed where it means "none" (admins).
   */
  #keyDigests(value: unknown, path: string, allowEmpty: boolean): Buffer[] {
    if (!Array.isArray(value) || (value.length === 0 && !allowEmpty)) {
      const list = allowEmpty ? 'a list' : 'a non-empty list';
      this.#fail(path, `must be ${list} of { sha256: "<64 hex digits>" } or { key: "<key>" } entries`);
    }
    return value.map((entry, index) => {
      const entryPath = `${path}[${index}]`;
      const raw = this.#mapping(entry, entryPath, ['sha256', 'key']);
      let digest: Buffer;
      if (('sha256' in raw) === ('key' in raw)) {
        this.#fail(entryPath, 'must have exactly one of sha256 or key');
      } else if ('sha256' in raw) {
        if (typeof raw.sha256 !== 'string' || !SHA256_HEX_PATTERN.test(raw.sha256)) {
          this.#fail(join(entryPath, 'sha256'), 'must be a quoted string of 64 hex digits (printf %s "$KEY" | sha256sum)');
        }
        digest = Buffer.from(raw.sha256, 'hex');
      } else {
        if (typeof raw.key !== 'string' || !API_KEY_PATTERN.test(raw.key)) {
          this.#fail(join(entryPath, 'key'), 'must be a quoted string of visible ASCII characters without spaces');
        }
        digest = sha256Digest(raw.key);
      }
      this.#claim(digest, entryPath);
      return digest;
    });
  }

  /** Tenant names become directory names in the adapter store, so the store's rule applies. */
  #checkTenantName(name: string, path: string): void {
    try {
      checkTenantName(name);
    } catch (error) {
      if (!(error instanceof StoreError)) throw error;
      this.#fail(path, `is refused: ${error.message}`);
    }
  }

  #claim(digest: Buffer, path: string): void {
    const hex = digest.toString('hex');
    const owner = this.#digestOwners.get(hex);
    if (owner !== undefined) {
      this.#fail(path, `is the same key as ${owner}; every key must identify exactly one tenant or the admins`);
    }
    this.#digestOwners.set(hex, path);
  }

  settings(document: unknown): { adminKeyDigests: Buffer[]; tenants: TenantSettings[] } {
    const root = this.#mapping(document, '', ['admin_keys', 'tenants', 'defaults']);
    const adminKeyDigests = root.admin_keys === undefined ? [] : this.#keyDigests(root.admin_keys, 'admin_keys', true);
    const defaults = root.defaults === undefined ? {} : this.#mapping(root.defaults, 'defaults', ['limits']);
    const defaultLimits = this.#limits(defaults.limits, 'defaults.limits', BUILT_IN_TENANT_LIMITS);

    if (root.tenants === undefined) this.#fail('tenants', 'is required: a mapping from tenant name to { keys, limits }');
    const tenantEntries = Object.entries(this.#mapping(root.tenants, 'tenants'));
    if (tenantEntries.length === 0) this.#fail('tenants', 'must name at least one tenant');
    const tenants = tenantEntries.map(([name, value]): TenantSettings => {
      const path = join('tenants', name);
      this.#checkTenantName(name, path);
      const tenant = this.#mapping(value, path, ['keys', 'limits']);
      return {
        name,
        keyDigests: this.#keyDigests(tenant.keys, join(path, 'keys'), false),
        limits: this.#limits(tenant.limits, join(path, 'limits'), defaultLimits),
      };
    });
    return { adminKeyDigests, tenants };
  }
}

function join(path: string, key: string): string {
  return path ? `${path}.${key}` : key;
}

async function readTenantsFile(file: string): Promise<{ adminKeyDigests: Buffer[]; tenants: TenantSettings[] }> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new ConfigError(`GATEWAY_CONFIG: cannot read ${file}: ${(error as Error).message}`);
  }
  const lineCounter = new LineCounter();
  let document: unknown;
  try {
    // Plain errors, not pretty ones: a pretty error quotes the offending line, which may hold a plaintext key.
    // Silent: the parser's warnings would go to stderr quoting the file, which holds keys.
    document = parseYaml(text, { lineCounter, prettyErrors: false, logLevel: 'error' });
  } catch (error) {
    // The parser also throws plain errors (an alias to an anchor that does not exist is a ReferenceError).
    if (!(error instanceof YAMLError)) throw new ConfigError(`${file}: not valid YAML or JSON: ${(error as Error).message}`);
    const { line, col } = lineCounter.linePos(error.pos[0]);
    throw new ConfigError(`${file}:${line}:${col}: not valid YAML or JSON: ${error.message}`);
  }
  return new TenantsFileReader(file).settings(document);
}

// ---- assembly ----

/**
 * Without a tenants file the one `local` tenant may fill every batch row: a development gateway driven by as many
 * clients as MAX_BATCH_SIZE should batch them, not answer 429.
 */
function tenantsFromEnvironment(env: NodeJS.ProcessEnv, maxBatchSize: number): { adminKeyDigests: Buffer[]; tenants: TenantSettings[] } {
  const apiKey = envApiKey(env, 'GATEWAY_API_KEY') ?? DEVELOPMENT_API_KEY;
  const adminKey = envApiKey(env, 'GATEWAY_ADMIN_KEY') ?? DEVELOPMENT_ADMIN_KEY;
  if (apiKey === adminKey) {
    throw new ConfigError('GATEWAY_API_KEY and GATEWAY_ADMIN_KEY must differ: a key identifies either the tenant or the admins');
  }
  return {
    adminKeyDigests: [sha256Digest(adminKey)],
    tenants: [{ name: LOCAL_TENANT_NAME, keyDigests: [sha256Digest(apiKey)], limits: localTenantLimits(maxBatchSize) }],
  };
}

/**
 * MODEL_CACHE_DIR: a directory (default `model-cache`), or `off` to compile the base model at every start. Adapters'
 * slot layouts are kept in its `adapter-layouts` directory, up to LAYOUT_CACHE_BYTES (`0` keeps none).
 */
function envModelCacheDirs(env: NodeJS.ProcessEnv): Pick<EngineSettings, 'compiledModelCacheDir' | 'adapterLayoutCache'> {
  const dir = envString(env, 'MODEL_CACHE_DIR') ?? 'model-cache';
  const layoutBytes = envBytes(env, 'LAYOUT_CACHE_BYTES', 4 * GIB, 0, 1024 * GIB);
  if (dir === 'off') return {};
  return { compiledModelCacheDir: dir, ...(layoutBytes > 0 ? { adapterLayoutCache: { dir: joinPath(dir, 'adapter-layouts'), maxBytes: layoutBytes } } : {}) };
}

export function localTenantLimits(maxBatchSize: number): TenantLimits {
  return { ...BUILT_IN_TENANT_LIMITS, maxConcurrentRequests: Math.max(BUILT_IN_TENANT_LIMITS.maxConcurrentRequests, maxBatchSize) };
}

function acceptsDevelopmentKey(adminKeyDigests: readonly Buffer[], tenants: readonly TenantSettings[]): boolean {
  const published = [sha256Digest(DEVELOPMENT_API_KEY), sha256Digest(DEVELOPMENT_ADMIN_KEY)];
  const stored = [...adminKeyDigests, ...tenants.flatMap((tenant) => tenant.keyDigests)];
  return stored.some((digest) => published.some((known) => known.equals(digest)));
}

export async function loadGatewaySettings(env: NodeJS.ProcessEnv): Promise<GatewaySettings> {
  const configFile = envString(env, 'GATEWAY_CONFIG');
  if (configFile !== undefined) {
    for (const name of ['GATEWAY_API_KEY', 'GATEWAY_ADMIN_KEY']) {
      if (envString(env, name) !== undefined) {
        throw new ConfigError(`${name} is set but GATEWAY_CONFIG is too; with a tenants file, list every key in the file and unset ${name}`);
      }
    }
  }
  const maxBodyBytes = envBytes(env, 'MAX_BODY_BYTES', MIB, KIB, GIB);
  const settings: Omit<GatewaySettings, 'configFile' | 'adminKeyDigests' | 'tenants' | 'usingDevelopmentKeys'> = {
    port: envInteger(env, 'PORT', 8000, 0, 65535),
    host: envHost(env),
    modelPath: envString(env, 'MODEL_PATH'),
    modelName: envString(env, 'MODEL_NAME'),
    adaptersDir: envString(env, 'ADAPTERS_DIR') ?? 'adapters',
    maxBodyBytes,
    maxAdapterBytes: envBytes(env, 'MAX_ADAPTER_BYTES', 256 * MIB, KIB, 64 * GIB),
    engine: {
      maxBatchSize: envInteger(env, 'MAX_BATCH_SIZE', 16, 1, 1024),
      adapterSlots: envInteger(env, 'ADAPTER_SLOTS', 8, 1, 1024),
      maxLoraRank: envInteger(env, 'MAX_LORA_RANK', 16, 1, 1024),
      hostCacheBytes: envBytes(env, 'HOST_CACHE_BYTES', GIB, 0, 1024 * GIB),
      maxQueue: envInteger(env, 'MAX_QUEUE', 256, 1, 1_000_000),
      prefillTokenBudget: envInteger(env, 'PREFILL_TOKEN_BUDGET', DEFAULT_PREFILL_TOKEN_BUDGET, 1, 65_536),
      threads: envInteger(env, 'ENGINE_THREADS', availableParallelism(), 1, 1024),
      threadSpinning: envChoice(env, 'ENGINE_THREAD_SPINNING', ['on', 'off'] as const, 'on') === 'on',
      mixedPasses: envChoice(env, 'ENGINE_MIXED_PASSES', ['on', 'off'] as const, 'on') === 'on',
      executionProvider: envChoice(env, 'EXECUTION_PROVIDER', ['cpu', 'cuda'] as const, 'cpu'),
      ...envQuantization(env),
      ...envModelCacheDirs(env),
    },
    training: {
      dir: envString(env, 'TRAINING_DIR') ?? 'training',
      maxFileBytes: envBytes(env, 'MAX_FILE_BYTES', 64 * MIB, KIB, 64 * GIB),
      maxActiveJobsPerTenant: envInteger(env, 'MAX_ACTIVE_JOBS_PER_TENANT', 4, 1, 100_000),
      maxStoredBytesPerTenant: envBytes(env, 'MAX_STORED_BYTES_PER_TENANT', GIB, STORED_BYTES_RANGE.min, STORED_BYTES_RANGE.max),
      trainer: envChoice(env, 'TRAINER', ['child', 'external'] as const, 'child'),
    },
    webSocketPingSeconds: envInteger(env, 'WS_PING_INTERVAL_SECONDS', 30, 1, 3600),
    webSocketLimits: {
      maxMessageBytes: envBytes(env, 'WS_MAX_MESSAGE_BYTES', maxBodyBytes, KIB, GIB),
      maxResponsesPerSocket: envInteger(env, 'WS_MAX_RESPONSES_PER_SOCKET', 16, 1, 1024),
      messagesPerMinute: envInteger(env, 'WS_MESSAGES_PER_MINUTE', 600, 1, 1_000_000),
    },
    shutdownGraceSeconds: envInteger(env, 'SHUTDOWN_GRACE_SECONDS', 10, 0, 3600),
    otlpEndpoint: envUrl(env, 'OTEL_EXPORTER_OTLP_ENDPOINT'),
    logLevel: envChoice(env, 'LOG_LEVEL', ['debug', 'info', 'warn', 'error'] as const, 'info'),
  };
  const { adminKeyDigests, tenants } =
    configFile === undefined ? tenantsFromEnvironment(env, settings.engine.maxBatchSize) : await readTenantsFile(configFile);
  return {
    ...settings,
    configFile,
    adminKeyDigests,
    tenants,
    usingDevelopmentKeys: acceptsDevelopmentKey(adminKeyDigests, tenants),
  };
}

/**
 * Load test for a running gateway: N concurrent streaming clients (the official `openai` SDK) spread over M adapters
 * whose popularity follows a seeded Zipf distribution. Reports time to first token, the gaps between streamed
 * deltas (inter-token latency), throughput and errors by status. Usage: loadtest/README.md.
 *   npm run loadtest -- --url http://127.0.0.1:8000 --key sk-local-dev --model stories260K-hf \
 *     --concurrency 4 --adapters 3 --requests 12 --max-tokens 8 --setup-adapters --model-path ../shared/models/stories260K-hf
 */
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import OpenAI, { APIConnectionError, APIConnectionTimeoutError, APIError } from 'openai';
import { loraAdapterFiles, randomLoraAdapter } from '../src/adapters/lora-writer.ts';
import { createRng } from '../src/engine/random.ts';
import { configFromHuggingFace } from '../src/model/config.ts';
import { LORA_TARGET_MODULES } from '../src/model/types.ts';
import { scrapeAdapterCounters, tierShares, type TierShares } from './adapter-tiers.ts';
import { zipfSampler } from './zipf.ts';

export interface LoadTestOptions {
  /** Gateway base URL; only loopback hosts are accepted. */
  url: string;
  apiKey: string;
  /** The base model name the gateway serves. */
  model: string;
  mode: 'chat' | 'completions';
  concurrency: number;
  /** Adapters to spread requests over; 0 sends every request to the base model. */
  adapters: number;
  /** Requests to send in all (fewer if `durationSeconds` runs out first). */
  requests: number;
  maxTokens: number;
  /** Zipf exponent of adapter popularity (0: uniform). */
  zipfExponent: number;
  /** No request starts after this many seconds; requests in flight then still finish. */
  durationSeconds: number;
  /** Per-request limit; a request that takes longer counts as a `timeout` error. */
  requestTimeoutSeconds: number;
  temperature: number;
  seed: number;
  /** The tenant that owns the adapters (the key's tenant when uploading). */
  tenant: string;
  /** Adapters are named `<prefix>-0` … `<prefix>-(M-1)`. */
  adapterPrefix: string;
  /** Upload any of those adapters that do not exist yet, generated from the base model's config. */
  setupAdapters: boolean;
  /** The base model directory (its config.json shapes the generated adapters); needed with `setupAdapters`. */
  modelPath?: string;
  adapterRank: number;
  /**
   * After the run, replay the same requests over only the first N adapters, warmed into slots first: the
   * all-resident baseline that the run's TTFT is compared with (0: no baseline).
   */
  residentBaseline: number;
  log?: (line: string) => void;
}

/** Milliseconds. */
export interface LatencySummary {
  samples: number;
  mean: number | null;
  p50: number | null;
  p90: number | null;
  p99: number | null;
  max: number | null;
}

export interface LoadTestReport {
  settings: {
    url: string;
    mode: LoadTestOptions['mode'];
    concurrency: number;
    adapters: number;
    zipfExponent: number;
    maxTokens: number;
    plannedRequests: number;
    seed: number;
  };
  /** Requests sent; always `succeeded + failed`. */
  requests: number;
  succeeded: number;
  failed: number;
  /** Failed requests by HTTP status, or `timeout`, `connection`, `stream` (an error after the stream began). */
  errors: Record<string, number>;
  /** Requests sent per model id (base or `<base>+<tenant>/<adapter>`). */
  requestsByModel: Record<string, number>;
  durationSeconds: number;
  requestsPerSecond: number;
  /** Completion tokens of the successful requests. */
  outputTokens: number;
  outputTokensPerSecond: number;
  timeToFirstTokenMs: LatencySummary;
  /** Gaps between consecutive streamed deltas, over all requests. */
  interTokenLatencyMs: LatencySummary;
  requestLatencyMs: LatencySummary;
  /** Which cache tier answered the run's adapter lookups (from the gateway's metrics); null without adapters. */
  adapterTiers: TierShares | null;
  /** The longest gap between streamed deltas over their median: how badly newcomers stalled running streams. */
  maxInterTokenGapOverMedian: number | null;
  /** The same requests on `residentBaseline` warmed adapters, and this run's TTFT p99 over the baseline's. */
  residentBaseline: {
    adapters: number;
    timeToFirstTokenMs: LatencySummary;
    interTokenLatencyMs: LatencySummary;
    adapterTiers: TierShares | null;
    ttftP99Ratio: number | null;
  } | null;
}

export const DEFAULT_OPTIONS = {
  mode: 'chat',
  concurrency: 8,
  adapters: 0,
  requests: 64,
  maxTokens: 64,
  zipfExponent: 1.1,
  durationSeconds: 300,
  requestTimeoutSeconds: 120,
  temperature: 0,
  seed: 1,
  tenant: 'local',
  adapterPrefix: 'loadtest',
  setupAdapters: false,
  adapterRank: 8,
  residentBaseline: 0,
} as const satisfies Partial<LoadTestOptions>;

/** Varied lengths, so prefill and decode interleave in the batch as in real traffic. */
const PROMPTS = [
  'Once upon a time',
  'Tell me a story about a little girl who found a red ball in the park.',
  'The cat sat on the mat and looked at the dog.',
  'Write a short poem about the sea.',
  'One day, Tom and his mom went to the store to buy some food for dinner. On the way, they saw',
  'Why is the sky blue?',
  'List three things that are green.',
  'Lily wanted to play outside, but it was raining. She asked her dad',
];

interface RequestOutcome {
  model: string;
  error?: string;
  sentAt: number;
  deltaTimes: number[];
  completionTokens: number;
  finishedAt: number;
}

export async function runLoadTest(options: LoadTestOptions): Promise<LoadTestReport> {
  const log = options.log ?? (() => {});
  const url = loopbackBaseUrl(options.url);
  const client = new OpenAI({
    apiKey: options.apiKey,
    baseURL: `${url}/v1`,
    // Every answer is counted as it is; retries would hide 429s and 503s.
    maxRetries: 0,
    timeout: options.requestTimeoutSeconds * 1000,
  });
  await waitUntilReady(url);

  const adapterNames = Array.from({ length: options.adapters }, (_, i) => `${options.adapterPrefix}-${i}`);
  if (options.setupAdapters && adapterNames.length > 0) await setupAdapters(url, options, adapterNames, log);
  const modelIds =
    adapterNames.length === 0 ? [options.model] : adapterNames.map((name) => `${options.model}+${options.tenant}/${name}`);

  const random = createRng(options.seed);
  const pickModel = zipfSampler(modelIds.length, options.zipfExponent, random);
  const plan = Array.from({ length: options.requests }, (_, i) => ({ model: modelIds[pickModel()], prompt: PROMPTS[i % PROMPTS.length] }));

  log(`sending ${options.requests} ${options.mode} requests from ${options.concurrency} clients over ${modelIds.length} model(s) ...`);
  const counted = adapterNames.length > 0;
  const before = counted ? await scrapeAdapterCounters(url) : undefined;
  const { outcomes, durationSeconds } = await drive(client, options, plan);
  const adapterTiers = before ? tierShares(before, await scrapeAdapterCounters(url), succeededCount(outcomes)) : null;
  const report = summarize(options, url, outcomes, durationSeconds, adapterTiers);
  if (options.residentBaseline > 0 && counted) {
    const resident = modelIds.slice(0, options.residentBaseline);
    log(`baseline: the same requests over ${resident.length} adapters warmed into slots ...`);
    for (const model of resident) await streamOne(client, options, { model, prompt: PROMPTS[0] });
    const baselineBefore = await scrapeAdapterCounters(url);
    const replay = await drive(client, options, plan.map((request, i) => ({ ...request, model: resident[i % resident.length] })));
    const baselineTiers = tierShares(baselineBefore, await scrapeAdapterCounters(url), succeededCount(replay.outcomes));
    const baseline = summarize(options, url, replay.outcomes, replay.durationSeconds, baselineTiers);
    const p99 = report.timeToFirstTokenMs.p99;
    const baselineP99 = baseline.timeToFirstTokenMs.p99;
    report.residentBaseline = {
      adapters: resident.length,
      timeToFirstTokenMs: baseline.timeToFirstTokenMs,
      interTokenLatencyMs: baseline.interTokenLatencyMs,
      adapterTiers: baseline.adapterTiers,
      ttftP99Ratio: p99 !== null && baselineP99 ? round(p99 / baselineP99, 3) : null,
    };
  }
  return report;
}

function succeededCount(outcomes: RequestOutcome[]): number {
  return outcomes.filter((o) => o.error === undefined).length;
}

/** Sends the plan from `options.concurrency` clients, each sending its next request when the previous one ends. */
async function drive(client: OpenAI, options: LoadTestOptions, plan: { model: string; prompt: string }[]) {
  const outcomes: RequestOutcome[] = [];
  const startedAt = performance.now();
  const deadline = startedAt + options.durationSeconds * 1000;
  let next = 0;
  const runClient = async () => {
    while (next < plan.length && performance.now() < deadline) {
      outcomes.push(await streamOne(client, options, plan[next++]));
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, runClient));
  return { outcomes, durationSeconds: (performance.now() - startedAt) / 1000 };
}

async function streamOne(
  client: OpenAI,
  options: LoadTestOptions,
  { model, prompt }: { model: string; prompt: string },
): Promise<RequestOutcome> {
  const outcome: RequestOutcome = { model, sentAt: performance.now(), deltaTimes: [], completionTokens: 0, finishedAt: 0 };
  let reportedTokens: number | undefined;
  const common = {
    model,
    max_tokens: options.maxTokens,
    temperature: options.temperature,
    stream: true as const,
    stream_options: { include_usage: true },
  };
  const onDelta = (text: string | null | undefined) => {
    if (text) outcome.deltaTimes.push(performance.now());
  };
  try {
    if (options.mode === 'chat') {
      const stream = await client.chat.completions.create({ ...common, messages: [{ role: 'user', content: prompt }] });
      for await (const chunk of stream) {
        onDelta(chunk.choices[0]?.delta?.content);
        if (chunk.usage) reportedTokens = chunk.usage.completion_tokens;
      }
    } else {
      const stream = await client.completions.create({ ...common, prompt });
      for await (const chunk of stream) {
        onDelta(chunk.choices[0]?.text);
        if (chunk.usage) reportedTokens = chunk.usage.completion_tokens;
      }
    }
    // Servers that ignore include_usage send no usage chunk; deltas are then the closest count (about one per token).
    outcome.completionTokens = reportedTokens ?? outcome.deltaTimes.length;
  } catch (error) {
    outcome.error = errorKind(error);
  }
  outcome.finishedAt = performance.now();
  return outcome;
}

function errorKind(error: unknown): string {
  if (error instanceof APIConnectionTimeoutError) return 'timeout';
  if (error instanceof APIConnectionError) return 'connection';
  if (error instanceof APIError) return error.status === undefined ? 'stream' : String(error.status);
  throw error;
}

function summarize(
  options: LoadTestOptions,
  url: string,
  outcomes: RequestOutcome[],
  durationSeconds: number,
  adapterTiers: TierShares | null,
): LoadTestReport {
  const succeeded = outcomes.filter((o) => o.error === undefined);
  const errors: Record<string, number> = {};
  const requestsByModel: Record<string, number> = {};
  for (const outcome of outcomes) {
    if (outcome.error !== undefined) errors[outcome.error] = (errors[outcome.error] ?? 0) + 1;
    requestsByModel[outcome.model] = (requestsByModel[outcome.model] ?? 0) + 1;
  }
  const outputTokens = succeeded.reduce((sum, o) => sum + o.completionTokens, 0);
  const firstDelta = succeeded.filter((o) => o.deltaTimes.length > 0);
  const interTokenLatencyMs = latencySummary(succeeded.flatMap((o) => o.deltaTimes.slice(1).map((t, i) => t - o.deltaTimes[i])));
  return {
    settings: {
      url,
      mode: options.mode,
      concurrency: options.concurrency,
      adapters: options.adapters,
      zipfExponent: options.zipfExponent,
      maxTokens: options.maxTokens,
      plannedRequests: options.requests,
      seed: options.seed,
    },
    requests: outcomes.length,
    succeeded: succeeded.length,
    failed: outcomes.length - succeeded.length,
    errors,
    requestsByModel,
    durationSeconds: round(durationSeconds, 3),
    requestsPerSecond: round(outcomes.length / durationSeconds, 2),
    outputTokens,
    outputTokensPerSecond: round(outputTokens / durationSeconds, 1),
    timeToFirstTokenMs: latencySummary(firstDelta.map((o) => o.deltaTimes[0] - o.sentAt)),
    interTokenLatencyMs,
    requestLatencyMs: latencySummary(succeeded.map((o) => o.finishedAt - o.sentAt)),
    adapterTiers,
    maxInterTokenGapOverMedian:
      interTokenLatencyMs.max !== null && interTokenLatencyMs.p50 ? round(interTokenLatencyMs.max / interTokenLatencyMs.p50, 2) : null,
    residentBaseline: null,
  };
}

export function latencySummary(values: number[]): LatencySummary {
  const sorted = Float64Array.from(values).sort();
  // Nearest rank: the smallest value with at least p% of the samples at or below it.
  const percentile = (p: number) => (sorted.length === 0 ? null : round(sorted[Math.ceil((p / 100) * sorted.length) - 1], 2));
  return {
    samples: sorted.length,
    mean: sorted.length === 0 ? null : round(sorted.reduce((a, b) => a + b, 0) / sorted.length, 2),
    p50: percentile(50),
    p90: percentile(90),
    p99: percentile(99),
    max: sorted.length === 0 ? null : round(sorted[sorted.length - 1], 2),
  };
}

function round(value: number, digits: number): number {
  return Number(value.toFixed(digits));
}

/** A load test is a denial of service for whoever else is on the target, so it only ever drives this machine. */
function loopbackBaseUrl(raw: string): string {
  let parsed: URL;
  try {
    parsed = new URL(raw);
  } catch {
    throw new Error(`--url must be a URL such as http://127.0.0.1:8000, got ${JSON.stringify(raw)}`);
  }
  const host = parsed.hostname.replace(/^\[|\]$/g, '');
  if (host !== 'localhost' && host !== '::1' && !/^127(\.\d{1,3}){3}$/.test(host)) {
    throw new Error(`--url must point at this machine (localhost, 127.x.x.x or [::1]); ${parsed.hostname} is not a loopback host`);
  }
  return parsed.origin;
}

async function waitUntilReady(url: string): Promise<void> {
  const response = await fetch(`${url}/ready`).catch((error: Error) => {
    throw new Error(`cannot reach the gateway at ${url} (${error.message}); start it first (npm start)`);
  });
  if (!response.ok) throw new Error(`the gateway at ${url} is not ready (GET /ready answered ${response.status})`);
}

/** Uploads the adapters that do not exist yet, each with its own seed so they differ; existing ones are reused. */
async function setupAdapters(url: string, options: LoadTestOptions, names: string[], log: (line: string) => void): Promise<void> {
  if (options.modelPath === undefined) {
    throw new Error('--setup-adapters needs --model-path: the base model directory whose config.json shapes the adapters');
  }
  const configPath = join(resolve(options.modelPath), 'config.json');
  const configText = await readFile(configPath, 'utf8').catch((error: Error) => {
    throw new Error(`cannot read ${configPath} (${error.message}); --model-path must be a Hugging Face model directory`);
  });
  const config = configFromHuggingFace(JSON.parse(configText));
  const authorization = `Bearer ${options.apiKey}`;
  for (const [index, name] of names.entries()) {
    const route = `${url}/v1/adapters/${options.tenant}/${name}`;
    const existing = await fetch(route, { headers: { authorization } });
    if (existing.ok) continue;
    const spec = randomLoraAdapter(config, { rank: options.adapterRank, targetModules: [...LORA_TARGET_MODULES], seed: options.seed * 1000 + index });
    const form = new FormData();
    for (const [file, bytes] of loraAdapterFiles(spec)) form.append(file, new Blob([new Uint8Array(bytes)]), file);
    const uploaded = await fetch(route, { method: 'POST', headers: { authorization }, body: form });
    if (!uploaded.ok) throw new Error(`uploading ${options.tenant}/${name} failed: ${uploaded.status} ${await uploaded.text()}`);
    log(`uploaded adapter ${options.tenant}/${name} (rank ${options.adapterRank})`);
  }
}

// ---- command line ----

/** The options, and whether to print the report as one JSON object. */
export function parseLoadTestArgs(argv: string[]): { options: LoadTestOptions; json: boolean } {
  const { values } = parseArgs({
    args: argv,
    options: {
      url: { type: 'string', default: 'http://127.0.0.1:8000' },
      key: { type: 'string', default: process.env.GATEWAY_API_KEY ?? 'sk-local-dev' },
      model: { type: 'string' },
      mode: { type: 'string', default: DEFAULT_OPTIONS.mode },
      concurrency: { type: 'string', default: String(DEFAULT_OPTIONS.concurrency) },
      adapters: { type: 'string', default: String(DEFAULT_OPTIONS.adapters) },
      requests: { type: 'string', default: String(DEFAULT_OPTIONS.requests) },
      'max-tokens': { type: 'string', default: String(DEFAULT_OPTIONS.maxTokens) },
      zipf: { type: 'string', default: String(DEFAULT_OPTIONS.zipfExponent) },
      duration: { type: 'string', default: String(DEFAULT_OPTIONS.durationSeconds) },
      timeout: { type: 'string', default: String(DEFAULT_OPTIONS.requestTimeoutSeconds) },
      temperature: { type: 'string', default: String(DEFAULT_OPTIONS.temperature) },
      seed: { type: 'string', default: String(DEFAULT_OPTIONS.seed) },
      tenant: { type: 'string', default: DEFAULT_OPTIONS.tenant },
      'adapter-prefix': { type: 'string', default: DEFAULT_OPTIONS.adapterPrefix },
      'setup-adapters': { type: 'boolean', default: DEFAULT_OPTIONS.setupAdapters },
      'model-path': { type: 'string' },
      'adapter-rank': { type: 'string', default: String(DEFAULT_OPTIONS.adapterRank) },
      'resident-baseline': { type: 'string', default: String(DEFAULT_OPTIONS.residentBaseline) },
      json: { type: 'boolean', default: false },
    },
  });
  if (values.model === undefined) throw new Error('--model is required: the base model name the gateway serves (see GET /v1/models)');
  if (values.mode !== 'chat' && values.mode !== 'completions') throw new Error(`--mode must be chat or completions, got ${values.mode}`);
  const options: LoadTestOptions = {
    url: values.url,
    apiKey: values.key,
    model: values.model,
    mode: values.mode,
    concurrency: integerFlag('concurrency', values.concurrency, 1, 1024),
    adapters: integerFlag('adapters', values.adapters, 0, 100_000),
    requests: integerFlag('requests', values.requests, 1, 1_000_000),
    maxTokens: integerFlag('max-tokens', values['max-tokens'], 1, 100_000),
    zipfExponent: numberFlag('zipf', values.zipf, 0, 10),
    durationSeconds: numberFlag('duration', values.duration, 0.001, 86_400),
    requestTimeoutSeconds: numberFlag('timeout', values.timeout, 0.001, 86_400),
    temperature: numberFlag('temperature', values.temperature, 0, 2),
    seed: integerFlag('seed', values.seed, 0, Number.MAX_SAFE_INTEGER),
    tenant: values.tenant,
    adapterPrefix: values['adapter-prefix'],
    setupAdapters: values['setup-adapters'],
    modelPath: values['model-path'],
    adapterRank: integerFlag('adapter-rank', values['adapter-rank'], 1, 1024),
    residentBaseline: integerFlag('resident-baseline', values['resident-baseline'], 0, 100_000),
  };
  return { options, json: values.json };
}

function numberFlag(name: string, raw: string, min: number, max: number): number {
  const value = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(value) || value < min || value > max) {
    throw new Error(`--${name} must be a number from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  }
  return value;
}

function integerFlag(name: string, raw: string, min: number, max: number): number {
  const value = numberFlag(name, raw, min, max);
  if (!Number.isInteger(value)) throw new Error(`--${name} must be a whole number, got ${JSON.stringify(raw)}`);
  return value;
}

export function formatReport(report: LoadTestReport): string {
  const latency = (s: LatencySummary) => `p50 ${s.p50} ms  p90 ${s.p90} ms  p99 ${s.p99} ms  max ${s.max} ms  mean ${s.mean} ms  (${s.samples} samples)`;
  const tiers = (t: TierShares | null) =>
    t === null ? 'no adapters' : `slot ${t.slot}  host ${t.host}  disk ${t.disk}  (${t.requests} requests, ${t.diskLoads} disk loads, evictions: slot ${t.slotEvictions}, host ${t.hostEvictions})`;
  const baseline = report.residentBaseline;
  const errors = Object.entries(report.errors).map(([kind, count]) => `${kind}: ${count}`).join(', ') || 'none';
  return [
    `requests            ${report.requests} (${report.succeeded} ok, ${report.failed} failed; errors: ${errors})`,
    `duration            ${report.durationSeconds} s`,
    `requests/s          ${report.requestsPerSecond}`,
    `output tokens       ${report.outputTokens}`,
    `output tokens/s     ${report.outputTokensPerSecond}`,
    `time to first token ${latency(report.timeToFirstTokenMs)}`,
    `inter-token latency ${latency(report.interTokenLatencyMs)}`,
    `request latency     ${latency(report.requestLatencyMs)}`,
    `max gap / median    ${report.maxInterTokenGapOverMedian}`,
    `adapter tiers       ${tiers(report.adapterTiers)}`,
    ...(baseline
      ? [
          `resident baseline   ${baseline.adapters} warmed adapters: TTFT ${latency(baseline.timeToFirstTokenMs)}`,
          `                    inter-token ${latency(baseline.interTokenLatencyMs)}; tiers ${tiers(baseline.adapterTiers)}`,
          `TTFT p99 / baseline ${baseline.ttftP99Ratio}`,
        ]
      : []),
    `requests by model   ${JSON.stringify(report.requestsByModel)}`,
  ].join('\n');
}

async function main(): Promise<void> {
  const { options, json } = parseLoadTestArgs(process.argv.slice(2));
  const report = await runLoadTest({ ...options, log: (line) => process.stderr.write(`${line}\n`) });
  console.log(json ? JSON.stringify(report) : formatReport(report));
  if (report.succeeded === 0) process.exitCode = 1;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main().catch((error: Error) => {
    process.stderr.write(`error: ${error.message}\n`);
    process.exitCode = 1;
  });
}

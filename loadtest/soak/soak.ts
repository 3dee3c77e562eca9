/**
 * The soak: a real gateway process (src/main.ts) serving stories260K at saturation, with ≥ 100 Zipf-popular
 * adapters, more clients than batch rows, adapters published and deleted while it runs, clients hanging up
 * mid-stream, WebSocket cancels, and SIGTERM at the end. What it checks: loadtest/README.md, "Soak".
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRng } from '../../src/engine/random.ts';
import { configFromHuggingFace } from '../../src/model/config.ts';
import { median } from '../../src/statistics.ts';
import { parseScrape, type Scrape } from '../../tests/support/exposition.ts';
import { zipfSampler } from '../zipf.ts';
import { AdapterCatalog } from './adapter-catalog.ts';
import { startGatewayProcess, type GatewayProcess, type LogRecord } from '../gateway-process.ts';
import { sendRequest, streamCompletion, type StreamOutcome } from './http-client.ts';
import { checkReport, type SoakReport } from './report.ts';
import { SoloReference } from './solo-reference.ts';
import { runHttpClient, runWebSocketClient, Tally, type Tenant, type TrafficSettings } from './traffic.ts';
import { WebSocketClient, type ResponseOutcome } from './websocket-client.ts';

export interface SoakOptions {
  modelDir: string;
  /** The load stops starting requests after `minutes`, or after `requests` requests (a run of fixed work). */
  stopAfter: { minutes: number } | { requests: number };
  adapters: number;
  /** Clients of the adapters' tenant (over HTTP and WebSocket), and HTTP clients of a second tenant on the base model. */
  httpClients: number;
  webSocketClients: number;
  baseModelClients: number;
  /** Rows decoded together, and the engine queue's bound: far fewer than the clients, so some are refused. */
  maxBatch: number;
  seed: number;
  /** Fails the run when RSS after warm-up drifts this much (0.1: 10 %); null only reports it, for runs too short to warm up. */
  rssDriftLimit: number | null;
  log: (line: string) => void;
}

const TENANT: Tenant = { name: 'soak', key: 'sk-soak-adapters' };
const BASE_TENANT: Tenant = { name: 'soak-base', key: 'sk-soak-base' };
const ADMIN_KEY = 'sk-soak-admin';
const MAX_TOKENS = 12;
const MAX_LORA_RANK = 8;
/** Prompts as token ids (stories260K's vocabulary), so no tokenizer sits between the clients and the check. */
const PROMPTS = [
  [1, 403, 407, 261, 378],
  [1, 403, 407],
  [1, 432, 383, 286, 261, 376],
  [1, 298, 315, 421, 395],
];
/** A generous bound on any one answer: what it guards against is a hang, which becomes a failure, not a wait. */
const TIMEOUT_MS = 120_000;
/** One publish or delete per this many requests. */
const CHURN_EVERY = 4;
/** The first fifth of the run is warm-up; RSS at its end is compared with RSS over the last tenth. */
const WARM_UP = 0.2;

export async function runSoak(options: SoakOptions): Promise<SoakReport> {
  const began = performance.now();
  const write = options.log;
  const log = (line: string) => write(`[${((performance.now() - began) / 1000).toFixed(1)} s] ${line}`);
  options = { ...options, log };
  const dir = await mkdtemp(join(tmpdir(), 'soak-'));
  try {
    const gateway = await startGateway(options, dir);
    try {
      return await soak(options, dir, gateway);
    } finally {
      await gateway.kill();
    }
  } finally {
    log('done');
    await rm(dir, { recursive: true, force: true });
  }
}

/** The gateway under soak, with what it logged that a clean run never logs. */
interface SoakGateway extends GatewayProcess {
  /** The warn and error lines it logged so far, and any stray stderr; info lines (one per request) are dropped. */
  readonly problems: LogRecord[];
  /** Resolves once the process wrote a line saying it began shutting down on `name` (src/shutdown-on-signals.ts). */
  shutdownBegan(name: NodeJS.Signals): Promise<void>;
}

async function startGateway(options: SoakOptions, dir: string): Promise<SoakGateway> {
  const configPath = join(dir, 'gateway.json');
  const limits = (concurrent: number) => ({ max_concurrent_requests: concurrent, tokens_per_minute: 1_000_000_000 });
  await writeFile(
    configPath,
    JSON.stringify({
      admin_keys: [{ key: ADMIN_KEY }],
      tenants: {
        [TENANT.name]: { keys: [{ key: TENANT.key }], limits: limits(options.maxBatch + 2) },
        [BASE_TENANT.name]: { keys: [{ key: BASE_TENANT.key }], limits: limits(Math.ceil(options.maxBatch / 2) + 1) },
      },
    }),
  );
  const problems: LogRecord[] = [];
  const shutdownLines = new Map<string, () => void>();
  const gateway = await startGatewayProcess({
    env: {
      TRAINER: 'external',
      LOG_LEVEL: 'info',
      MODEL_PATH: options.modelDir,
      ADAPTERS_DIR: join(dir, 'adapters'),
      TRAINING_DIR: join(dir, 'training'),
      GATEWAY_CONFIG: configPath,
      MAX_BATCH_SIZE: String(options.maxBatch),
      MAX_QUEUE: String(options.maxBatch),
      ADAPTER_SLOTS: '4',
      MAX_LORA_RANK: String(MAX_LORA_RANK),
      // Smaller than the adapters together, so the long tail is read from disk again and again.
      HOST_CACHE_BYTES: '1MiB',
      ENGINE_THREADS: '1',
      SHUTDOWN_GRACE_SECONDS: '60',
    },
    onLine: (line, record) => {
      if (record && (record.level === 'warn' || record.level === 'error')) problems.push(record);
      else if (!record && /^SIG(TERM|INT): /.test(line)) shutdownLines.get(line.split(':')[0])?.();
      else if (!record && line.trim() !== '') problems.push({ level: 'stderr', msg: line });
    },
  });
  return { ...gateway, problems, shutdownBegan: (name) => new Promise((resolve) => shutdownLines.set(name, resolve)) };
}

async function soak(options: SoakOptions, dir: string, gateway: SoakGateway): Promise<SoakReport> {
  const { log } = options;
  const base = configFromHuggingFace(JSON.parse(await readFile(join(options.modelDir, 'config.json'), 'utf8')));
  const baseModel = await baseModelName(gateway.url);
  const random = createRng(options.seed);
  const catalog = new AdapterCatalog({ url: gateway.url, tenant: TENANT.name, key: TENANT.key, base, seed: options.seed, timeoutMs: TIMEOUT_MS });
  const adapters = Array.from({ length: options.adapters }, (_, i) => `adapter-${i}`);
  log(`publishing ${adapters.length} adapters ...`);
  for (const adapter of adapters) await catalog.publish(adapter);
  const fdsBefore = await steadyValue(() => gateway.openFileDescriptors());

  // ---- the load, with adapter churn and RSS samples beside it ----
  const stop = options.stopAfter;
  const startedAt = performance.now();
  /** Requests the clients were allowed to send (each then sends exactly one). */
  let granted = 0;
  const progress = () => ('minutes' in stop ? (performance.now() - startedAt) / (stop.minutes * 60_000) : granted / stop.requests);
  const tally = new Tally();
  let churn = Promise.resolve();
  const settings: TrafficSettings = {
    url: gateway.url,
    baseModel,
    prompts: PROMPTS,
    maxTokens: MAX_TOKENS,
    timeoutMs: TIMEOUT_MS,
    disconnectEvery: 10,
    cancelEvery: 3,
    random,
    pickAdapter: zipfSampler(adapters.length, 1.1, random),
    adapters,
    catalog,
    next: async () => {
      if (progress() >= 1) return false;
      // Changes run one at a time; the client whose turn it is waits for its own, so they never fall behind.
      if (++granted % CHURN_EVERY === 0) {
        churn = churn.then(() => churnOnce(catalog, adapters, random, settings.pickAdapter));
        await churn;
      }
      return true;
    },
  };
  const rssSamples: { progress: number; bytes: number }[] = [];
  const sampler = setInterval(() => {
    const at = progress();
    void gateway.residentBytes().then((bytes) => rssSamples.push({ progress: at, bytes }), () => {});
  }, 500);
  log(
    `load: ${options.httpClients} HTTP + ${options.webSocketClients} WebSocket clients on adapters, ${options.baseModelClients} on the base model, ` +
      `${options.maxBatch} batch rows, until ${'minutes' in stop ? `${stop.minutes} min` : `${stop.requests} requests`} ...`,
  );
  const clients = [
    ...Array.from({ length: options.httpClients }, () => runHttpClient(settings, tally, TENANT, false)),
    ...Array.from({ length: options.baseModelClients }, () => runHttpClient(settings, tally, BASE_TENANT, true)),
  ];
  const unexpectedEvents = (await Promise.all(Array.from({ length: options.webSocketClients }, () => runWebSocketClient(settings, tally, TENANT)))).flat();
  await Promise.all(clients);
  await churn;
  clearInterval(sampler);
  // One sample at the end of the load, so the final figure exists however few samples a fast short run took.
  rssSamples.push({ progress: 1, bytes: await gateway.residentBytes() });
  const durationSeconds = round((performance.now() - startedAt) / 1000);

  // ---- idle: engine rows, file descriptors, the metrics' counts ----
  log('load done; checking that the gateway returns to idle ...');
  const scrape = await settle(() => scrapeMetrics(gateway.url), (s) => gauge(s, 'vllm:num_requests_running') === 0 && gauge(s, 'vllm:num_requests_waiting') === 0);
  const fdsAfter = await steadyValue(() => gateway.openFileDescriptors());

  // ---- SIGTERM with streams in flight ----
  log('SIGTERM with streams in flight ...');
  const shutdown = await sigtermWithStreamsInFlight(gateway, baseModel, options.maxBatch);

  // ---- greedy outputs against solo runs ----
  log(`checking ${tally.observations.length} greedy outputs against solo runs ...`);
  const greedy = await checkGreedyOutputs(options, dir, catalog, tally);

  const report: SoakReport = {
    settings: {
      stopAfter: 'minutes' in stop ? `${stop.minutes} min` : `${stop.requests} requests`,
      adapters: adapters.length,
      clients: { http: options.httpClients, webSocket: options.webSocketClients, baseModel: options.baseModelClients },
      maxBatch: options.maxBatch,
      maxQueue: options.maxBatch,
      seed: options.seed,
      rssDriftLimit: options.rssDriftLimit,
    },
    durationSeconds,
    requests: {
      sent: tally.sent,
      countedByClients: tally.countedByStatus,
      countedByGateway: requestsByTenantAndStatus(scrape, [TENANT.name, BASE_TENANT.name]),
      httpErrorsSeen: tally.httpErrors,
      httpErrorsCounted: errorAnswers(scrape),
    },
    streams: tally.streams,
    churn: catalog.counts,
    greedy: greedy.summary,
    serverErrors: tally.serverErrors.length,
    rss: rssDrift(rssSamples),
    idle: { fdsBefore, fdsAfter, runningAfter: gauge(scrape, 'vllm:num_requests_running'), waitingAfter: gauge(scrape, 'vllm:num_requests_waiting') },
    shutdown,
    failures: [],
  };
  const details = [
    ...tally.serverErrors,
    ...tally.broken,
    ...unexpectedEvents.map((event) => `unexpected WebSocket event: ${event}`),
    ...catalog.refusals,
    ...greedy.mismatches,
    ...gateway.problems.map((record) => `the gateway logged: ${JSON.stringify(record).slice(0, 400)}`),
  ];
  report.failures = checkReport(report, details.slice(0, 40));
  return report;
}

/** One publish or delete, on a popular adapter so that requests race it. */
async function churnOnce(catalog: AdapterCatalog, adapters: string[], random: () => number, pickAdapter: () => number): Promise<void> {
  const adapter = adapters[pickAdapter()];
  const live = catalog.live(adapter);
  const roll = random();
  if (live.length === 0 || roll < 0.5) return catalog.publish(adapter);
  if (roll < 0.7 && live.length > 1) return catalog.deleteVersion(live[0]);
  if (roll < 0.9) return catalog.deleteVersion(live[live.length - 1]);
  return catalog.deleteAdapter(adapter);
}

async function baseModelName(url: string): Promise<string> {
  const answer = await sendRequest(url, 'GET', '/v1/models', TENANT.key, TIMEOUT_MS);
  const { data } = JSON.parse(answer.body) as { data: { id: string }[] };
  return data.find((model) => !model.id.includes('+'))!.id;
}

async function scrapeMetrics(url: string): Promise<Scrape> {
  return parseScrape((await sendRequest(url, 'GET', '/metrics', null, TIMEOUT_MS)).body);
}

function gauge(scrape: Scrape, name: string): number {
  return scrape.samples.filter((sample) => sample.name === name).reduce((sum, sample) => sum + sample.value, 0);
}

function requestsByTenantAndStatus(scrape: Scrape, tenants: string[]): Record<string, Record<string, number>> {
  const counts: Record<string, Record<string, number>> = {};
  for (const { name, labels, value } of scrape.samples) {
    if (name !== 'gateway_requests_total' || !tenants.includes(labels.tenant) || value === 0) continue;
    const byStatus = (counts[labels.tenant] ??= {});
    byStatus[labels.status] = (byStatus[labels.status] ?? 0) + value;
  }
  return counts;
}

function errorAnswers(scrape: Scrape): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const { name, labels, value } of scrape.samples) {
    if (name !== 'gateway_errors_total' || value === 0) continue;
    const key = `${labels.status} ${labels.code}`.trim();
    counts[key] = (counts[key] ?? 0) + value;
  }
  return counts;
}

/**
 * Reads `read` until it gives the same value five times in a row (200 ms apart), for at most 30 s: the connections
 * of the last requests are released by the server a moment after the clients closed them.
 */
async function steadyValue(read: () => Promise<number>): Promise<number> {
  const readings = [await read()];
  const until = performance.now() + 30_000;
  while ((readings.length < 5 || new Set(readings.slice(-5)).size > 1) && performance.now() < until) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    readings.push(await read());
  }
  return readings[readings.length - 1];
}

/** Reads `read` until `settled` holds, for at most 30 s (the engine's gauges follow its next step); returns the last reading. */
async function settle<T>(read: () => Promise<T>, settled: (value: T) => boolean): Promise<T> {
  const until = performance.now() + 30_000;
  let value = await read();
  while (!settled(value) && performance.now() < until) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    value = await read();
  }
  return value;
}

/**
 * Starts a wave of long streams (one per batch row, and one over WebSocket), waits until each has sent its first
 * chunk, then signals SIGTERM: each must still end with its terminal event, a new request must be refused, and the
 * process must exit 0.
 */
async function sigtermWithStreamsInFlight(gateway: SoakGateway, baseModel: string, rows: number): Promise<SoakReport['shutdown']> {
  const body = { model: baseModel, prompt: PROMPTS[0], max_tokens: 64, temperature: 0 };
  const firstChunks: Promise<void>[] = [];
  const streams: Promise<StreamOutcome>[] = [];
  for (let row = 0; row < rows - 1; row++) {
    let first!: () => void;
    firstChunks.push(new Promise((resolve) => (first = resolve)));
    streams.push(streamCompletion(gateway.url, BASE_TENANT.key, body, { onFirstChunk: first, timeoutMs: TIMEOUT_MS }).finally(first));
  }
  const socket = await WebSocketClient.connect(gateway.url, TENANT.key, TIMEOUT_MS);
  let ended = 0;
  const socketResponse: Promise<ResponseOutcome> = socket.run({ model: baseModel, input: PROMPTS[1], max_tokens: 64, temperature: 0 }, { timeoutMs: TIMEOUT_MS });
  const all = [...streams.map((s) => s.finally(() => ended++)), socketResponse.finally(() => ended++)];
  await Promise.all(firstChunks);
  const inFlightAtSigterm = all.length - ended;
  const shutdownBegan = gateway.shutdownBegan('SIGTERM');
  gateway.signal('SIGTERM');
  await shutdownBegan;
  // From the tenant with room under its own limit, so that only the shutdown can refuse it.
  const after = await streamCompletion(gateway.url, TENANT.key, body, { timeoutMs: TIMEOUT_MS });
  const refusedAfterSigterm = after.status === 0 ? after.failure ?? 'no answer' : `${after.status} ${after.errorCode ?? ''}`.trim();
  const outcomes = await Promise.all(streams);
  const wsOutcome = await socketResponse;
  await socket.close();
  const endedCleanly =
    outcomes.filter((o) => o.status === 200 && o.done && o.finishReason !== null && !o.failure).length +
    (wsOutcome.terminal === 'completed' || wsOutcome.terminal === 'incomplete' ? 1 : 0);
  return { exitCode: await gateway.exited, inFlightAtSigterm, endedCleanly: Math.min(endedCleanly, inFlightAtSigterm), refusedAfterSigterm };
}

async function checkGreedyOutputs(options: SoakOptions, dir: string, catalog: AdapterCatalog, tally: Tally) {
  const solo = await SoloReference.start({ modelDir: options.modelDir, adaptersDir: join(dir, 'reference'), maxLoraRank: MAX_LORA_RANK, maxTokens: MAX_TOKENS });
  const summary = { checked: 0, prefixesChecked: 0, ambiguous: 0, distinctFromBase: 0, mismatches: 0, soloRuns: 0 };
  const mismatches: string[] = [];
  try {
    for (const seen of tally.observations) {
      const candidates = seen.adapter === null ? [null] : catalog.candidates(seen.adapter, seen.version, seen.sentAt, seen.answeredAt);
      if (candidates.length > 1) summary.ambiguous++;
      let matched = false;
      for (const candidate of candidates) {
        const expected = await solo.output(candidate, seen.prompt);
        if (seen.complete ? seen.text === expected : expected.startsWith(seen.text)) matched = true;
        if (matched) break;
      }
      if (seen.complete) summary.checked++;
      else summary.prefixesChecked++;
      if (seen.complete && seen.text !== (await solo.output(null, seen.prompt))) summary.distinctFromBase++;
      if (!matched) {
        summary.mismatches++;
        const name = seen.adapter === null ? 'the base model' : `${seen.adapter}${seen.version ? `@${seen.version}` : ''}`;
        mismatches.push(
          `${seen.via} output of ${name} on prompt ${JSON.stringify(seen.prompt)} matches none of its ${candidates.length} possible versions: ${JSON.stringify(seen.text)}`,
        );
      }
    }
    summary.soloRuns = solo.size;
  } finally {
    await solo.close();
  }
  return { summary, mismatches };
}

function rssDrift(samples: { progress: number; bytes: number }[]): SoakReport['rss'] {
  const warm = median(samples.filter((s) => s.progress >= WARM_UP && s.progress < WARM_UP + 0.1).map((s) => s.bytes)) ?? 0;
  const final = median(samples.filter((s) => s.progress >= 0.9).map((s) => s.bytes)) ?? 0;
  const mib = (bytes: number) => round(bytes / 2 ** 20);
  return { warmMiB: mib(warm), finalMiB: mib(final), drift: warm > 0 ? round((final - warm) / warm, 3) : 0, samples: samples.length };
}

function round(value: number, digits = 1): number {
  return Number(value.toFixed(digits));
}

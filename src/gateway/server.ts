/**
 * Starts the whole gateway: settings, engine, tokenizer, adapter store, observability, HTTP and WebSocket
 * servers; and stops it gracefully. Tests start it exactly as `npm start` does, on a free port.
 */
import { serve } from '@hono/node-server';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { basename, extname } from 'node:path';
import { attachWebSocketApi } from '../api/websocket.ts';
import { Engine } from '../engine/engine.ts';
import { createGatewayMetrics } from '../observability/metrics.ts';
import { createTracing, type TracingOptions } from '../observability/tracing.ts';
import { AdapterStore } from '../registry/adapter-store.ts';
import { TextGenerator } from '../serving/text-generation.ts';
import { loadChatFormatter, loadTokenizer } from '../tokenizer/load.ts';
import { adapterValidator } from './adapter-validator.ts';
import { createApp } from './app.ts';
import { createAuthenticator } from './auth.ts';
import { loadGatewaySettings } from './config.ts';
import { DEFAULT_MODEL, defaultModelPath } from './default-model.ts';
import { engineRef, ModelResolver, readAdapterSummary, type AdapterSummary } from './model-resolver.ts';
import type { GatewayServices } from './services.ts';
import { createLogger } from './logger.ts';
import { createTenantLimiters } from './tenant-limits.ts';
import { TrainingFileStore } from '../training/jobs/file-store.ts';
import { JobStore } from '../training/jobs/job-store.ts';
import { TrainingDir } from '../training/jobs/training-dir.ts';

export interface RunningGateway {
  url: string;
  /** The base model served (MODEL_PATH, or the default model's resolved location). */
  modelPath: string;
  services: GatewayServices;
  /**
   * Loads a version into the engine's host cache ahead of its first request (rescanning the store first when it
   * does not know the version yet): the trainer sidecar's newly published adapters.
   */
  preloadAdapter(tenant: string, adapter: string, version: string): Promise<void>;
  /**
   * Stops accepting, lets in-flight requests finish for up to `graceMs` (default SHUTDOWN_GRACE_SECONDS),
   * cancels the rest, and releases everything.
   */
  close(graceMs?: number): Promise<void>;
}

export interface GatewayStartOptions {
  /** Replaces the OTLP exporter (tests pass an in-memory exporter). */
  traceExporter?: TracingOptions['exporter'];
  /** Where log lines go (default stderr). */
  writeLog?: (line: string) => void;
}


export async function startGateway(env: NodeJS.ProcessEnv, options: GatewayStartOptions = {}): Promise<RunningGateway> {
  const settings = await loadGatewaySettings(env);
  const logger = createLogger(settings.logLevel, options.writeLog);
  if (settings.usingDevelopmentKeys) {
    logger.warn('the published development API keys are accepted; set GATEWAY_CONFIG or GATEWAY_API_KEY/GATEWAY_ADMIN_KEY before exposing this server');
  }
  const modelPath = settings.modelPath ?? (await defaultModelPath((line) => logger.info(line)));
  const modelName =
    settings.modelName ?? (settings.modelPath ? basename(modelPath, extname(modelPath) === '.gguf' ? '.gguf' : '') : DEFAULT_MODEL.name);
  logger.info('loading the base model', { path: modelPath, name: modelName });
  const engine = await Engine.start({
    modelPath,
    maxBatch: settings.engine.maxBatchSize,
    adapterSlots: settings.engine.adapterSlots,
    maxLoraRank: settings.engine.maxLoraRank,
    hostCacheBytes: settings.engine.hostCacheBytes,
    maxQueue: settings.engine.maxQueue,
    prefillTokenBudget: settings.engine.prefillTokenBudget,
    threads: settings.engine.threads,
    threadSpinning: settings.engine.threadSpinning,
    mixedPasses: settings.engine.mixedPasses,
    executionProvider: settings.engine.executionProvider,
    quantize: settings.engine.quantize,
    compiledModelCacheDir: settings.engine.compiledModelCacheDir,
    adapterLayoutCache: settings.engine.adapterLayoutCache,
  });
  logger.info('engine ready', { compiledModelCached: engine.info.startup.cached, sessions: engine.info.startup.sessions, ...engine.info.startup.ms });
  const config = engine.info.config;
  const tokenizer = await loadTokenizer(modelPath, config.eosTokenIds);
  const formatChat = await loadChatFormatter(modelPath);

  const store = new AdapterStore<AdapterSummary>({
    root: settings.adaptersDir,
    validate: adapterValidator(config, settings.engine.maxLoraRank),
    // Trusting the manifest's summary keeps start-up from reading any stored weights; the engine's loader
    // verifies the checksums when it first reads a version.
    readSummary: (value) => readAdapterSummary(value, { maxLoraRank: settings.engine.maxLoraRank, maxPositions: config.maxPositions }),
  });
  // A removed or replaced version must never be served from a cache again.
  store.on('removed', (ref) => engine.evictAdapter(ref.id));

  const metrics = createGatewayMetrics({ maxLora: Math.max(1, settings.engine.adapterSlots), modelName, engineAlive: () => engine.alive });
  engine.on('stats', (stats) => metrics.setSchedulerState(stats));
  engine.on('adapter-cache', (event) => metrics.recordAdapterCache(event));
  store.on('scanFailed', (error) => logger.warn('the adapter store could not read or save part of ADAPTERS_DIR', { error: error.message }));
  store.on('invalid', (entry) => {
    if (entry.alteredFile === undefined) return;
    logger.warn('a stored adapter file changed after publishing; the version is not served', { adapter: entry.id, file: entry.alteredFile });
    metrics.countAlteredAdapterFile(entry.alteredFile);
  });
  const reportDiskResidency = () => {
    const records = store.list();
    const bytes = records.reduce((sum, r) => sum + Object.values(r.files).reduce((s, f) => s + f.size, 0), 0);
    metrics.setAdapterCacheResidency('disk', { bytes, entries: records.length });
  };
  await store.start();
  reportDiskResidency();
  store.on('added', reportDiskResidency);
  store.on('removed', reportDiskResidency);
  const tracing = createTracing({ serviceName: 'peft-gateway', otlpEndpoint: settings.otlpEndpoint, exporter: options.traceExporter });

  const trainingDir = new TrainingDir(settings.training.dir);
  const shutdown = new AbortController();
  const services: GatewayServices = {
    settings,
    logger,
    engine,
    tokenizer,
    formatChat,
    generator: new TextGenerator(engine, tokenizer),
    store,
    models: new ModelResolver(modelName, store),
    authenticator: createAuthenticator(settings),
    limiters: createTenantLimiters(settings.tenants),
    metrics,
    training: { files: new TrainingFileStore(trainingDir), jobs: new JobStore(trainingDir) },
    tracing,
    queuedByTenant: new Map(),
    startedAt: Math.floor(Date.now() / 1000),
    draining: false,
    shutdownSignal: shutdown.signal,
  };

  const app = createApp(services);
  const server = await new Promise<Server>((resolve) => {
    const started = serve({ fetch: app.fetch, port: settings.port, hostname: settings.host }, () => resolve(started as Server));
  });
  const webSockets = attachWebSocketApi(server, services, { pingIntervalMs: settings.webSocketPingSeconds * 1000, ...settings.webSocketLimits });
  const { port } = server.address() as AddressInfo;
  const url = `http://${settings.host.includes(':') ? `[${settings.host}]` : settings.host}:${port}`;
  logger.info('serving', { url, model: modelName, checksum: engine.info.checksum });

  let closing: Promise<void> | undefined;
  const close = (graceMs = settings.shutdownGraceSeconds * 1000) =>
    (closing ??= (async () => {
      services.draining = true;
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      const deadline = Date.now() + graceMs;
      while (engine.pendingRequests > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      shutdown.abort();
      await webSockets.close();
      server.closeAllConnections();
      await stopped;
      await engine.close();
      await store.stop();
      await tracing.shutdown();
    })());
  const preloadAdapter = async (tenant: string, adapter: string, version: string) => {
    if (store.resolve(tenant, adapter, version) === null) await store.refresh();
    const record = store.resolve(tenant, adapter, version);
    if (record === null) throw new Error(`adapter ${tenant}/${adapter}@${version} is not servable`);
    await engine.preloadAdapter(engineRef(record));
  };
  return { url, modelPath, services, preloadAdapter, close };
}

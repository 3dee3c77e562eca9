/**
 * Starts the whole gateway: settings, engine, tokenizer, adapter store, observability, HTTP and WebSocket
 * servers; and stops it gracefully. Tests start it exactly as `npm start` does, on a free port.
 */
import { serve } from '@hono/node-server';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { basename, extname } from 'node:path';
import { stat } from 'node:fs/promises';
import { attachWebSocketApi } from '../api/websocket.ts';
import { AdapterError } from '../adapters/adapter-error.ts';
import { loadAdapter, summarizeAdapter, virtualTokensOf } from '../adapters/adapter.ts';
import { Engine } from '../engine/engine.ts';
import { readGguf } from '../formats/gguf.ts';
import { createGatewayMetrics } from '../observability/metrics.ts';
import { createTracing, type TracingOptions } from '../observability/tracing.ts';
import { AdapterStore } from '../registry/adapter-store.ts';
import { TextGenerator } from '../serving/text-generation.ts';
import { chatTemplateConfigFromGguf, createChatFormatter } from '../tokenizer/chat-template.ts';
import { readTokenizerConfig } from '../tokenizer/huggingface.ts';
import { loadTokenizer } from '../tokenizer/load.ts';
import { createApp } from './app.ts';
import { createAuthenticator } from './auth.ts';
import { loadGatewaySettings } from './config.ts';
import { DEFAULT_MODEL, defaultModelPath } from './default-model.ts';
import type { AdapterSummary } from './model-resolver.ts';
import { ModelResolver } from './model-resolver.ts';
import type { GatewayServices } from './services.ts';
import { createLogger } from './logger.ts';
import { createTenantLimiters } from './tenant-limits.ts';

export interface RunningGateway {
  url: string;
  services: GatewayServices;
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
    threads: settings.engine.threads,
    executionProvider: settings.engine.executionProvider,
  });
  const config = engine.info.config;
  const tokenizer = await loadTokenizer(modelPath, config.eosTokenIds);
  const isDirectory = (await stat(modelPath)).isDirectory();
  const formatChat = createChatFormatter(
    isDirectory ? await readTokenizerConfig(modelPath) : chatTemplateConfigFromGguf((await readGguf(modelPath)).metadata),
  );

  const store = new AdapterStore<AdapterSummary>({
    root: settings.adaptersDir,
    validate: async (dir) => {
      const adapter = await loadAdapter(dir, config);
      if (adapter.rank > settings.engine.maxLoraRank) {
        throw new AdapterError(
          'invalid_config',
          `adapter rank (or bottleneck width) ${adapter.rank} exceeds this server's MAX_LORA_RANK of ${settings.engine.maxLoraRank}; ` +
            'train the adapter with a lower rank (or a higher reduction_factor), or raise MAX_LORA_RANK',
        );
      }
      if (virtualTokensOf(adapter) >= engine.info.maxPositions - 1) {
        throw new AdapterError(
          'invalid_config',
          `the adapter's ${virtualTokensOf(adapter)} virtual tokens leave no room for a prompt in this model's context of ${engine.info.maxPositions} positions; train it with fewer num_virtual_tokens`,
        );
      }
      return summarizeAdapter(adapter);
    },
  });
  await store.start();
  // A removed or replaced version must never be served from a cache again.
  store.on('removed', (ref) => engine.evictAdapter(ref.id));

  const metrics = createGatewayMetrics({ maxLora: Math.max(1, settings.engine.adapterSlots), modelName, engineAlive: () => engine.alive });
  engine.on('stats', (stats) => metrics.setSchedulerState(stats));
  engine.on('adapter-cache', (event) => metrics.recordAdapterCache(event));
  const reportDiskResidency = () => {
    const records = store.list();
    const bytes = records.reduce((sum, r) => sum + Object.values(r.files).reduce((s, f) => s + f.size, 0), 0);
    metrics.setAdapterCacheResidency('disk', { bytes, entries: records.length });
  };
  reportDiskResidency();
  store.on('added', reportDiskResidency);
  store.on('removed', reportDiskResidency);
  const tracing = createTracing({ serviceName: 'peft-gateway', otlpEndpoint: settings.otlpEndpoint, exporter: options.traceExporter });

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
  const webSockets = attachWebSocketApi(server, services, { pingIntervalMs: settings.webSocketPingSeconds * 1000 });
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
  return { url, services, close };
}

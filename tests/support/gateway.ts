import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import OpenAI from 'openai';
import { startGateway, type RunningGateway } from '../../src/gateway/server.ts';
import { STORIES_HF_DIR } from './models.ts';

/** Keys of the test deployment: two tenants and an admin, as a platform team would configure them. */
export const KEYS = { acme: 'sk-test-acme', globex: 'sk-test-globex', admin: 'sk-test-admin' } as const;
export const BASE_MODEL = 'stories260K-hf';

export interface TestGateway extends RunningGateway {
  adaptersDir: string;
  trainingDir: string;
  traces: InMemorySpanExporter;
  /** An official OpenAI client for a key (default: tenant acme), with retries off so tests see each answer. */
  client(key?: string, options?: ConstructorParameters<typeof OpenAI>[0]): OpenAI;
  stop(): Promise<void>;
}

/** Writes the test deployment's tenants file (KEYS) into `dir` and returns its path, for GATEWAY_CONFIG. */
export async function writeTenantsFile(dir: string, limits: { maxConcurrentRequests?: number; tokensPerMinute?: number } = {}): Promise<string> {
  const configPath = join(dir, 'gateway.yaml');
  const tenantLimits = { max_concurrent_requests: limits.maxConcurrentRequests ?? 16, tokens_per_minute: limits.tokensPerMinute ?? 1_000_000 };
  await writeFile(
    configPath,
    JSON.stringify({
      admin_keys: [{ key: KEYS.admin }],
      tenants: { acme: { keys: [{ key: KEYS.acme }], limits: tenantLimits }, globex: { keys: [{ key: KEYS.globex }], limits: tenantLimits } },
    }),
  );
  return configPath;
}

/** Starts the real gateway on a free loopback port, serving stories260K with a fresh adapter store. */
export async function startTestGateway(
  limits: { maxConcurrentRequests?: number; tokensPerMinute?: number } = {},
  env: Record<string, string> = {},
  writeLog: (line: string) => void = () => {},
): Promise<TestGateway> {
  const dir = await mkdtemp(join(tmpdir(), 'gateway-'));
  const adaptersDir = join(dir, 'adapters');
  const trainingDir = join(dir, 'training');
  const configPath = await writeTenantsFile(dir, limits);
  const traces = new InMemorySpanExporter();
  const gateway = await startGateway(
    {
      PORT: '0',
      HOST: '127.0.0.1',
      MODEL_PATH: STORIES_HF_DIR,
      ADAPTERS_DIR: adaptersDir,
      TRAINING_DIR: trainingDir,
      GATEWAY_CONFIG: configPath,
      MAX_BATCH_SIZE: '8',
      ADAPTER_SLOTS: '4',
      MAX_LORA_RANK: '16',
      ENGINE_THREADS: '1',
      ...env,
    },
    { traceExporter: traces, writeLog },
  );
  return {
    ...gateway,
    adaptersDir,
    trainingDir,
    traces,
    client: (key = KEYS.acme, options = {}) => new OpenAI({ apiKey: key, baseURL: `${gateway.url}/v1`, maxRetries: 0, ...options }),
    stop: async () => {
      await gateway.close(2000);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * The gateway as `npm start` runs it (loadtest/gateway-process.ts), serving stories260K to the test tenants, so a
 * test can SIGKILL it, restart it on the same directories, or start it under an operating-system limit (a
 * file-size limit, dropped capabilities) that applies to that process only. Its log is kept for the test to read.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import OpenAI from 'openai';
import { startGatewayProcess, type GatewayProcess } from '../../loadtest/gateway-process.ts';
import { KEYS, writeTenantsFile } from './gateway.ts';
import { STORIES_HF_DIR } from './models.ts';

export interface SpawnedGateway extends GatewayProcess {
  /** Everything the process wrote to stderr so far (JSON log lines). */
  log(): string;
  client(key?: string): OpenAI;
}

/**
 * Starts the gateway with the test tenants (KEYS), serving stories260K from `adaptersDir` with its other files in
 * `dir`; `env` adds to or overrides those settings.
 */
export async function spawnGateway(dir: string, adaptersDir: string, options: { wrapper?: string[]; env?: Record<string, string> } = {}): Promise<SpawnedGateway> {
  await mkdir(dir, { recursive: true });
  let log = '';
  const gateway = await startGatewayProcess({
    wrapper: options.wrapper,
    env: {
      MODEL_PATH: STORIES_HF_DIR,
      ADAPTERS_DIR: adaptersDir,
      TRAINING_DIR: join(dir, 'training'),
      GATEWAY_CONFIG: await writeTenantsFile(dir),
      TRAINER: 'external',
      ENGINE_THREADS: '1',
      MAX_BATCH_SIZE: '4',
      ...options.env,
    },
    onLine: (line) => (log += `${line}\n`),
  });
  return {
    ...gateway,
    log: () => log,
    client: (key = KEYS.acme) => new OpenAI({ apiKey: key, baseURL: `${gateway.url}/v1`, maxRetries: 0 }),
  };
}

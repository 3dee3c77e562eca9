/**
 * The gateway as `npm start` runs it: `src/main.ts` in its own process, so a test can SIGKILL it, restart it on the
 * same directories, or start it under an operating-system limit (a file-size limit, dropped capabilities) that
 * applies to that process only. Its JSON log lines are kept for the test to read.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import OpenAI from 'openai';
import { KEYS, writeTenantsFile } from './gateway.ts';
import { REPO_ROOT, STORIES_HF_DIR } from './models.ts';

export interface SpawnedGateway {
  url: string;
  child: ChildProcess;
  /** Everything the process wrote to stderr so far (JSON log lines). */
  log(): string;
  /** Resolves with the exit code (null when a signal ended it) once the process has exited. */
  exited: Promise<number | null>;
  client(key?: string): OpenAI;
  /** SIGKILL: no shutdown code runs, as when the machine loses power or the kernel kills the process. */
  kill(): Promise<void>;
  /** SIGTERM, then waits for the graceful exit. */
  stop(): Promise<number | null>;
}

export interface SpawnOptions {
  /** A command (and its arguments) that runs the gateway's node process, e.g. `prlimit --fsize=N --`. */
  wrapper?: string[];
  env?: Record<string, string>;
}

/**
 * Starts the gateway on a free loopback port with the test tenants (KEYS), serving stories260K from `adaptersDir`,
 * and resolves once it logs that it is serving.
 */
export async function spawnGateway(dir: string, adaptersDir: string, options: SpawnOptions = {}): Promise<SpawnedGateway> {
  await mkdir(dir, { recursive: true });
  const env = {
    ...process.env,
    MODEL_PATH: STORIES_HF_DIR,
    PORT: '0',
    HOST: '127.0.0.1',
    ADAPTERS_DIR: adaptersDir,
    TRAINING_DIR: join(dir, 'training'),
    GATEWAY_CONFIG: await writeTenantsFile(dir),
    TRAINER: 'external',
    ENGINE_THREADS: '1',
    MAX_BATCH_SIZE: '4',
    ...options.env,
  };
  const command = [...(options.wrapper ?? []), process.execPath, '--import', 'tsx', join(REPO_ROOT, 'src/main.ts')];
  const child = spawn(command[0], command.slice(1), { cwd: REPO_ROOT, env, stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let log = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr!.on('data', (chunk) => {
      log += chunk;
      // The last piece may be a line still being written.
      for (const line of log.split('\n').slice(0, -1)) {
        if (!line.startsWith('{')) continue;
        const entry = JSON.parse(line) as { msg?: string; url?: string };
        if (entry.msg === 'serving' && entry.url) resolve(entry.url);
      }
    });
    child.once('exit', (code, signal) => reject(new Error(`the gateway exited (${code ?? signal}) before serving: ${log}`)));
  });
  return {
    url,
    child,
    log: () => log,
    exited,
    client: (key = KEYS.acme) => new OpenAI({ apiKey: key, baseURL: `${url}/v1`, maxRetries: 0 }),
    kill: async () => {
      child.kill('SIGKILL');
      await exited;
    },
    stop: async () => {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

/**
 * The trainer sidecar as a child process of the gateway (TRAINER=child, the default), so that `npm start` alone
 * gives a working fine-tuning API. The child gets the gateway's environment with the model the gateway resolved,
 * is restarted (with backoff) if it dies, and is stopped with SIGTERM when the gateway stops: running jobs pause
 * after their current step and resume at the next start. Over an IPC channel the child announces each finished
 * job's adapter, and `loadPublished` brings it into the engine before the job says `succeeded` (gateway-link.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../../gateway/logger.ts';
import type { AdapterPublishedMessage, AdapterReadyMessage } from './gateway-link.ts';
import type { PublishedAdapter } from './job-runner.ts';

export interface TrainerChild {
  stop(graceMs?: number): Promise<void>;
}

const TRAINER_MAIN = fileURLToPath(new URL('../../trainer-main.ts', import.meta.url));
const MAX_RESTART_DELAY_MS = 30_000;

export function superviseTrainer(
  env: NodeJS.ProcessEnv,
  logger: Logger,
  loadPublished: (adapter: PublishedAdapter) => Promise<void>,
): TrainerChild {
  let child: ChildProcess | undefined;
  let stopping = false;
  let restartDelayMs = 1000;
  let restartTimer: NodeJS.Timeout | undefined;

  const launch = () => {
    // The parent's execArgv carries tsx's loader, which the child needs to run TypeScript too.
    const started = Date.now();
    const current = spawn(process.execPath, [...process.execArgv, TRAINER_MAIN], { env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    child = current;
    logger.info('trainer sidecar started as a child process', { pid: current.pid });
    current.on('message', (message: AdapterPublishedMessage) => {
      if (message?.type !== 'adapter-published') return;
      const { tenant, adapter, version } = message;
      void loadPublished({ tenant, adapter, version })
        .catch((error: Error) => logger.warn('a published adapter could not be loaded ahead of its first request', { tenant, adapter, version, error: error.message }))
        .finally(() => {
          if (current.connected) current.send({ type: 'adapter-ready', id: message.id } satisfies AdapterReadyMessage);
        });
    });
    current.on('exit', (code, signal) => {
      if (child === current) child = undefined;
      if (stopping) return;
      // A child that ran for a while gets a fresh backoff: its exit is a new failure, not a crash loop.
      if (Date.now() - started > MAX_RESTART_DELAY_MS) restartDelayMs = 1000;
      logger.warn('trainer sidecar exited; restarting', { code: code ?? undefined, signal: signal ?? undefined, delayMs: restartDelayMs });
      restartTimer = setTimeout(launch, restartDelayMs);
      restartDelayMs = Math.min(restartDelayMs * 2, MAX_RESTART_DELAY_MS);
    });
  };
  launch();

  return {
    async stop(graceMs = 30_000) {
      stopping = true;
      clearTimeout(restartTimer);
      const running = child;
      if (!running || running.exitCode !== null) return;
      const exited = new Promise<void>((resolve) => running.once('exit', () => resolve()));
      running.kill('SIGTERM');
      const timer = setTimeout(() => running.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
}

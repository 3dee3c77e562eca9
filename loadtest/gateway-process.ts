/**
 * A real gateway process, started as `npm start` starts it (node + tsx on src/main.ts) on a free loopback port:
 * for the soak harness and for tests that must signal it, SIGKILL and restart it on the same directories, run it
 * under an operating-system limit, or read what the operating system sees of it (resident memory, open files).
 *
 * It never outlives whoever started it. It gets an IPC channel, and the entry point shuts down as on SIGTERM when
 * the channel closes (src/shutdown-on-signals.ts): when its parent exits, is ended by a signal, crashes or is
 * SIGKILLed. A parent that exits normally SIGKILLs it on the way out, so nothing waits for a graceful shutdown.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));
const MAIN = fileURLToPath(new URL('../src/main.ts', import.meta.url));
/** Lines of stderr quoted when the process exits before it serves. */
const QUOTED_LINES = 20;

/** A structured log line of the gateway (src/gateway/logger.ts). */
export type LogRecord = Record<string, unknown> & { level?: string; msg?: string };

export interface GatewayProcessOptions {
  /** Settings over this process's environment; HOST and PORT default to a free loopback port. */
  env: Record<string, string>;
  /** A command (and its arguments) that runs the gateway's node process, e.g. `prlimit --fsize=N --`. */
  wrapper?: string[];
  /** Every line the process writes to stderr: its log records, and plain lines such as `SIGTERM: ...`. */
  onLine?: (line: string, record: LogRecord | null) => void;
}

export interface GatewayProcess {
  url: string;
  pid: number;
  child: ChildProcess;
  /** Resolves with the exit code, or the signal's name, once the process has exited. */
  readonly exited: Promise<number | NodeJS.Signals>;
  signal(name: NodeJS.Signals): void;
  /** SIGKILL: no shutdown code runs, as when the machine loses power or the kernel kills the process. */
  kill(): Promise<void>;
  /** SIGTERM, then waits for the graceful exit. */
  stop(): Promise<number | NodeJS.Signals>;
  residentBytes(): Promise<number>;
  openFileDescriptors(): Promise<number>;
}

/** Starts `src/main.ts`; resolves once it logs that it serves. */
export async function startGatewayProcess(options: GatewayProcessOptions): Promise<GatewayProcess> {
  const command = [...(options.wrapper ?? []), process.execPath, '--import', 'tsx', MAIN];
  const child = spawn(command[0], command.slice(1), {
    cwd: REPO_ROOT,
    env: { ...process.env, HOST: '127.0.0.1', PORT: '0', ...options.env },
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
  });
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const exited = new Promise<number | NodeJS.Signals>((resolve) =>
    child.once('exit', (code, signal) => {
      process.off('exit', killOnExit);
      resolve(code ?? signal!);
    }),
  );
  const recent: string[] = [];
  const url = await new Promise<string>((resolve, reject) => {
    let pending = '';
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      pending += chunk;
      const lines = pending.split('\n');
      // The last piece may be a line still being written.
      pending = lines.pop()!;
      for (const line of lines) {
        const record = parseLogLine(line);
        if (record?.msg === 'serving') resolve(String(record.url));
        recent.push(line);
        if (recent.length > QUOTED_LINES) recent.shift();
        options.onLine?.(line, record);
      }
    });
    void exited.then((outcome) => reject(new Error(`the gateway exited (${outcome}) before serving:\n${recent.join('\n')}`)));
  });
  const pid = child.pid!;
  return {
    url,
    pid,
    child,
    exited,
    signal: (name) => child.kill(name),
    kill: async () => {
      child.kill('SIGKILL');
      await exited;
    },
    stop: () => {
      child.kill('SIGTERM');
      return exited;
    },
    residentBytes: async () => {
      const status = await readFile(`/proc/${pid}/status`, 'utf8');
      return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)![1]) * 1024;
    },
    openFileDescriptors: async () => (await readdir(`/proc/${pid}/fd`)).length,
  };
}

function parseLogLine(line: string): LogRecord | null {
  if (!line.startsWith('{')) return null;
  try {
    return JSON.parse(line) as LogRecord;
  } catch {
    return null;
  }
}

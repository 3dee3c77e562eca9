/**
 * A real gateway process, started as `npm start` starts it (node + tsx on src/main.ts), for a harness that must
 * signal it and watch what the operating system sees: its resident memory and its open file descriptors.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const MAIN = fileURLToPath(new URL('../../src/main.ts', import.meta.url));

/** A structured log line of the gateway (src/gateway/logger.ts). */
export type LogRecord = Record<string, unknown> & { level?: string; msg?: string };

export interface GatewayProcess {
  url: string;
  pid: number;
  /** The warn and error lines it logged so far; info lines (one per request) are read and dropped. */
  readonly problems: LogRecord[];
  /** Resolves with the exit code, or the signal's name, once the process has exited. */
  readonly exited: Promise<number | string>;
  signal(name: NodeJS.Signals): void;
  /** Resolves once the process wrote a line saying it began shutting down on `name` (src/shutdown-on-signals.ts). */
  shutdownBegan(name: NodeJS.Signals): Promise<void>;
  residentBytes(): Promise<number>;
  openFileDescriptors(): Promise<number>;
}

/** Starts `src/main.ts` with `env` on a free loopback port; resolves once it serves. */
export async function startGatewayProcess(env: Record<string, string>): Promise<GatewayProcess> {
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', MAIN], {
    env: { ...process.env, HOST: '127.0.0.1', PORT: '0', TRAINER: 'external', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  // Whatever happens to the harness, its gateway does not outlive it.
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const exited = new Promise<number | string>((resolve) =>
    child.once('exit', (code, signal) => {
      process.off('exit', killOnExit);
      resolve(code ?? signal ?? -1);
    }),
  );
  const problems: LogRecord[] = [];
  const shutdownLines = new Map<string, () => void>();
  const shutdownBegan = (name: NodeJS.Signals) => new Promise<void>((resolve) => shutdownLines.set(name, resolve));
  const url = await new Promise<string>((resolve, reject) => {
    let pending = '';
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      pending += chunk;
      const lines = pending.split('\n');
      pending = lines.pop()!;
      for (const line of lines) {
        const record = parseLogLine(line);
        if (record?.msg === 'serving') resolve(String(record.url));
        else if (record && (record.level === 'warn' || record.level === 'error')) problems.push(record);
        else if (!record && /^SIG(TERM|INT): /.test(line)) shutdownLines.get(line.split(':')[0])?.();
        else if (!record && line.trim() !== '') problems.push({ level: 'stderr', msg: line });
      }
    });
    void exited.then((code) => reject(new Error(`the gateway exited with ${code} before serving: ${JSON.stringify(problems.slice(-3))}`)));
  });
  const pid = child.pid!;
  return {
    url,
    pid,
    problems,
    exited,
    signal: (name) => child.kill(name),
    shutdownBegan,
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

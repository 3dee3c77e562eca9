/**
 * Debian's Prometheus server for tests: a temporary config and TSDB, a free loopback port, scraping the given
 * targets every second. `query` runs an instant query over the HTTP API.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { stringify } from 'yaml';
import { debianBinary } from './binaries.ts';

export interface PrometheusTarget {
  job: string;
  /** Base URL of the process whose /metrics to scrape. */
  url: string;
}

export interface PromSample {
  metric: Record<string, string>;
  value: [number, string];
}

export interface RunningPrometheus {
  url: string;
  query(expr: string): Promise<PromSample[]>;
  /** GET an API path (under /api/v1) and return its `data`. */
  api<T>(path: string): Promise<T>;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Polls `condition` until it returns a value, or fails after `capMs` (a cap for a loaded machine, not a speed). */
export async function waitFor<T>(what: string | (() => string), condition: () => Promise<T | undefined>, capMs = 180_000): Promise<T> {
  const deadline = Date.now() + capMs;
  for (;;) {
    const result = await condition();
    if (result !== undefined) return result;
    assert.ok(Date.now() < deadline, `gave up waiting for ${typeof what === 'string' ? what : what()}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

export async function startPrometheus(targets: PrometheusTarget[], ruleFiles: string[] = []): Promise<RunningPrometheus> {
  const binary = debianBinary('/usr/bin/prometheus', 'prometheus');
  const dir = await mkdtemp(join(tmpdir(), 'prometheus-'));
  const config = join(dir, 'prometheus.yml');
  // Copied beside the config, so the UI names the rules file without the checkout's location.
  const rules = await Promise.all(
    ruleFiles.map(async (file) => {
      const copy = join(dir, basename(file));
      await copyFile(file, copy);
      return copy;
    }),
  );
  await writeFile(
    config,
    stringify({
      global: { scrape_interval: '1s', evaluation_interval: '1s' },
      rule_files: rules,
      scrape_configs: targets.map(({ job, url }) => ({ job_name: job, static_configs: [{ targets: [new URL(url).host] }] })),
    }),
  );
  const port = await freePort();
  let output = '';
  const child: ChildProcess = spawn(
    binary,
    [
      `--config.file=${config}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  child.stdout!.on('data', (chunk) => (output += chunk));
  child.stderr!.on('data', (chunk) => (output += chunk));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `http://127.0.0.1:${port}`;

  async function api<T>(path: string): Promise<T> {
    const response = await fetch(`${url}/api/v1/${path}`);
    const body = (await response.json()) as { status: string; data: T; error?: string };
    assert.equal(body.status, 'success', `${path}: ${body.error}`);
    return body.data;
  }

  const stop = async () => {
    if (child.exitCode === null) child.kill('SIGTERM');
    await exited;
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await waitFor('Prometheus to become ready', async () => {
      assert.equal(child.exitCode, null, `prometheus exited: ${output}`);
      const ready = await fetch(`${url}/-/ready`).then((r) => r.ok, () => false);
      return ready ? true : undefined;
    });
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    url,
    api,
    query: async (expr) => (await api<{ result: PromSample[] }>(`query?query=${encodeURIComponent(expr)}`)).result,
    stop,
  };
}

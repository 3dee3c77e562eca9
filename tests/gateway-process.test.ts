/**
 * A gateway started through loadtest/gateway-process.ts (by the soak harness or a test) never outlives the process
 * that started it, however that process ends: the gateway watches its IPC channel to its parent.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { setTimeout as delay } from 'node:timers/promises';
import { REPO_ROOT } from './support/models.ts';

const dir = await mkdtemp(join(tmpdir(), 'gateway-parent-'));
after(() => rm(dir, { recursive: true, force: true }));

/** Whether `pid` still runs: a zombie nobody reaps yet (the orphan's new parent may be slow to) has ended. */
function running(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1][0] !== 'Z';
  } catch {
    return false;
  }
}

for (const signal of ['SIGKILL', 'SIGTERM', 'SIGINT'] as const) {
  // The timeout only bounds a hang (the failure this guards against); a passing run takes seconds.
  test(`a gateway whose parent is ended by ${signal} stops too`, { timeout: 300_000 }, async () => {
    const parent = spawn(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'tests/support/gateway-parent.ts'), join(dir, signal)], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const [line] = (await once(parent.stdout!.setEncoding('utf8'), 'data')) as [string];
    const gatewayPid = Number(line.trim());
    assert.ok(Number.isInteger(gatewayPid) && running(gatewayPid), `the gateway runs (pid ${line.trim()})`);
    parent.kill(signal);
    await once(parent, 'exit');
    // Nothing to wait on in this process but the operating system's view of the orphan: polled, never timed.
    while (running(gatewayPid)) await delay(50);
  });
}

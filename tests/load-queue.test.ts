/**
 * The adapter loader thread's order of work (load-queue.ts): one load at a time in the order asked for, results
 * delivered at once, a pause between loads only while more wait, and a stuck load not holding the line. Every
 * load, pause and timer here ends when the test says so, so nothing depends on how fast the machine is.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { LoadQueue, type LoadQueueTimers } from '../src/engine/load-queue.ts';

/** A promise with its resolve and reject, for a load or a pause the test ends. */
function gate<T = void>() {
  let resolve!: (value: T) => void;
  let reject!: (error: Error) => void;
  const promise = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)));
  return { promise, resolve, reject };
}

/** Timers for a queue: its pauses as given, and a stuck-load timer that never ends unless given one. */
function timersOf(pause: LoadQueueTimers['pause'], stuck: LoadQueueTimers['stuck'] = () => new Promise(() => {})): LoadQueueTimers {
  return { pause, stuck };
}

/** Lets every settled promise and pending callback run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await nextTurn();
}

test('loads run one at a time in the order asked for, each result at once, the next after a pause', async () => {
  const pauses: { ms: number; end: () => void }[] = [];
  const queue = new LoadQueue(timersOf((ms) => new Promise<void>((end) => pauses.push({ ms, end }))));
  const started: string[] = [];
  const loads = { a: gate<string>(), b: gate<string>(), c: gate<string>() };
  const results: string[] = [];
  for (const name of ['a', 'b', 'c'] as const) {
    void queue.run(() => (started.push(name), loads[name].promise)).then((value) => results.push(value));
  }
  await settle();
  assert.deepEqual(started, ['a'], 'only the first load runs');

  loads.a.resolve('A');
  await settle();
  assert.deepEqual(results, ['A'], 'its result comes before the pause ends');
  assert.equal(pauses.length, 1, 'loads wait behind it, so the loader pauses');
  assert.ok(pauses[0].ms >= 0);
  assert.deepEqual(started, ['a'], 'the next load waits for the pause');

  pauses[0].end();
  await settle();
  assert.deepEqual(started, ['a', 'b']);
  loads.b.resolve('B');
  await settle();
  pauses[1].end();
  await settle();
  assert.deepEqual(started, ['a', 'b', 'c']);
  loads.c.resolve('C');
  await settle();
  assert.deepEqual(results, ['A', 'B', 'C']);
  assert.equal(pauses.length, 2, 'nothing waits behind the last load: no pause after it');
});

test('a failed load fails alone, and the loads behind it still run', async () => {
  let pauses = 0;
  const queue = new LoadQueue(timersOf(async () => void pauses++));
  const failing = gate<string>();
  const first = queue.run(() => failing.promise);
  const second = queue.run(async () => 'second');
  failing.reject(new Error('altered file'));
  await assert.rejects(first, /altered file/);
  assert.equal(await second, 'second');
  assert.equal(pauses, 1);
});

test('a lone load never pauses', async () => {
  let pauses = 0;
  const queue = new LoadQueue(timersOf(async () => void pauses++));
  assert.equal(await queue.run(async () => 1), 1);
  await settle();
  assert.equal(await queue.run(async () => 2), 2);
  await settle();
  assert.equal(pauses, 0);
});

test('a load stuck past its time stops holding the line: the next one starts beside it', async () => {
  const stuckTimers: (() => void)[] = [];
  let pauses = 0;
  const queue = new LoadQueue(timersOf(async () => void pauses++, () => new Promise<void>((end) => stuckTimers.push(end))));
  const hanging = gate<string>();
  const started: string[] = [];
  const first = queue.run(() => (started.push('hanging'), hanging.promise));
  const second = queue.run(async () => (started.push('next'), 'next'));
  await settle();
  assert.deepEqual(started, ['hanging']);
  assert.equal(stuckTimers.length, 1, 'the running load has its timer');
  stuckTimers[0]();
  assert.equal(await second, 'next');
  assert.deepEqual(started, ['hanging', 'next']);
  assert.equal(pauses, 0, 'no pause after a load that never ended');
  hanging.resolve('late');
  assert.equal(await first, 'late', 'the stuck load still delivers its result');
});

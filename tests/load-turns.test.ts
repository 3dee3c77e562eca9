/**
 * The turns adapter loads take between the engine's passes (load-turns.ts): nothing runs until a turn, one phase
 * runs a turn unless the turn has time for more, loads go in the order asked for, a failure fails only its own
 * load, and a phase that outlasts its turn lets its load run on without holding back the next. Loads here are
 * phases the test ends itself and a turn's time runs out when the test says so, so nothing depends on how fast
 * the machine is.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate as nextTurn } from 'node:timers/promises';
import type { LoadAdapter } from '../src/engine/adapter-loader.ts';
import { LoadTurns, type TurnTimer } from '../src/engine/load-turns.ts';
import type { SlotReadyAdapter } from '../src/runtime/slot-ready-adapter.ts';

/** Lets every settled promise and pending callback run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await nextTurn();
}

/** A laid-out adapter standing for the one named `name` (the turns never look inside). */
function laidOut(name: string): SlotReadyAdapter {
  return { family: 'lora', loraRank: 0, bottleneckWidth: 0, usesFixedInputs: false, prompt: { family: 'lora', virtualTokens: 0 }, blocks: new Map(), byteSize: name.length };
}

/** Loads of three phases each, logging `<adapter key>:<phase>` as each phase runs; `fail` names a load that throws in its second. */
function phasedLoads(log: string[], fail?: string): LoadAdapter {
  return async (ref, between) => {
    for (const phase of [1, 2, 3]) {
      if (phase > 1) await between!();
      log.push(`${ref.key}:${phase}`);
      if (ref.key === fail && phase === 2) throw new Error(`${ref.key} is corrupt`);
    }
    return laidOut(ref.key);
  };
}

/** A turn timer that never runs out unless the test ends it: `expire()` ends every wait so far. */
function manualTimer() {
  const waits: (() => void)[] = [];
  const timer: TurnTimer = () => new Promise<void>((end) => waits.push(end));
  return { timer, expire: () => waits.splice(0).forEach((end) => end()) };
}

const ref = (key: string) => ({ key, path: `/adapters/${key}` });

test('nothing loads until a turn; each turn runs one phase of the first load asked for, in order', async () => {
  const log: string[] = [];
  let queued = 0;
  const turns = new LoadTurns(phasedLoads(log), () => queued++, 150, manualTimer().timer);
  const results: string[] = [];
  for (const key of ['a', 'b']) void turns.load(ref(key)).then((adapter) => results.push(`${key}:${adapter.byteSize}`));
  await settle();
  assert.deepEqual(log, [], 'no phase runs outside a turn');
  assert.equal(queued, 2, 'each load asked for wakes the engine');
  assert.equal(turns.waiting, 2);

  for (const expected of [['a:1'], ['a:1', 'a:2'], ['a:1', 'a:2', 'a:3']]) {
    await turns.takeTurn();
    await settle();
    assert.deepEqual(log, expected, 'one phase a turn, none between turns');
  }
  assert.deepEqual(results, ['a:1'], 'a load is delivered as its last phase ends');
  assert.equal(turns.waiting, 1);
  for (let i = 0; i < 3; i++) await turns.takeTurn();
  await settle();
  assert.deepEqual(log.slice(3), ['b:1', 'b:2', 'b:3']);
  assert.deepEqual(results, ['a:1', 'b:1']);
  assert.equal(turns.waiting, 0);
  await turns.takeTurn();
  assert.deepEqual(log.length, 6, 'a turn with nothing waiting does nothing');
});

test('a turn with time to spare runs further phases of its load, and the next load after one that was whole in a phase', async () => {
  const log: string[] = [];
  // `ready-*` loads are whole in one phase, as a layout read back from disk is; the others take three.
  const loads: LoadAdapter = async (r, between) => {
    if (!r.key.startsWith('ready')) return phasedLoads(log)(r, between);
    log.push(`${r.key}:1`);
    return laidOut(r.key);
  };
  const turns = new LoadTurns(loads, () => {}, 150, manualTimer().timer);
  const results = ['ready-a', 'ready-b', 'c', 'd'].map((key) => turns.load(ref(key)));
  // A budget no phase here comes near: both one-phase loads, then the whole of c, which ends the turn.
  await turns.takeTurn(60_000);
  assert.deepEqual(log, ['ready-a:1', 'ready-b:1', 'c:1', 'c:2', 'c:3']);
  assert.deepEqual((await Promise.all(results.slice(0, 3))).map((adapter) => adapter.byteSize), ['ready-a', 'ready-b', 'c'].map((key) => key.length));
  assert.equal(turns.waiting, 1);
  // No time to spare: one phase.
  await turns.takeTurn(0);
  assert.deepEqual(log.slice(5), ['d:1']);
  for (let i = 0; i < 2; i++) await turns.takeTurn(0);
  await results[3];
});

test('a failed load fails alone, and the next turn goes to the load behind it', async () => {
  const log: string[] = [];
  const turns = new LoadTurns(phasedLoads(log, 'bad'), () => {}, 150, manualTimer().timer);
  const bad = turns.load(ref('bad'));
  const good = turns.load(ref('good'));
  await turns.takeTurn();
  await turns.takeTurn();
  await assert.rejects(bad, /bad is corrupt/);
  assert.equal(turns.waiting, 1);
  for (let i = 0; i < 3; i++) await turns.takeTurn();
  assert.equal((await good).byteSize, 'good'.length);
  assert.deepEqual(log, ['bad:1', 'bad:2', 'good:1', 'good:2', 'good:3']);
});

test('a phase that outlasts its turn lets its load run on without pausing, and the next turn goes to the next load', async () => {
  const log: string[] = [];
  let releaseStuck!: () => void;
  const stuckRead = new Promise<void>((resolve) => (releaseStuck = resolve));
  const loads: LoadAdapter = async (r, between) => {
    if (r.key === 'stuck') await stuckRead;
    return phasedLoads(log)(r, between);
  };
  const { timer, expire } = manualTimer();
  const turns = new LoadTurns(loads, () => {}, 150, timer);
  const stuck = turns.load(ref('stuck'));
  const next = turns.load(ref('next'));

  const turn = turns.takeTurn();
  await settle();
  assert.deepEqual(log, [], 'the stuck phase holds its turn');
  expire();
  await turn;
  assert.equal(turns.waiting, 1, 'the stuck load no longer waits for turns');
  await turns.takeTurn();
  await settle();
  assert.deepEqual(log, ['next:1'], 'the next turn went to the load behind it');

  releaseStuck();
  assert.equal((await stuck).byteSize, 'stuck'.length);
  assert.deepEqual(log, ['next:1', 'stuck:1', 'stuck:2', 'stuck:3'], 'once free, its phases ran on without turns');
  for (let i = 0; i < 2; i++) await turns.takeTurn();
  assert.equal((await next).byteSize, 'next'.length);
});

test('a load no request waits for goes behind every load a request waits for, and a turn given to those stops before it', async () => {
  const log: string[] = [];
  const wholeInOnePhase: LoadAdapter = async (r) => {
    log.push(r.key);
    return laidOut(r.key);
  };
  const turns = new LoadTurns(wholeInOnePhase, () => {}, 150, manualTimer().timer);
  const prepared = turns.prepare(ref('uploaded'));
  assert.equal(turns.nextAskedAt, Infinity, 'alone, it yields to any prompt chunk');
  const asked = [turns.load(ref('requested-1')), turns.load(ref('requested-2'))];
  assert.ok(turns.nextAskedAt < Infinity);
  await turns.takeTurn(60_000);
  assert.deepEqual(log, ['requested-1', 'requested-2']);
  await Promise.all(asked);
  assert.equal(turns.waiting, 1);
  await turns.takeTurn(60_000);
  assert.deepEqual(log, ['requested-1', 'requested-2', 'uploaded']);
  assert.equal((await prepared).byteSize, 'uploaded'.length);
});

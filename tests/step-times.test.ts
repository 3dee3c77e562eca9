import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadTurnBudget, STEP_GAP_LIMIT, StepTimes } from '../src/engine/step-times.ts';

test('the typical step is the median of the last 64 steps recorded', () => {
  const times = new StepTimes();
  assert.equal(times.typical(), Infinity, 'no bound before the first step');
  for (let i = 0; i < 63; i++) times.record(40);
  times.record(500);
  assert.equal(times.typical(), 40, 'one slow step does not move it');
  // 64 steps of 100 ms push every earlier step out of the window.
  for (let i = 0; i < 64; i++) times.record(100);
  assert.equal(times.typical(), 100);
});

test('a load turn gets the decode pass times the loads waiting, within the gap limit counted from the step start', () => {
  // A lone load beside a 40 ms decode pass, steps typically 60 ms: one decode pass's time.
  assert.equal(loadTurnBudget(40, 1, 42, 60), 40);
  // Eight loads waiting would give 320 ms; the step may reach STEP_GAP_LIMIT typical steps, and 42 ms have passed.
  assert.equal(loadTurnBudget(40, 8, 42, 40), STEP_GAP_LIMIT * 40 - 42);
  // A decode pass that already took the whole bound leaves nothing (the turn still runs one phase).
  assert.ok(loadTurnBudget(90, 8, 92, 40) <= 0);
  // Before any step was timed, only the loads waiting bound it.
  assert.equal(loadTurnBudget(40, 8, 42, Infinity), 320);
});

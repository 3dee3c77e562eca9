/**
 * The scheduling rules, checked step by step on the real model: each StepReport is one engine step, and every
 * forward pass is recorded as it reaches the runner. Nothing here depends on how fast the machine is: requests
 * are submitted from inside the step callbacks, and the assertions count steps, not milliseconds.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ADAPTER_CONFIG_FILE } from '../src/adapters/adapter-files.ts';
import { ADAPTER_WEIGHTS_FILE } from '../src/adapters/lora.ts';
import { randomLoraAdapter, writeLoraAdapter } from '../src/adapters/lora-writer.ts';
import type { LoadAdapter } from '../src/engine/adapter-loader.ts';
import { AdapterLoaderThread } from '../src/engine/adapter-loader-thread.ts';
import { planPrefillPass } from '../src/engine/prefill-plan.ts';
import type { AdapterRef, SequenceRequest } from '../src/engine/protocol.ts';
import { Scheduler, type SchedulerOptions, type StepReport } from '../src/engine/scheduler.ts';
import { loadBaseModel } from '../src/model/load.ts';
import { LORA_TARGET_MODULES } from '../src/model/types.ts';
import { CACHE_BUCKET } from '../src/runtime/kv-cache.ts';
import { digestFile, type FileDigest } from '../src/registry/store-files.ts';
import { ModelRunner, type RowRange, type StepRow } from '../src/runtime/model-runner.ts';
import { greedy } from './support/greedy.ts';
import { REFERENCE, STORIES_HF_DIR } from './support/models.ts';

const GREEDY = { temperature: 0, topP: 1, topK: 0, presencePenalty: 0, frequencyPenalty: 0 };
const BUDGET = 8;
/** A 40-token prompt: the reference prompt followed by the reference continuation. */
const LONG_PROMPT = [...REFERENCE.promptIds, ...REFERENCE.greedyIds.slice(0, 35)];

interface Pass {
  firstRow: number;
  rows: { tokens: number; position: number }[];
  /** Decode rows fed in the same pass (a mixed pass: the lane's decode rows beside its prompt chunk). */
  beside: { tokens: number; position: number }[];
  /** The lane cache's rows and width as the pass started, and whether the pass itself had to grow it. */
  cache: { rows: number; width: number };
  grewCache: boolean;
}

const SLOT_RANK = 8;
let runner: ModelRunner;
let dir: string;
let adapter: AdapterRef;
const passes: Pass[] = [];
/** Whether a forward pass has started and not yet returned. */
let passInFlight = false;
let loaderThread: AdapterLoaderThread;
/** The engine's own loader thread: verifies, reads, validates and lays out adapter files. */
const load: LoadAdapter = (ref, between) => loaderThread.load(ref, between);

before(async () => {
  const model = await loadBaseModel(STORIES_HF_DIR);
  dir = await mkdtemp(join(tmpdir(), 'scheduler-'));
  const path = join(dir, 'a');
  await writeLoraAdapter(path, randomLoraAdapter(model.config, { rank: 4, targetModules: [...LORA_TARGET_MODULES], seed: 5, std: 0.2 }));
  adapter = { key: 't/a@1', path };
  runner = await ModelRunner.create(model, { maxBatch: 4, adapterSlots: 2, maxLoraRank: SLOT_RANK });
  loaderThread = new AdapterLoaderThread({ config: model.config, slotRank: SLOT_RANK });
  /** Records a pass as it reaches the runner: its rows (a mixed pass's prefill rows) and those decoding beside them. */
  async function recorded<T>(lane: number, { firstRow, rows }: RowRange, beside: StepRow[], run: () => Promise<T>): Promise<T> {
    const cache = runner.lanes[lane].cache;
    const shape = (r: StepRow) => ({ tokens: r.tokens.length, position: r.position });
    const pass: Pass = { firstRow, rows: rows.map(shape), beside: beside.map(shape), cache: { rows: cache.rows, width: cache.width }, grewCache: false };
    passes.push(pass);
    passInFlight = true;
    const result = await run().finally(() => (passInFlight = false));
    pass.grewCache = cache.rows !== pass.cache.rows || cache.width !== pass.cache.width;
    return result;
  }
  const forward = runner.forward.bind(runner);
  runner.forward = (firstRow: number, rows: StepRow[], lane = 0) => recorded(lane, { firstRow, rows }, [], () => forward(firstRow, rows, lane));
  const forwardMixed = runner.forwardMixed.bind(runner);
  runner.forwardMixed = (lane: number, decode: RowRange, prefill: RowRange) => recorded(lane, prefill, decode.rows, () => forwardMixed(lane, decode, prefill));
});

after(async () => {
  await loaderThread.close();
  await runner.close();
  await rm(dir, { recursive: true, force: true });
});

let nextId = 1;
function request(promptIds: number[], maxTokens: number, onAdapter: AdapterRef | null = null): SequenceRequest {
  return { id: nextId++, tenant: 't', promptIds, adapter: onAdapter, sampling: GREEDY, maxTokens, stopTokenIds: [] };
}

/** A scheduler whose steps go to `onStep`; resolves each sequence's tokens when it finishes. */
function createScheduler(
  onStep: (report: StepReport) => void = () => {},
  loadAdapter: LoadAdapter = load,
  loadTurnMs?: number,
  prefaultLoader?: SchedulerOptions['prefaultLoader'],
) {
  const tokens = new Map<number, number[]>();
  const finished = new Map<number, () => void>();
  const scheduler: Scheduler = new Scheduler(
    runner,
    { maxQueue: 8, maxPositions: 256, prefillTokenBudget: BUDGET, hostCacheBytes: 1 << 20, loadAdapter, loadTurnMs, prefaultLoader },
    {
      step(report) {
        for (const t of report.tokens) tokens.set(t.id, [...(tokens.get(t.id) ?? []), t.token]);
        onStep(report);
        for (const f of report.finished) finished.get(f.id)?.();
      },
      failed(id, message) {
        throw new Error(`sequence ${id} failed: ${message}`);
      },
    },
  );
  const run = (req: SequenceRequest) =>
    new Promise<number[]>((resolve) => {
      finished.set(req.id, () => resolve(tokens.get(req.id) ?? []));
      scheduler.submit(req);
    });
  return { scheduler, run };
}

test('the prefill plan keeps every pass within the budget and lets only leading rows finish', () => {
  assert.deepEqual(planPrefillPass([], 64), null);
  assert.deepEqual(planPrefillPass([200, 5], 64), { rows: 1, width: 64 });
  assert.deepEqual(planPrefillPass([64, 5], 64), { rows: 1, width: 64 });
  assert.deepEqual(planPrefillPass([10, 10, 10, 200], 64), { rows: 3, width: 10 });
  assert.deepEqual(planPrefillPass([5, 25, 25, 25], 64), { rows: 2, width: 25 });
  assert.deepEqual(planPrefillPass([25, 25, 25, 25, 25, 25, 25, 25], 128), { rows: 5, width: 25 });
  for (const remaining of [[1], [3, 70, 2], [63, 1, 1], [16, 16, 16, 16, 16], [40, 30, 20, 10]]) {
    const pass = planPrefillPass(remaining, 64)!;
    assert.ok(pass.rows * pass.width <= 64, `${remaining}: ${pass.rows} × ${pass.width}`);
    const finishing = remaining.slice(0, pass.rows).map((r) => r <= pass.width);
    assert.ok(finishing.every((f, i) => f || i === 0), `${remaining}: only a lone first row may stay unfinished`);
  }
});

test('a long prompt is split across steps while every decoding row advances in every step', async () => {
  const alone = await createScheduler().run(request(LONG_PROMPT, 6));

  const streaming = request(REFERENCE.promptIds, 40);
  const long = request(LONG_PROMPT, 6);
  const stepsAfterArrival: StepReport[] = [];
  let submitted = false;
  let passesBefore = 0;
  let longDone!: Promise<number[]>;
  const { run } = createScheduler((report) => {
    if (submitted) stepsAfterArrival.push(report);
    // The long prompt arrives once the first stream decodes: from then on, watch every step.
    if (!submitted && report.tokens.some((t) => t.id === streaming.id)) {
      submitted = true;
      passesBefore = passes.length;
      longDone = run(long);
    }
  });
  const streamed = await run(streaming);
  const longTokens = await longDone;

  const startStep = stepsAfterArrival.findIndex((r) => r.started.some((s) => s.id === long.id));
  assert.ok(startStep >= 0, 'the long prompt started');
  // 40 prompt tokens under a budget of 8: five steps of prefill, the last of which samples the first token.
  assert.equal(startStep, Math.ceil(LONG_PROMPT.length / BUDGET) - 1);
  for (const [i, report] of stepsAfterArrival.slice(0, startStep + 1).entries()) {
    assert.equal(report.tokens.filter((t) => t.id === streaming.id).length, 1, `step ${i}: the decoding stream advanced once`);
  }
  const prefillPasses = passes.slice(passesBefore).filter((p) => p.rows.some((r) => r.tokens > 1));
  assert.equal(prefillPasses.length, Math.ceil(LONG_PROMPT.length / BUDGET));
  for (const pass of prefillPasses) {
    assert.ok(pass.rows.length * Math.max(...pass.rows.map((r) => r.tokens)) <= BUDGET);
    // The decoding stream advances in the same pass as the chunk: a step is one pass, not two.
    assert.deepEqual(pass.beside.map((r) => r.tokens), [1], 'the decoding row rides along with the chunk');
  }
  assert.deepEqual(prefillPasses.map((p) => p.rows[0].position), [0, 8, 16, 24, 32]);

  // Splitting the prompt changes nothing in what is generated.
  assert.deepEqual(longTokens, alone);
  assert.deepEqual(streamed.slice(0, 32), REFERENCE.greedyIds);
});

test('a sequence whose adapter is loading waits without a row while every step goes on', async () => {
  const alone = await createScheduler().run(request(REFERENCE.promptIds, 8, adapter));

  let openGate!: () => void;
  const gate = new Promise<void>((resolve) => (openGate = resolve));
  let loadStarted = false;
  const gatedLoad: LoadAdapter = async (ref) => {
    loadStarted = true;
    await gate;
    return load(ref);
  };
  const streaming = request(REFERENCE.promptIds, 40);
  // Another key for the same files: the first run left the adapter resident in a slot of the shared runner.
  const onAdapter = request(REFERENCE.promptIds, 8, { ...adapter, key: 't/a@cold' });
  const whileLoading: StepReport[] = [];
  let adapterDone!: Promise<number[]>;
  const { run } = createScheduler((report) => {
    if (!adapterDone && report.tokens.some((t) => t.id === streaming.id)) {
      adapterDone = run(onAdapter);
      return;
    }
    // Loading starts in the step after the sequence is accepted, before it gets anywhere near a batch row.
    if (adapterDone !== undefined && whileLoading.length === 0) assert.ok(loadStarted, 'the adapter load started in the first step after submission');
    if (!adapterDone || report.started.some((s) => s.id === onAdapter.id) || whileLoading.length >= 6) return;
    whileLoading.push(report);
    if (whileLoading.length === 6) openGate();
  }, gatedLoad);
  const streamed = await run(streaming);
  const adapterTokens = await adapterDone;

  assert.equal(whileLoading.length, 6);
  for (const [i, report] of whileLoading.entries()) {
    assert.equal(report.tokens.filter((t) => t.id === streaming.id).length, 1, `step ${i}: the running stream advanced`);
    assert.equal(report.stats.running, 1, `step ${i}: the loading sequence holds no batch row`);
    assert.equal(report.stats.waiting, 1);
  }
  assert.deepEqual(streamed.slice(0, 32), REFERENCE.greedyIds);
  // Once loaded it runs with its adapter, exactly as it does alone.
  assert.deepEqual(adapterTokens, alone);
  assert.notDeepEqual(adapterTokens, REFERENCE.greedyIds.slice(0, 8));
});

/**
 * Records, in order, each pass's start and end and each load phase's start and end, with the runner's passes and
 * a loader wrapped to log them; `restore` puts the runner's own passes back.
 */
function recordTurns() {
  const events: string[] = [];
  const { forward, forwardMixed } = runner;
  const logged = async <T>(kinds: string[], run: () => Promise<T>): Promise<T> => {
    events.push(...kinds.map((kind) => `${kind}-start`));
    try {
      return await run();
    } finally {
      events.push(...kinds.map((kind) => `${kind}-end`));
    }
  };
  runner.forward = (firstRow, rows, lane) => logged([rows.some((r) => r.tokens.length > 1) ? 'prefill' : 'decode'], () => forward(firstRow, rows, lane));
  // A mixed pass is the step's decode pass and its prefill chunk in one.
  runner.forwardMixed = (lane, decode, prefill) => logged(['decode', 'prefill'], () => forwardMixed(lane, decode, prefill));
  const loggedLoad: LoadAdapter = async (ref, between) => {
    events.push('phase-start');
    const adapter = await load(ref, async () => {
      events.push('phase-end');
      await between!();
      events.push('phase-start');
    });
    events.push('phase-end', 'load-done');
    return adapter;
  };
  return { events, loggedLoad, restore: () => Object.assign(runner, { forward, forwardMixed }) };
}

/**
 * Each step starts with its decode pass; after it, its turn went to a prefill chunk (P), load phases (L, one per
 * phase), or nothing (-).
 */
function turnsOfSteps(events: string[]): string[] {
  return events
    .join(' ')
    .split('decode-start')
    .slice(1)
    .map((step) => (step.includes('prefill-start') ? 'P' : '') + 'L'.repeat(step.split('phase-start').length - 1) || '-');
}

test('a step gives its turn to a prefill chunk or to one phase of an adapter load, never both, first come first served', async () => {
  const alone = await createScheduler().run(request(REFERENCE.promptIds, 8, { ...adapter, key: 't/a@alone' }));

  const { events, loggedLoad, restore } = recordTurns();
  // While a stream decodes, a request arrives on an adapter whose load (its files checked against their checksums,
  // as a published version's are) has three phases, then a 40-token prompt, which a budget of 8 prefills over five
  // steps, then a second request on that adapter's files under another key.
  const streaming = request(REFERENCE.promptIds, 30);
  const files: Record<string, FileDigest> = {};
  for (const name of [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE]) files[name] = (await digestFile(join(adapter.path, name)))!;
  const first = request(REFERENCE.promptIds, 8, { ...adapter, key: 't/a@turns', files });
  const long = request(LONG_PROMPT, 4);
  const second = request(REFERENCE.promptIds, 8, { ...adapter, key: 't/a@turns-2', files });
  let arrived!: Promise<number[][]>;
  // A turn that waits as long as its phase takes, so that on any machine every phase ends within its turn.
  const { run } = createScheduler(
    (report) => {
      if (arrived !== undefined || !report.tokens.some((t) => t.id === streaming.id)) return;
      events.length = 0;
      arrived = Promise.all([run(first), run(long), run(second)]);
    },
    loggedLoad,
    600_000,
  );
  try {
    await run(streaming);
    const [firstTokens, , secondTokens] = await arrived;
    assert.deepEqual(firstTokens, alone);
    assert.deepEqual(secondTokens, alone);
  } finally {
    restore();
  }

  // No pass runs while a load phase does.
  let inPhase = false;
  for (const event of events) {
    if (event === 'phase-start') inPhase = true;
    if (event === 'phase-end') inPhase = false;
    if (event.endsWith('-start') && event !== 'phase-start') assert.ok(!inPhase, 'a pass started during a load phase');
  }
  // In order of arrival: the first load; the long prompt's five chunks (it took its row while the load ran, so it
  // prefills ahead of the first request) and the first request's prompt, both older than the second load; that
  // load; the second request's prompt.
  const turns = turnsOfSteps(events);
  // A turn runs further phases of its load while the step stays within about twice its decode pass, so how many
  // of the three each step ran depends on the machine; what is run, and in which order, does not.
  assert.match(turns.join(' '), /^(L+ )+(P ){6}(L+ )+P/);
  const [firstLoad, secondLoad] = turns.join('').split(/P+/).filter(Boolean);
  assert.deepEqual([firstLoad, secondLoad], ['LLL', 'LLL'], 'each load ran its three phases');
});

test('a layout made ahead of use takes load turns only where no prompt chunk waits, even asked for first', async () => {
  const { events, loggedLoad, restore } = recordTurns();
  const files: Record<string, FileDigest> = {};
  for (const name of [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE]) files[name] = (await digestFile(join(adapter.path, name)))!;
  // While a stream decodes, a just-uploaded version's layout is asked for, then a 40-token prompt arrives.
  const streaming = request(REFERENCE.promptIds, 30);
  const long = request(LONG_PROMPT, 4);
  let arrived: Promise<number[]> | undefined;
  const { scheduler, run } = createScheduler(
    (report) => {
      if (arrived !== undefined || !report.tokens.some((t) => t.id === streaming.id)) return;
      events.length = 0;
      scheduler.prepareLayout({ ...adapter, key: 't/a@prepared', files });
      arrived = run(long);
    },
    loggedLoad,
    600_000,
  );
  try {
    await run(streaming);
    await arrived;
  } finally {
    restore();
  }
  // The prompt's five chunks first, then the load's three phases, in the steps that follow.
  assert.match(turnsOfSteps(events).join(' '), /^(P ){5}(- )*L/);
  assert.equal(events.filter((event) => event === 'load-done').length, 1);
});

test('a stream crossing a bucket edge finds the cache grown ahead, a few layers a step, and generates what it does alone', async () => {
  const model = await loadBaseModel(STORIES_HF_DIR);
  const atOnce = await ModelRunner.create(model, { maxBatch: 4, adapterSlots: 2, maxLoraRank: SLOT_RANK });
  // 40 prompt tokens and 100 generated: the stream feeds position 128 with its 90th token.
  const crossing = request(LONG_PROMPT, 100);
  const newcomer = request(REFERENCE.promptIds, 12);
  // Each alone on a runner whose cache grows in the pass that needs it.
  const expected = { crossing: await greedy(atOnce, LONG_PROMPT, 100), newcomer: await greedy(atOnce, REFERENCE.promptIds, 12) };
  await atOnce.close();
  const cache = runner.lanes[0].cache;
  assert.equal(cache.width, CACHE_BUCKET, 'the shared runner starts this test one bucket wide');

  const passesBefore = passes.length;
  let crossingTokens = 0;
  let newcomerDone!: Promise<number[]>;
  const { run } = createScheduler((report) => {
    crossingTokens += report.tokens.filter((t) => t.id === crossing.id).length;
    // Arriving as the growth is planned: it takes the spare row the lane kept, and its prefill is written while
    // layers migrate.
    if (crossingTokens === 88 && !newcomerDone) newcomerDone = run(newcomer);
  });
  const crossingGot = await run(crossing);
  assert.deepEqual(crossingGot, expected.crossing);
  assert.deepEqual(await newcomerDone, expected.newcomer);

  const observed = passes.slice(passesBefore);
  assert.deepEqual(observed.filter((p) => p.grewCache), [], 'no pass had to grow the cache itself');
  const needs = (pass: Pass) => Math.max(...pass.rows.map((r) => r.position + r.tokens));
  const firstWide = observed.findIndex((p) => p.cache.width === 2 * CACHE_BUCKET);
  assert.ok(firstWide > 0, 'the cache grew to the next bucket');
  assert.ok(needs(observed[firstWide]) <= 2 * CACHE_BUCKET);
  assert.ok(observed.slice(0, firstWide).every((p) => needs(p) <= CACHE_BUCKET), 'every pass before it fit the first bucket');
  assert.ok(observed.slice(firstWide).some((p) => needs(p) > CACHE_BUCKET), 'the stream crossed the edge');
  const arrival = observed.findIndex((p) => p.rows.some((r) => r.tokens === REFERENCE.promptIds.length));
  assert.ok(arrival > 0 && arrival < firstWide, 'the newcomer arrived while the growth was migrating');
});

test('an idle scheduler faults in its memory a piece per turn, never while a pass runs, and goes on once idle again', async () => {
  const prefault = runner.prefault.bind(runner);
  // The runner is shared: with its memory all faulted in, earlier tests' schedulers end their idle work.
  while (prefault(2 ** 20));
  for (let turn = 0; turn < 3; turn++) await nextTurn();
  // Calls, each with whether a pass was running then; pieces are reported left for as long as the test wants.
  const calls: boolean[] = [];
  let piecesLeft = true;
  runner.prefault = (maxBytes: number) => {
    calls.push(passInFlight);
    prefault(maxBytes);
    return piecesLeft;
  };
  try {
    const { run } = createScheduler();
    for (let turn = 0; turn < 5; turn++) await nextTurn();
    const idle = calls.length;
    assert.ok(idle >= 3, `pieces are faulted in while nothing runs (${idle} calls in 5 turns)`);
    await run(request(LONG_PROMPT, 6));
    const busy = calls.slice(idle);
    assert.ok(!busy.includes(true), 'no piece while a pass was running');
    const afterRun = calls.length;
    for (let turn = 0; turn < 5; turn++) await nextTurn();
    assert.ok(calls.length > afterRun, `pieces go on once the scheduler is idle again (${idle}, ${afterRun}, ${calls.length})`);
  } finally {
    piecesLeft = false;
    runner.prefault = prefault;
  }
});

test("the loader's memory is faulted in beside the runner's, while idle, never while a pass runs", async () => {
  const prefault = runner.prefault.bind(runner);
  while (prefault(2 ** 20));
  for (let turn = 0; turn < 3; turn++) await nextTurn();
  // Which memory each piece was asked of, and whether a pass was running then.
  const calls: { of: 'runner' | 'loader'; passInFlight: boolean }[] = [];
  let runnerPieces = 3;
  let loaderPiecesLeft = true;
  runner.prefault = () => {
    calls.push({ of: 'runner', passInFlight });
    return --runnerPieces > 0;
  };
  try {
    const { run } = createScheduler(undefined, load, undefined, async () => {
      calls.push({ of: 'loader', passInFlight });
      return loaderPiecesLeft;
    });
    for (let turn = 0; turn < 8; turn++) await nextTurn();
    const order = calls.map((call) => call.of);
    // The loader faults in its pieces on its own thread, so they are asked for while the runner's are under way.
    assert.ok(order.indexOf('loader') < order.lastIndexOf('runner'), `the loader's pieces beside the runner's (${order.join(' ')})`);
    assert.equal(order.filter((of) => of === 'runner').length, 3);
    assert.ok(order.slice(order.lastIndexOf('runner') + 1).includes('loader'), `and on after the runner's are done (${order.join(' ')})`);
    const idle = calls.length;
    await run(request(LONG_PROMPT, 6));
    assert.ok(!calls.slice(idle).some((call) => call.passInFlight), 'no piece while a pass was running');
    const afterRun = calls.length;
    for (let turn = 0; turn < 8; turn++) await nextTurn();
    assert.ok(calls.slice(afterRun).some((call) => call.of === 'loader'), "the loader's pieces go on once the scheduler is idle again");
  } finally {
    loaderPiecesLeft = false;
    runner.prefault = prefault;
  }
});

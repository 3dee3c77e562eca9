import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine, EngineError, type GenerateRequest } from '../src/engine/engine.ts';
import type { AdapterCacheEvent } from '../src/engine/protocol.ts';
import { randomLoraAdapter, writeLoraAdapter } from '../src/adapters/lora-writer.ts';
import { configFromHuggingFace } from '../src/model/config.ts';
import { LORA_TARGET_MODULES } from '../src/model/types.ts';
import { stepUntilStreaming } from './support/engine-steps.ts';
import { REFERENCE, STORIES_HF_DIR } from './support/models.ts';
import { readFile } from 'node:fs/promises';

const GREEDY = { temperature: 0, topP: 1, topK: 0, presencePenalty: 0, frequencyPenalty: 0 };
const EOS = [2, 1];

let engine: Engine;
let dir: string;
const adapters: Record<string, { key: string; path: string }> = {};

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'engine-'));
  const config = configFromHuggingFace(JSON.parse(await readFile(join(STORIES_HF_DIR, 'config.json'), 'utf8')));
  for (const [name, rank, seed] of [['a', 4, 11], ['b', 8, 12], ['c', 2, 13]] as const) {
    const path = join(dir, name);
    await writeLoraAdapter(path, randomLoraAdapter(config, { rank, targetModules: [...LORA_TARGET_MODULES], seed, std: 0.2 }));
    adapters[name] = { key: `t/${name}@1`, path };
  }
  engine = await Engine.start({
    modelPath: STORIES_HF_DIR,
    maxBatch: 6,
    adapterSlots: 2,
    maxLoraRank: 8,
    hostCacheBytes: 64 << 20,
    maxQueue: 8,
  });
});

after(async () => {
  await engine.close();
  await rm(dir, { recursive: true, force: true });
});

function request(overrides: Partial<GenerateRequest> = {}): GenerateRequest {
  return { promptIds: REFERENCE.promptIds, adapter: null, sampling: GREEDY, maxTokens: 32, stopTokenIds: EOS, ...overrides };
}

test('engine greedy generation on its worker thread reproduces the reference ids, streaming each token', async () => {
  const streamed: number[] = [];
  const result = await engine.generate(request({ onToken: (e) => streamed.push(e.token) }));
  assert.deepEqual(result.tokens, REFERENCE.greedyIds);
  assert.deepEqual(streamed, REFERENCE.greedyIds);
  assert.equal(result.reason, 'length');
  assert.equal(result.promptTokens, 5);
  assert.equal(result.completionTokens, 32);
  assert.equal(engine.info.config.hiddenSize, 64);
  assert.match(engine.info.checksum, /^[0-9a-f]{64}$/);
});

test('concurrent requests on different adapters each produce what they produce alone', async () => {
  const cases = [null, 'a', 'b', null, 'c', 'a'].map((name, i) => ({
    adapter: name ? adapters[name] : null,
    promptIds: [1, 403, 407, 261, 378, 432, 383].slice(0, 3 + i),
  }));
  const alone = [];
  for (const c of cases) alone.push((await engine.generate(request({ ...c, maxTokens: 12 }))).tokens);
  const together = await Promise.all(cases.map((c) => engine.generate(request({ ...c, maxTokens: 12 }))));
  assert.deepEqual(together.map((r) => r.tokens), alone);
  // The adapters really change the output.
  assert.notDeepEqual(alone[1], (await engine.generate(request({ promptIds: cases[1].promptIds, maxTokens: 12 }))).tokens);
});

test('seeded sampling is reproducible and different seeds differ', async () => {
  const sampling = { ...GREEDY, temperature: 1.0, seed: 1234 };
  const first = await engine.generate(request({ sampling, maxTokens: 24 }));
  const second = await engine.generate(request({ sampling, maxTokens: 24 }));
  const other = await engine.generate(request({ sampling: { ...sampling, seed: 99 }, maxTokens: 24 }));
  assert.deepEqual(first.tokens, second.tokens);
  assert.notDeepEqual(first.tokens, other.tokens);
});

test('generation stops at an end-of-sequence id', async () => {
  const result = await engine.generate(request({ maxTokens: 400 }));
  assert.equal(result.reason, 'stop');
  assert.ok(EOS.includes(result.tokens.at(-1)!));
  assert.ok(result.tokens.length < 400);
});

test('cancellation ends a sequence within a step and frees its row', async () => {
  const controller = new AbortController();
  let seen = 0;
  // Paused (after the step that delivered its first token), the engine has produced exactly the tokens delivered
  // so far when the cancel is sent, on any machine.
  engine.pause();
  const generation = engine.generate(
    request({ adapter: adapters.a, maxTokens: 400, stopTokenIds: [], signal: controller.signal, onToken: () => seen++ }),
  );
  await engine.whenPaused();
  while (seen === 0) await engine.step();
  controller.abort();
  engine.resume();
  const result = await generation;
  assert.equal(result.reason, 'cancelled');
  // The cancel message waits for the thread's next turn between steps: at most one more step runs before it.
  assert.ok(seen > 0 && result.completionTokens <= seen + 1, `cancelled after ${result.completionTokens} tokens, ${seen} seen when paused`);
  assert.equal(engine.stats.running, 0);
});

test('an adapter held mid-load on the loader thread never stops a step, and runs once its files arrive', async () => {
  // Its weights file is a named pipe: the loader thread's read of it cannot finish before the test writes the
  // bytes, so the adapter is loading for exactly the steps the test takes, on any machine.
  const held = join(dir, 'held');
  const pipe = join(held, 'adapter_model.safetensors');
  await mkdir(held);
  await copyFile(join(adapters.a.path, 'adapter_config.json'), join(held, 'adapter_config.json'));
  execFileSync('mkfifo', [pipe]);
  const weights = await readFile(join(adapters.a.path, 'adapter_model.safetensors'));
  const expected = (await engine.generate(request({ adapter: adapters.a, maxTokens: 8 }))).tokens;
  let released = false;
  const release = async () => {
    if (released) return;
    released = true;
    await writeFile(pipe, weights);
  };

  engine.pause();
  let streamed = 0;
  const controller = new AbortController();
  const stream = engine.generate(request({ maxTokens: 400, stopTokenIds: [], signal: controller.signal, onToken: () => streamed++ }));
  try {
    await stepUntilStreaming(engine);
    const onHeld = engine.generate(request({ adapter: { key: 't/held@1', path: held }, maxTokens: 8 }));
    // The submission is taken in between steps: at most one step passes before it waits in the queue.
    for (let step = 0; engine.stats.waiting === 0; step++) {
      assert.ok(step < 2, 'the request on the held adapter was queued');
      await engine.step();
    }
    for (let step = 0; step < 6; step++) {
      const before = streamed;
      await engine.step();
      assert.equal(streamed, before + 1, `step ${step}: the running stream advanced while the adapter loads`);
      assert.equal(engine.stats.running, 1, `step ${step}: the loading request holds no batch row`);
      assert.equal(engine.stats.waiting, 1);
    }
    await release();
    engine.resume();
    // Once its files are read it is served with exactly what the same adapter gives from ordinary files.
    assert.deepEqual((await onHeld).tokens, expected);
  } finally {
    await release();
    engine.resume();
    controller.abort();
    await stream;
  }
});

test('a corrupt adapter fails only its own request; slot evictions keep results correct', async () => {
  const broken = join(dir, 'broken');
  await writeLoraAdapter(broken, randomLoraAdapter(engine.info.config, { rank: 2, targetModules: ['q_proj'], seed: 5 }));
  await writeFile(join(broken, 'adapter_model.safetensors'), 'not a safetensors file');
  const events: AdapterCacheEvent[] = [];
  // The failure event travels in the step report after the request's rejection: wait for it, not for a time.
  let failureReported!: () => void;
  const failureSeen = new Promise<void>((resolve) => (failureReported = resolve));
  const onEvent = (e: AdapterCacheEvent) => {
    events.push(e);
    if (e.tier === 'disk' && e.event === 'failure') failureReported();
  };
  engine.on('adapter-cache', onEvent);
  const expected = (await engine.generate(request({ adapter: adapters.c, maxTokens: 8 }))).tokens;
  const [bad, ...good] = await Promise.allSettled([
    engine.generate(request({ adapter: { key: 't/broken@1', path: broken } })),
    engine.generate(request({ adapter: adapters.a, maxTokens: 8 })),
    engine.generate(request({ adapter: adapters.b, maxTokens: 8 })),
    engine.generate(request({ adapter: adapters.c, maxTokens: 8 })),
  ]);
  await failureSeen;
  engine.off('adapter-cache', onEvent);
  assert.equal(bad.status, 'rejected');
  assert.ok(bad.reason instanceof EngineError);
  assert.equal(bad.reason.code, 'invalid_adapter');
  assert.match(bad.reason.message, /adapter_model\.safetensors/);
  assert.ok(events.some((e) => e.tier === 'disk' && e.event === 'failure'), 'the failed load is reported');
  assert.ok(good.every((r) => r.status === 'fulfilled'));
  // Three adapters through two slots: something was evicted, and c still decodes exactly as before.
  assert.ok(events.some((e) => e.tier === 'slot' && e.event === 'eviction'));
  assert.deepEqual((good[2] as PromiseFulfilledResult<{ tokens: number[] }>).value.tokens, expected);
});

test('a full queue refuses new work as overloaded', async () => {
  const flood = Array.from({ length: 20 }, () => engine.generate(request({ maxTokens: 4 })));
  const results = await Promise.allSettled(flood);
  const refused = results.filter((r) => r.status === 'rejected');
  assert.ok(refused.length > 0);
  for (const r of refused) assert.equal((r as PromiseRejectedResult).reason.code, 'overloaded');
  assert.ok(results.some((r) => r.status === 'fulfilled'));
});

test('the batch is shared fairly: a burst from one tenant does not starve another', async () => {
  const fair = await Engine.start({ modelPath: STORIES_HF_DIR, maxBatch: 2, adapterSlots: 1, maxLoraRank: 8, hostCacheBytes: 1 << 20, maxQueue: 16 });
  try {
    const order: string[] = [];
    const submit = (tenant: string, name: string) =>
      fair.generate(request({ tenant, maxTokens: 20, stopTokenIds: [], onStart: () => order.push(name) }));
    const burst = ['a1', 'a2', 'a3', 'a4', 'a5'].map((name) => submit('a', name));
    const other = submit('b', 'b1');
    await Promise.all([...burst, other]);
    // Strict arrival order would start b1 last; fair sharing starts it as soon as a row frees up.
    assert.ok(order.indexOf('b1') <= 2, `start order ${order.join(' ')}`);
  } finally {
    await fair.close();
  }
});

test('sequences past the long-sequence boundary decode in their own lane and produce what they produce alone', async () => {
  // A boundary of 128 positions: b starts past it, a and d cross it while generating (moving lanes with their
  // cache and adapter weights), c stays below it.
  const lanes = await Engine.start({
    modelPath: STORIES_HF_DIR,
    maxBatch: 6,
    adapterSlots: 3,
    maxLoraRank: 8,
    hostCacheBytes: 64 << 20,
    maxQueue: 8,
    longSequencePositions: 128,
  });
  try {
    const longPrompt = Array.from({ length: 200 }, (_, i) => 1 + ((i * 37) % 500));
    const cases = [
      { adapter: adapters.a, promptIds: REFERENCE.promptIds, maxTokens: 200 },
      { adapter: adapters.b, promptIds: longPrompt, maxTokens: 40 },
      { adapter: null, promptIds: REFERENCE.promptIds.slice(0, 3), maxTokens: 30 },
      { adapter: adapters.c, promptIds: longPrompt.slice(0, 100), maxTokens: 60 },
    ];
    const alone = [];
    for (const c of cases) alone.push((await engine.generate(request({ ...c, stopTokenIds: [] }))).tokens);
    const together = await Promise.all(cases.map((c) => lanes.generate(request({ ...c, stopTokenIds: [] }))));
    assert.deepEqual(together.map((r) => r.tokens), alone);
    assert.deepEqual(together.map((r) => r.completionTokens), [200, 40, 30, 60]);
  } finally {
    await lanes.close();
  }
});

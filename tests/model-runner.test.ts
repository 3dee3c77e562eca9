import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadBaseModel } from '../src/model/load.ts';
import { weightsChecksum } from '../src/model/checksum.ts';
import { ModelRunner, type RunnerOptions } from '../src/runtime/model-runner.ts';
import { loadLoraAdapter } from '../src/adapters/lora.ts';
import { randomLoraAdapter, writeAdapterFiles, writeLoraAdapter, type LoraAdapterSpec } from '../src/adapters/lora-writer.ts';
import { ia3AdapterFiles, randomIa3Adapter } from '../src/adapters/peft-writers.ts';
import { loadAdapter } from '../src/adapters/adapter.ts';
import type { BaseModel, LoraTargetModule } from '../src/model/types.ts';
import { REFERENCE, STORIES_GGUF, STORIES_HF_DIR } from './support/models.ts';
import { mergedLora } from './support/family-references.ts';
import { argmax, greedy } from './support/greedy.ts';

// Slots of rank 16 hold the rank-4 and rank-8 adapters below: rows are laid out for the highest rank among them.
const OPTIONS: RunnerOptions = { maxBatch: 8, adapterSlots: 3, maxLoraRank: 16 };


for (const [format, path] of [['Hugging Face', STORIES_HF_DIR], ['GGUF', STORIES_GGUF]] as const) {
  test(`greedy decoding of the ${format} model reproduces the reference ids`, async () => {
    const model = await loadBaseModel(path);
    const runner = await ModelRunner.create(model, OPTIONS);
    assert.deepEqual(await greedy(runner, REFERENCE.promptIds, REFERENCE.greedyIds.length), REFERENCE.greedyIds);
    await runner.close();
  });
}

test('with its threads sleeping between operators (ENGINE_THREAD_SPINNING=off) the runner reproduces the reference ids', async () => {
  const runner = await ModelRunner.create(await loadBaseModel(STORIES_HF_DIR), { ...OPTIONS, threads: 2, threadSpinning: false });
  assert.deepEqual(await greedy(runner, REFERENCE.promptIds, REFERENCE.greedyIds.length), REFERENCE.greedyIds);
  await runner.close();
});

/** An adapter written to disk and loaded back as the runner gets it, with the spec it was written from. */
async function makeAdapter(dir: string, base: BaseModel, rank: number, targets: LoraTargetModule[], seed: number, alpha: number) {
  const spec = randomLoraAdapter(base.config, { rank, targetModules: targets, seed, std: 0.15, alpha });
  await writeLoraAdapter(dir, spec);
  return { spec, loaded: await loadLoraAdapter(dir, base.config) };
}

/** The base with an adapter merged into its weights (the independent computation), or the base itself. */
function mergedModel(base: BaseModel, adapter: { spec: LoraAdapterSpec } | null): BaseModel {
  return adapter ? { ...base, weights: mergedLora(base, adapter.spec) } : base;
}

test('a batch mixing base rows and adapters of different ranks equals merged weights, row by row', async () => {
  const base = await loadBaseModel(STORIES_HF_DIR);
  const dir = await mkdtemp(join(tmpdir(), 'lora-batch-'));
  try {
    const adapters = {
      small: await makeAdapter(join(dir, 'small'), base, 4, ['q_proj', 'v_proj'], 1, 8),
      full: await makeAdapter(join(dir, 'full'), base, 8, ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], 2, 16),
    };
    const runner = await ModelRunner.create(base, OPTIONS);
    const slots = {
      small: runner.slots.place('small', adapters.small.loaded)!,
      full: runner.slots.place('full', adapters.full.loaded)!,
    };
    const rows = [
      { adapter: null, prompt: [1, 403, 407, 261, 378] },
      { adapter: 'small', prompt: [1, 338, 286, 393] },
      { adapter: 'full', prompt: [1, 291, 376, 298, 315, 421] },
      { adapter: 'small', prompt: [1, 317, 394] },
      { adapter: 'full', prompt: [1, 403, 407] },
    ] as const;
    const fed = [[432, 383], [286, 261], [376, 298]];

    // Batched: each row prefilled in its own cache row, then decode steps with all rows together.
    const batched: Float32Array[][] = rows.map(() => []);
    for (const [b, row] of rows.entries()) {
      const slot = row.adapter ? slots[row.adapter] : 0;
      batched[b].push(Float32Array.from(await runner.forward(b, [{ tokens: [...row.prompt], position: 0, slot }])));
    }
    for (const step of fed) {
      const logits = await runner.forward(0, rows.map((row, b) => ({
        tokens: [step[b % 2]],
        position: row.prompt.length + fed.indexOf(step),
        slot: row.adapter ? slots[row.adapter] : 0,
      })));
      for (let b = 0; b < rows.length; b++) batched[b].push(logits.slice(b * base.config.vocabSize, (b + 1) * base.config.vocabSize));
    }
    assert.equal(runner.lanes[0].adapters.rank, 8, 'the rows are laid out for their highest adapter rank, not the slot rank');
    // Once only rank-4 rows remain, the layout shrinks to rank 4 and they still match (checked below).
    const smallRows = rows.flatMap((row, b) => (row.adapter === 'small' ? [b] : []));
    for (const b of smallRows) runner.moveRow(b, smallRows.indexOf(b), rows[b].prompt.length + fed.length);
    const smallLogits = await runner.forward(0, smallRows.map((b) => ({
      tokens: [383],
      position: rows[b].prompt.length + fed.length,
      slot: slots.small,
    })));
    assert.equal(runner.lanes[0].adapters.rank, 4);
    smallRows.forEach((b, i) => batched[b].push(smallLogits.slice(i * base.config.vocabSize, (i + 1) * base.config.vocabSize)));
    await runner.close();

    // Alone: each row on a runner of its merged model (or the plain base), batch of one.
    let worst = 0;
    let adapterEffect = 0;
    for (const [b, row] of rows.entries()) {
      const alone = await ModelRunner.create(mergedModel(base, row.adapter ? adapters[row.adapter] : null), OPTIONS);
      const expected = [Float32Array.from(await alone.forward(0, [{ tokens: [...row.prompt], position: 0, slot: 0 }]))];
      for (const [i, step] of fed.entries()) {
        expected.push(Float32Array.from(await alone.forward(0, [{ tokens: [step[b % 2]], position: row.prompt.length + i, slot: 0 }])));
      }
      if (row.adapter === 'small') {
        expected.push(Float32Array.from(await alone.forward(0, [{ tokens: [383], position: row.prompt.length + fed.length, slot: 0 }])));
      }
      await alone.close();
      for (const [i, logits] of expected.entries()) {
        for (let v = 0; v < logits.length; v++) worst = Math.max(worst, Math.abs(logits[v] - batched[b][i][v]));
      }
      if (row.adapter) {
        const plain = await ModelRunner.create(base, OPTIONS);
        const baseLogits = await plain.forward(0, [{ tokens: [...row.prompt], position: 0, slot: 0 }]);
        for (let v = 0; v < baseLogits.length; v++) adapterEffect = Math.max(adapterEffect, Math.abs(baseLogits[v] - expected[0][v]));
        await plain.close();
      }
    }
    assert.ok(worst < 1e-4, `max abs logit difference ${worst}`);
    assert.ok(adapterEffect > 0.05, `adapters must visibly change the logits (max change ${adapterEffect})`);
    assert.equal(weightsChecksum(base.weights), base.checksum, 'base weights unchanged');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('rows sharing adapters, prefilled and decoded together, each equal their adapter merged into the weights', async () => {
  const base = await loadBaseModel(STORIES_HF_DIR);
  const vocab = base.config.vocabSize;
  const dir = await mkdtemp(join(tmpdir(), 'lora-shared-'));
  try {
    const all: LoraTargetModule[] = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
    const adapters = [await makeAdapter(join(dir, 'a'), base, 8, all, 3, 16), await makeAdapter(join(dir, 'b'), base, 8, all, 4, 8)];
    const runner = await ModelRunner.create(base, OPTIONS);
    const slots = adapters.map((adapter, i) => runner.slots.place(`shared-${i}`, adapter.loaded)!);
    // Four rows on adapter 0 (one segment of four rows), two on adapter 1, one on the base model; prompts of
    // different lengths, so the pass pads rows and every token of a row must find its own result.
    const rows = [
      { adapter: 0, prompt: [1, 403, 407, 261, 378] },
      { adapter: 1, prompt: [1, 338, 286] },
      { adapter: 0, prompt: [1, 291, 376] },
      { adapter: null, prompt: [1, 317, 394, 421] },
      { adapter: 0, prompt: [1, 403] },
      { adapter: 1, prompt: [1, 298, 315, 421, 395, 317] },
      { adapter: 0, prompt: [1, 426, 338, 401] },
    ];
    const slotOf = (row: (typeof rows)[number]) => (row.adapter === null ? 0 : slots[row.adapter]);
    const batched = [Float32Array.from(await runner.forward(0, rows.map((row) => ({ tokens: row.prompt, position: 0, slot: slotOf(row) }))))];
    batched.push(Float32Array.from(await runner.forward(0, rows.map((row, b) => ({ tokens: [432 + b], position: row.prompt.length, slot: slotOf(row) })))));
    // Each row alone, on the same runner (row 7 of the cache) with its adapter's slot: the same result, up to the
    // float rounding that batch size changes in any matmul (as for prompts prefilled together, below).
    let worstAlone = 0;
    for (const [b, row] of rows.entries()) {
      const alone = [
        Float32Array.from(await runner.forward(7, [{ tokens: row.prompt, position: 0, slot: slotOf(row) }])),
        Float32Array.from(await runner.forward(7, [{ tokens: [432 + b], position: row.prompt.length, slot: slotOf(row) }])),
      ];
      for (const [step, logits] of alone.entries()) {
        for (let v = 0; v < vocab; v++) worstAlone = Math.max(worstAlone, Math.abs(logits[v] - batched[step][b * vocab + v]));
      }
    }
    await runner.close();
    assert.ok(worstAlone < 1e-4, `max abs logit difference from each row alone ${worstAlone}`);

    // The independent computation: each row on the model with its adapter merged in. Merging rounds W + s·B·A
    // once per weight, the runner rounds x·W and s·(x·Aᵀ)·Bᵀ separately, so they agree to float32 precision
    // relative to the logits' size (these strong adapters reach logits of ~14).
    let worst = 0;
    let largest = 0;
    for (const [i, adapter] of [...adapters, null].entries()) {
      const alone = await ModelRunner.create(mergedModel(base, adapter), OPTIONS);
      for (const [b, row] of rows.entries()) {
        if (row.adapter !== (adapter ? i : null)) continue;
        const expected = [
          Float32Array.from(await alone.forward(0, [{ tokens: row.prompt, position: 0, slot: 0 }])),
          Float32Array.from(await alone.forward(0, [{ tokens: [432 + b], position: row.prompt.length, slot: 0 }])),
        ];
        for (const [step, logits] of expected.entries()) {
          for (let v = 0; v < vocab; v++) {
            worst = Math.max(worst, Math.abs(logits[v] - batched[step][b * vocab + v]));
            largest = Math.max(largest, Math.abs(logits[v]));
          }
        }
      }
      await alone.close();
    }
    assert.ok(worst < 1e-5 * largest, `max abs logit difference ${worst} against logits up to ${largest}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a mixed pass of decode rows and prompt chunks equals the decode pass and the prefill pass run one after the other on the adapter graph', async () => {
  const base = await loadBaseModel(STORIES_HF_DIR);
  const vocab = base.config.vocabSize;
  const dir = await mkdtemp(join(tmpdir(), 'lora-mixed-'));
  try {
    const all: LoraTargetModule[] = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
    const adapters = [await makeAdapter(join(dir, 'a'), base, 8, all, 5, 16), await makeAdapter(join(dir, 'b'), base, 4, ['q_proj', 'v_proj'], 6, 8)];
    // The second runner has no mixed graph (ENGINE_MIXED_PASSES=off): its LoRA passes run on the adapter graph.
    const runners = [await ModelRunner.create(base, OPTIONS), await ModelRunner.create(base, { ...OPTIONS, mixedPasses: false })];
    const slots = runners.map((runner) => adapters.map((adapter, i) => runner.slots.place(`mixed-${i}`, adapter.loaded)!));
    assert.deepEqual(slots[0], slots[1]);
    const slotOf = (adapter: number | null) => (adapter === null ? 0 : slots[0][adapter]);
    // Rows 0-2 decode; rows 3-4 prefill prompts of 7 and 4 tokens in chunks of up to 4 (row 4's second chunk is
    // shorter than row 3's, so the pass pads it).
    const decoders = [
      { adapter: 0, prompt: [1, 403, 407, 261, 378] },
      { adapter: null, prompt: [1, 338, 286] },
      { adapter: 1, prompt: [1, 291, 376, 298] },
    ];
    const prefillers = [
      { adapter: 1, prompt: [1, 317, 394, 421, 395, 317, 426] },
      { adapter: 0, prompt: [1, 298, 315, 421, 338, 401] },
    ];
    const chunks = [[0, 4], [4, 7]] as const;
    const results: Float32Array[][] = [[], []];
    for (const [r, runner] of runners.entries()) {
      const record = (logits: Float32Array) => results[r].push(Float32Array.from(logits));
      record(await runner.forward(0, decoders.map((row) => ({ tokens: row.prompt, position: 0, slot: slotOf(row.adapter) }))));
      for (const [step, [from, to]] of chunks.entries()) {
        const decode = { firstRow: 0, rows: decoders.map((row, b) => ({ tokens: [432 + b + step], position: row.prompt.length + step, slot: slotOf(row.adapter) })) };
        const prefill = { firstRow: 3, rows: prefillers.map((row) => ({ tokens: row.prompt.slice(from, to), position: from, slot: slotOf(row.adapter) })) };
        assert.equal(runner.canMix([...decode.rows, ...prefill.rows]), r === 0);
        if (r === 0) {
          const mixed = await runner.forwardMixed(0, decode, prefill);
          record(mixed.decode);
          record(mixed.prefill);
        } else {
          record(await runner.forward(decode.firstRow, decode.rows));
          record(await runner.forward(prefill.firstRow, prefill.rows));
        }
      }
      // Every row decodes on from what the passes left in the cache.
      const rows = [...decoders, ...prefillers].map((row, b) => ({
        tokens: [383 + b],
        position: b < decoders.length ? row.prompt.length + chunks.length : row.prompt.length,
        slot: slotOf(row.adapter),
      }));
      record(await runner.forward(0, rows));
      await runner.close();
    }
    assert.equal(results[0].length, 6);
    let worst = 0;
    let largest = 0;
    for (const [i, logits] of results[0].entries()) {
      assert.equal(logits.length, results[1][i].length);
      for (let v = 0; v < logits.length; v++) {
        worst = Math.max(worst, Math.abs(logits[v] - results[1][i][v]));
        largest = Math.max(largest, Math.abs(logits[v]));
      }
    }
    assert.equal(results[0][5].length, 5 * vocab);
    // Rows on the families with per-row scales go to the adapter graph instead.
    const ia3 = join(dir, 'ia3');
    await writeAdapterFiles(ia3, ia3AdapterFiles(randomIa3Adapter(base.config, { targetModules: ['k_proj', 'down_proj'], feedforwardModules: ['down_proj'], seed: 7 })));
    const checker = await ModelRunner.create(base, OPTIONS);
    const ia3Slot = checker.slots.place('ia3', await loadAdapter(ia3, base.config))!;
    const loraSlot = checker.slots.place('lora', adapters[0].loaded)!;
    assert.equal(checker.canMix([{ tokens: [1], position: 0, slot: 0 }, { tokens: [1], position: 0, slot: loraSlot }]), true);
    assert.equal(checker.canMix([{ tokens: [1], position: 0, slot: loraSlot }, { tokens: [1], position: 0, slot: ia3Slot }]), false);
    await checker.close();
    assert.ok(largest > 1, `logits must be real (largest ${largest})`);
    // Only the matmuls' row counts differ between the two, which changes float rounding and nothing else.
    assert.ok(worst < 1e-4, `max abs logit difference ${worst}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('choosing the CUDA execution provider where it is unavailable fails with a message saying what to do', async () => {
  const model = await loadBaseModel(STORIES_HF_DIR);
  await assert.rejects(ModelRunner.create(model, { ...OPTIONS, executionProvider: 'cuda', threads: 1 }), (error: Error) => {
    assert.match(error.message, /CUDA execution provider is not available/);
    assert.match(error.message, /EXECUTION_PROVIDER=cpu/);
    return true;
  });
});

test('a prefill of prompts of different lengths in one pass equals each prompt prefilled alone', async () => {
  const model = await loadBaseModel(STORIES_HF_DIR);
  const runner = await ModelRunner.create(model, OPTIONS);
  const prompts = [[1, 403, 407, 261, 378, 432, 383], [1, 338, 286], [1, 291, 376, 298, 315]];
  const vocab = model.config.vocabSize;
  const together = Float32Array.from(await runner.forward(0, prompts.map((tokens) => ({ tokens, position: 0, slot: 0 }))));
  // One decode step on top, reading the cache the batched prefill wrote.
  const next = Float32Array.from(
    await runner.forward(0, prompts.map((tokens, b) => ({ tokens: [argmax(together.subarray(b * vocab, (b + 1) * vocab))], position: tokens.length, slot: 0 }))),
  );
  let worst = 0;
  for (const [b, tokens] of prompts.entries()) {
    const alone = Float32Array.from(await runner.forward(7, [{ tokens, position: 0, slot: 0 }]));
    const aloneNext = await runner.forward(7, [{ tokens: [argmax(alone)], position: tokens.length, slot: 0 }]);
    for (let v = 0; v < vocab; v++) {
      worst = Math.max(worst, Math.abs(alone[v] - together[b * vocab + v]), Math.abs(aloneNext[v] - next[b * vocab + v]));
    }
  }
  assert.ok(worst < 1e-4, `max abs logit difference ${worst}`);
  await runner.close();
});

test('base rows get the same bits from the base graph as beside an adapter row in the adapter graph, float32 and Q4_0', async () => {
  const prompts = [[1, 403, 407, 261, 378], [1, 338, 286]];
  for (const quantize of [undefined, 'q4'] as const) {
    const base = await loadBaseModel(STORIES_HF_DIR, quantize ? { quantize } : {});
    const vocab = base.config.vocabSize;
    const dir = await mkdtemp(join(tmpdir(), 'two-graphs-'));
    try {
      const adapter = await makeAdapter(dir, base, 4, ['q_proj', 'v_proj', 'down_proj'], 3, 8);
      const runner = await ModelRunner.create(base, OPTIONS);
      const slot = runner.slots.place('adapter', adapter.loaded)!;
      // Rows 0–1 run on their own (the base graph); rows 3–4 run the same sequences beside row 5 on the adapter.
      const baseRows = (tokens: number[][], positions: number[]) => tokens.map((t, b) => ({ tokens: t, position: positions[b], slot: 0 }));
      let alone = await runner.forward(0, baseRows(prompts, [0, 0]));
      let beside = await runner.forward(3, [...baseRows(prompts, [0, 0]), { tokens: [1, 291, 376], position: 0, slot }]);
      const positions = prompts.map((prompt) => prompt.length);
      let adapterPosition = 3;
      for (let step = 0; step < 3; step++) {
        assert.deepEqual(beside.subarray(0, 2 * vocab), alone, `${quantize ?? 'f32'}: step ${step}`);
        const next = prompts.map((_, b) => [argmax(alone.subarray(b * vocab, (b + 1) * vocab))]);
        alone = await runner.forward(0, baseRows(next, positions));
        beside = await runner.forward(3, [...baseRows(next, positions), { tokens: [383], position: adapterPosition++, slot }]);
        positions.forEach((_, b) => positions[b]++);
      }
      await runner.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
});

test('sequences crossing bucket edges while the cache grows a layer a step get the bits they get when it grows at once', async () => {
  const model = await loadBaseModel(STORIES_HF_DIR);
  const spread = await ModelRunner.create(model, OPTIONS);
  const atOnce = await ModelRunner.create(model, OPTIONS);
  const spreadCache = spread.lanes[0].cache;
  const layers = model.config.numLayers;
  const prompts = [[...REFERENCE.promptIds, ...REFERENCE.greedyIds], REFERENCE.promptIds];
  const vocab = model.config.vocabSize;
  const prefill = async (runner: ModelRunner) => {
    const firstTokens: number[] = [];
    for (const [b, tokens] of prompts.entries()) firstTokens.push(argmax(await runner.forward(b, [{ tokens, position: 0, slot: 0 }])));
    return firstTokens;
  };
  let next = await prefill(spread);
  assert.deepEqual(await prefill(atOnce), next);
  const positions = prompts.map((tokens) => tokens.length);
  const widths = new Set<number>();
  let stepsMidGrowth = 0;
  // 300 decode steps take the longer row past positions 128 and 256.
  for (let step = 0; step < 300; step++) {
    // One layer a step, planned as many positions ahead as the growth takes steps.
    spreadCache.planGrowth(2, Math.max(...positions) + layers);
    spreadCache.continueGrowth(1);
    if (spreadCache.plannedGrowth) stepsMidGrowth++;
    const width = spreadCache.width;
    assert.ok(Math.max(...positions) < width, `step ${step}: the growth completed before a pass needed it`);
    widths.add(width);
    // The same width on both, so the pass computes over the same shapes and only how the cache grew differs.
    atOnce.lanes[0].cache.ensure(2, width);
    const rows = next.map((token, b) => ({ tokens: [token], position: positions[b], slot: 0 }));
    const [a, b] = [await spread.forward(0, rows), await atOnce.forward(0, rows)];
    assert.equal(spreadCache.width, width, `step ${step}: the pass found the cache wide enough`);
    for (let v = 0; v < 2 * vocab; v++) assert.equal(a[v], b[v], `step ${step}: logit ${v}`);
    next = [0, 1].map((row) => argmax(a.subarray(row * vocab, (row + 1) * vocab)));
    positions.forEach((_, b) => positions[b]++);
  }
  assert.deepEqual([...widths], [128, 256, 384]);
  assert.ok(stepsMidGrowth >= 2 * (layers - 1), `${stepsMidGrowth} steps ran while a growth was migrating`);
  await Promise.all([spread.close(), atOnce.close()]);
});

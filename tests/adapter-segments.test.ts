import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomLoraAdapter } from '../src/adapters/lora-writer.ts';
import type { LoraAdapter } from '../src/adapters/lora.ts';
import { elementCount } from '../src/formats/tensor-shape.ts';
import { configFromHuggingFace } from '../src/model/config.ts';
import { AdapterSegments } from '../src/runtime/adapter-segments.ts';
import { AdapterSlots } from '../src/runtime/adapter-slots.ts';
import { STORIES_HF_DIR } from './support/models.ts';

const config = configFromHuggingFace(JSON.parse(await readFile(join(STORIES_HF_DIR, 'config.json'), 'utf8')));
const INPUT = 'lora_b_down.1';

function adapter(seed: number, rank: number): LoraAdapter {
  const spec = randomLoraAdapter(config, { rank, targetModules: ['down_proj', 'q_proj'], seed });
  return { family: 'lora', rank, targetModules: ['down_proj', 'q_proj'], modules: spec.modules.map((m) => ({ ...m, rank, scale: 1 })), byteSize: 0, config: {} as LoraAdapter['config'] };
}

/** The weights stacked at a position, and the slot's own weights laid out at the same rank. */
function stackedAt(segments: AdapterSegments, position: number): Float32Array {
  const { data, size } = segments.buffers.get(INPUT)!;
  return data.subarray(position * size, (position + 1) * size);
}
function slotAt(slots: AdapterSlots, slot: number, rank: number): Float32Array {
  const target = new Float32Array(elementCount(slots.shapeAt(INPUT, rank)));
  slots.copyAtRank(INPUT, slot, rank, target, 0);
  return target;
}

test('each distinct adapter of a pass is stacked once, and rows map onto its segment', () => {
  const slots = new AdapterSlots(config, 3, 8);
  const a = slots.place('a', adapter(1, 8))!;
  const b = slots.place('b', adapter(2, 8))!;
  const stacks = new AdapterSegments(slots, 3);
  // Five rows, three on a, one on b, one on the base model; two tokens each.
  const plan = stacks.prepare([a, a, b, 0, a], 2, true);
  assert.equal(plan.rank, 8);
  assert.equal(plan.adapters, 2, 'two distinct adapters, however many rows use them');
  assert.equal(plan.segmentRows, 3);
  // Segment 0 (a) holds rows 0, 1, 4; segment 1 (b) holds row 2, padded with itself.
  assert.deepEqual([...plan.rows].map(Number), [0, 1, 4, 2, 2, 2]);
  assert.deepEqual([...plan.rowMask], [1, 1, 1, 0, 1]);
  // Row r, token t reads result (segment·segmentRows + k)·tokens + t; the base row's entry is masked out.
  const index = [...plan.resultIndex].map(Number);
  assert.deepEqual(index.slice(0, 6), [0, 1, 2, 3, 6, 7]);
  assert.deepEqual(index.slice(8, 10), [4, 5]);
  assert.deepEqual(stackedAt(stacks, 0), slotAt(slots, a, 8));
  assert.deepEqual(stackedAt(stacks, 1), slotAt(slots, b, 8));
  assert.ok(stackedAt(stacks, 0).some((v) => v !== 0));
});

test('an adapter already stacked is not copied again when rows join or leave it', () => {
  const slots = new AdapterSlots(config, 3, 8);
  const a = slots.place('a', adapter(1, 8))!;
  const b = slots.place('b', adapter(2, 8))!;
  const stacks = new AdapterSegments(slots, 3);
  stacks.prepare([a, b], 1, true);
  // Mark the stacked copies: a copy from the slots would overwrite the marks.
  stackedAt(stacks, 0)[0] = 1234;
  stackedAt(stacks, 1)[0] = 5678;
  const plan = stacks.prepare([b, a, a, b, a], 1, true);
  assert.equal(plan.adapters, 2);
  assert.equal(stackedAt(stacks, 0)[0], 1234, 'a stays where it is');
  assert.equal(stackedAt(stacks, 1)[0], 5678, 'b stays where it is');
  assert.deepEqual([...plan.rows].map(Number), [1, 2, 4, 0, 3, 0], 'segment 0 is still a, segment 1 b (padded with its first row)');
  // A pass on b alone needs b at position 0: it is copied there, and a is copied back when it returns.
  stacks.prepare([b], 1, false);
  assert.deepEqual(stackedAt(stacks, 0), slotAt(slots, b, 8));
  stacks.prepare([a, b], 1, true);
  assert.deepEqual(stackedAt(stacks, 0), slotAt(slots, b, 8), 'b keeps position 0');
  assert.deepEqual(stackedAt(stacks, 1), slotAt(slots, a, 8));
});

test('a slot reused for another adapter is copied again; stacks follow the highest rank in the pass', () => {
  const slots = new AdapterSlots(config, 1, 8);
  const first = slots.place('a', adapter(1, 4))!;
  const stacks = new AdapterSegments(slots, 1);
  assert.equal(stacks.prepare([first], 1, true).rank, 4);
  slots.release(first);
  const reused = slots.place('b', adapter(2, 8), () => {})!;
  assert.equal(reused, first);
  const plan = stacks.prepare([reused, 0], 1, true);
  assert.equal(plan.rank, 8);
  assert.deepEqual(stackedAt(stacks, 0), slotAt(slots, reused, 8));
  assert.equal(stacks.prepare([0, 0], 3, true).rank, 0, 'a pass on the base model alone feeds rank 0');
});

test('every layout rank lies in the same memory, and faulting it in ahead leaves stacked weights as they are', () => {
  const slots = new AdapterSlots(config, 2, 8);
  const low = slots.place('low', adapter(1, 4))!;
  const high = slots.place('high', adapter(2, 8))!;
  const stacks = new AdapterSegments(slots, 2);
  stacks.prepare([low], 1, true);
  const memory = stacks.buffers.get(INPUT)!.data.buffer;
  // A page at a time, around the adapter already stacked there.
  assert.equal(stacks.prefault(4096), true, 'more pages are left after the first one');
  while (stacks.prefault(4096));
  assert.equal(stacks.prefault(0), false, 'nothing is left to fault in');
  assert.deepEqual(stackedAt(stacks, 0), slotAt(slots, low, 4));
  assert.equal(stacks.prepare([low, high], 1, true).rank, 8);
  assert.equal(stacks.buffers.get(INPUT)!.data.buffer, memory, 'the rank-8 layout reuses the memory of the rank-4 one');
  assert.deepEqual(stackedAt(stacks, 0), slotAt(slots, low, 8));
  assert.deepEqual(stackedAt(stacks, 1), slotAt(slots, high, 8));
  assert.equal(memory.byteLength, [...slots.loraInputs.keys()].reduce((bytes, name) => bytes + 2 * elementCount(slots.shapeAt(name, 8)) * 4, 0), 'two adapters of every input at the slot rank');
});

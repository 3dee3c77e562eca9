import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomLoraAdapter } from '../src/adapters/lora-writer.ts';
import type { LoraAdapter } from '../src/adapters/lora.ts';
import { configFromHuggingFace } from '../src/model/config.ts';
import { AdapterSlots } from '../src/runtime/adapter-slots.ts';
import { STORIES_HF_DIR } from './support/models.ts';

const config = configFromHuggingFace(JSON.parse(await readFile(join(STORIES_HF_DIR, 'config.json'), 'utf8')));

function adapter(seed: number): LoraAdapter {
  const spec = randomLoraAdapter(config, { rank: 4, targetModules: ['q_proj'], seed });
  return { family: 'lora', rank: 4, targetModules: ['q_proj'], modules: spec.modules.map((m) => ({ ...m, rank: 4, scale: 1 })), byteSize: 0, config: {} as LoraAdapter['config'] };
}

/** The first weights of layer 0's q_proj A in a slot, as the graph reads them. */
function slotA(slots: AdapterSlots, slot: number): number[] {
  const target = new Float32Array(slots.loraInputs.get('lora_a_qkv.0')!.size);
  slots.copyAtRank('lora_a_qkv.0', slot, slots.rank, target, 0);
  return Array.from(target.subarray(0, 4));
}

test('slots: least recently used idle slot is reused, held slots never are', () => {
  const slots = new AdapterSlots(config, 2, 4);
  const a = slots.place('a', adapter(1))!;
  const b = slots.place('b', adapter(2))!;
  assert.equal(slots.place('c', adapter(3)), null, 'both slots held');
  slots.release(a);
  const evicted: string[] = [];
  assert.equal(slots.place('c', adapter(3), (key) => evicted.push(key)), a);
  assert.deepEqual(evicted, ['a']);
  assert.equal(slots.holdIfResident('b'), b);
  assert.equal(slots.holdIfResident('a'), undefined);
});

test('an adapter evicted while held is never served to new sequences, even when republished under the same key', () => {
  const slots = new AdapterSlots(config, 2, 4);
  const old = slots.place('t/x@1', adapter(1))!;
  const oldWeights = slotA(slots, old);
  slots.evict('t/x@1');
  assert.equal(slots.holdIfResident('t/x@1'), undefined, 'the retired slot is not handed out');
  // Republished with new weights: it gets the other slot, the old one still belongs to its running sequence.
  const fresh = slots.place('t/x@1', adapter(2))!;
  assert.notEqual(fresh, old);
  assert.deepEqual(slotA(slots, old), oldWeights);
  assert.notDeepEqual(slotA(slots, fresh), oldWeights);
  // When the last holder of the retired slot finishes, the slot is zeroed and free again.
  slots.release(old);
  assert.deepEqual(slotA(slots, old), [0, 0, 0, 0]);
  assert.equal(slots.place('t/y@1', adapter(3)), old);
});

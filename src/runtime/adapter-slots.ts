/**
 * Runtime adapter slots: adapters already converted to the decoder graph's per-row layout (see slot-writer.ts),
 * from which batch rows copy their weights when a sequence joins. Slot 0 is the identity and means "no adapter".
 * This module also owns the placement policy.
 *
 * Policy: an adapter is copied into a free slot, else into the least recently used slot that no running
 * sequence holds. A slot held by a running sequence is never evicted; when every slot is held, the caller waits.
 */
import { virtualTokensOf, type Adapter, type AdapterFamily } from '../adapters/adapter.ts';
import { elementCount } from '../formats/tensor-shape.ts';
import { LORA_INPUTS } from '../graph/decoder-graph.ts';
import { bottleneckInputShapes, peftInputShapes } from '../graph/peft-blocks.ts';
import type { LlamaConfig } from '../model/types.ts';
import { loraInputShapes, loraLayouts, writeAdapter, type LoraInputName } from './slot-writer.ts';

/** A graph input's weights for every slot (or batch row), each `size` floats of `shape`. */
export interface LoraBuffer {
  data: Float32Array;
  shape: number[];
  size: number;
}

/**
 * The per-row inputs fall in three groups: LoRA matrices and bottleneck matrices, each on its own rank axis
 * (rows are laid out for the widest among them, so one group's width costs the other nothing), and fixed-width
 * scales and biases.
 */
export type InputGroup = 'lora' | 'bottleneck' | 'fixed';
export const RANK_GROUPS = ['lora', 'bottleneck'] as const;
export type RankGroup = (typeof RANK_GROUPS)[number];

/** Where the rank axis lies: the last axis (A, bottleneck down: `[in, groups*R]`), or the second to last (B: `[..., R, out]`). */
type RankAxis = 'columns' | 'rows';

/** What a slot's adapter needs besides its per-row inputs: what the runner feeds at prefill or writes into the cache. */
export interface SlotPrompt {
  family: AdapterFamily;
  /** Positions taken before the prompt's tokens. */
  virtualTokens: number;
  /** Prompt and p-tuning: [virtualTokens, hidden]. */
  softPrompt?: Float32Array;
  /** Prefix tuning: [virtualTokens, layers·2·kv_dim], PEFT's layout. */
  prefix?: Float32Array;
}

const NO_PROMPT: SlotPrompt = { family: 'lora', virtualTokens: 0 };

export class AdapterSlots {
  /** Per graph input name (e.g. `lora_a_qkv.3`): the slots' weights, slot 0 first. */
  readonly buffers = new Map<string, LoraBuffer>();
  /** Per graph input name: its group and the value of "no adapter" (0, or 1 for scales). */
  readonly groups = new Map<string, { group: InputGroup; identity: 0 | 1 }>();
  /** Adapter key → its slot; Map order is least recently used first. */
  private readonly residents = new Map<string, number>();
  /** Per slot: how many running sequences hold it. */
  private readonly holders: number[];
  /**
   * Slots whose adapter was evicted while sequences still held them: no new sequence may use them, and they
   * are freed when the last holder releases (a version deleted mid-stream, then republished under the same
   * key, must never be served from the old copy).
   */
  private readonly retired = new Set<number>();
  private readonly freeSlots: number[];
  /** Bumped on every write into a slot, so copies of its old contents can tell they are stale. */
  private readonly generations: number[];
  /** Per slot and rank group: the width the adapter it holds needs (0 when empty or unused). */
  private readonly widths: Record<RankGroup, number[]>;
  /** Per slot: whether its adapter sets any fixed-width input (scales, biases). */
  private readonly fixedInUse: boolean[];
  private readonly prompts: SlotPrompt[];
  private readonly rankAxes = new Map<string, RankAxis>();

  constructor(
    private readonly config: LlamaConfig,
    /** Usable adapter slots, not counting slot 0. */
    readonly capacity: number,
    /** Slot width of the rank axes: the highest LoRA rank and the widest bottleneck. */
    readonly rank: number,
  ) {
    const loraShapes = loraInputShapes(config, rank);
    const aInputs = new Set(Object.values(loraLayouts(config)).map((layout) => layout.a));
    const add = (name: string, shape: number[], group: InputGroup, identity: 0 | 1, axis?: RankAxis) => {
      const size = elementCount(shape);
      this.buffers.set(name, { data: new Float32Array((capacity + 1) * size).fill(identity), shape, size });
      this.groups.set(name, { group, identity });
      if (axis) this.rankAxes.set(name, axis);
    };
    for (let l = 0; l < config.numLayers; l++) {
      for (const [key, nameOf] of Object.entries(LORA_INPUTS) as [LoraInputName, (l: number) => string][]) {
        add(nameOf(l), loraShapes[key], 'lora', 0, aInputs.has(key) ? 'columns' : 'rows');
      }
    }
    for (const [name, { shape, axis }] of bottleneckInputShapes(config, rank)) add(name, shape, 'bottleneck', 0, axis);
    for (const [name, { shape, identity }] of peftInputShapes(config)) add(name, shape, 'fixed', identity);
    this.freeSlots = Array.from({ length: capacity }, (_, i) => capacity - i);
    this.generations = new Array(capacity + 1).fill(0);
    this.widths = { lora: new Array(capacity + 1).fill(0), bottleneck: new Array(capacity + 1).fill(0) };
    this.fixedInUse = new Array(capacity + 1).fill(false);
    this.prompts = new Array(capacity + 1).fill(NO_PROMPT);
    this.holders = new Array(capacity + 1).fill(0);
  }

  get residentAdapters(): string[] {
    return [...this.residents.keys()];
  }

  get bytes(): number {
    let total = 0;
    for (const { data } of this.buffers.values()) total += data.byteLength;
    return total;
  }

  generation(slot: number): number {
    return this.generations[slot];
  }

  /** The LoRA rank (or bottleneck width) of the adapter in a slot (0 for slot 0, empty slots and other families). */
  widthOf(slot: number, group: RankGroup): number {
    return this.widths[group][slot];
  }

  /** Whether the adapter in a slot sets scales or biases (IA3, DoRA, bottleneck adapters). */
  usesFixedInputs(slot: number): boolean {
    return this.fixedInUse[slot];
  }

  /** The virtual tokens of the adapter in a slot: soft prompt or prefix (none for other families). */
  promptOf(slot: number): SlotPrompt {
    return this.prompts[slot];
  }

  /** The per-row shape of a LoRA graph input when laid out for `rank` (at most the slot rank). */
  shapeAt(name: string, rank: number): number[] {
    const { shape } = this.buffers.get(name)!;
    return this.rankAxes.get(name) === 'columns'
      ? [shape[0], (shape[1] / this.rank) * rank]
      : shape.map((dim, axis) => (axis === shape.length - 2 ? rank : dim));
  }

  /**
   * Copies a slot's weights of one graph input into `target` at `offset`, laid out for `rank`: the first
   * `rank` entries of every rank block (the rest are the zero padding up to the slot rank).
   */
  copyAtRank(name: string, slot: number, rank: number, target: Float32Array, offset: number): void {
    const { data, shape, size } = this.buffers.get(name)!;
    const from = slot * size;
    if (rank === this.rank) {
      target.set(data.subarray(from, from + size), offset);
    } else if (this.rankAxes.get(name) === 'columns') {
      // [in, groups*R] → [in, groups*rank]: each row of A keeps the first `rank` columns of every group.
      const groups = shape[1] / this.rank;
      for (let i = 0, to = offset; i < shape[0]; i++) {
        for (let g = 0; g < groups; g++, to += rank) {
          const start = from + (i * groups + g) * this.rank;
          target.set(data.subarray(start, start + rank), to);
        }
      }
    } else {
      // [..., R, out] → [..., rank, out]: each block of B keeps its first `rank` rows.
      const width = shape[shape.length - 1];
      for (let block = 0; block < size / (this.rank * width); block++) {
        const start = from + block * this.rank * width;
        target.set(data.subarray(start, start + rank * width), offset + block * rank * width);
      }
    }
  }

  /** Holds the slot of `key` for one more running sequence if the adapter is resident; else undefined. */
  holdIfResident(key: string): number | undefined {
    const slot = this.residents.get(key);
    if (slot === undefined) return undefined;
    this.holders[slot]++;
    this.residents.delete(key);
    this.residents.set(key, slot);
    return slot;
  }

  /**
   * Copies a non-resident adapter into a free slot, or into the least recently used slot nobody holds, and
   * holds it for one running sequence. Returns null when every slot is held (try again after a sequence
   * finishes). `onEvict` names the adapter whose slot was reused. Call only between graph runs.
   */
  place(key: string, adapter: Adapter, onEvict?: (key: string) => void): number | null {
    if (this.residents.has(key)) throw new Error(`adapter ${key} is already resident; hold it instead`);
    let slot = this.freeSlots.pop();
    if (slot === undefined) {
      const victim = [...this.residents].find(([, resident]) => this.holders[resident] === 0);
      if (!victim) return null;
      this.residents.delete(victim[0]);
      slot = victim[1];
      onEvict?.(victim[0]);
    }
    try {
      this.write(slot, adapter);
    } catch (error) {
      this.free(slot);
      throw error;
    }
    this.residents.set(key, slot);
    this.holders[slot] = 1;
    return slot;
  }

  /** Ends one running sequence's hold on a slot. */
  release(slot: number): void {
    if (this.holders[slot] === 0) throw new Error(`adapter slot ${slot} released more often than held`);
    if (--this.holders[slot] === 0 && this.retired.delete(slot)) this.free(slot);
  }

  /**
   * Drops an adapter that is no longer valid (deleted or replaced): its slot is freed now, or, while running
   * sequences hold it, retired until they finish.
   */
  evict(key: string): void {
    const slot = this.residents.get(key);
    if (slot === undefined) return;
    this.residents.delete(key);
    if (this.holders[slot] > 0) this.retired.add(slot);
    else this.free(slot);
  }

  private free(slot: number): void {
    this.clear(slot);
    this.freeSlots.push(slot);
  }

  /** Copies an adapter into a slot in the graph's layout. */
  private write(slot: number, adapter: Adapter): void {
    if (adapter.rank > this.rank) {
      throw new Error(`adapter width ${adapter.rank} exceeds the slot width ${this.rank}; raise MAX_LORA_RANK`);
    }
    this.clear(slot);
    writeAdapter(this.config, adapter, (name) => {
      const { data, size } = this.buffers.get(name)!;
      return { data, offset: slot * size };
    }, this.rank);
    const isBottleneck = adapter.family === 'seq_bn' || adapter.family === 'double_seq_bn' || adapter.family === 'par_bn';
    this.widths.lora[slot] = adapter.family === 'lora' || adapter.family === 'dora' ? adapter.rank : 0;
    this.widths.bottleneck[slot] = isBottleneck ? adapter.rank : 0;
    this.fixedInUse[slot] = adapter.family === 'dora' || adapter.family === 'ia3' || isBottleneck;
    this.prompts[slot] = {
      family: adapter.family,
      virtualTokens: virtualTokensOf(adapter),
      ...(adapter.family === 'prompt_tuning' || adapter.family === 'p_tuning' ? { softPrompt: adapter.embeddings } : {}),
      ...(adapter.family === 'prefix_tuning' ? { prefix: adapter.keyValues } : {}),
    };
  }

  private clear(slot: number): void {
    this.generations[slot]++;
    this.widths.lora[slot] = 0;
    this.widths.bottleneck[slot] = 0;
    this.fixedInUse[slot] = false;
    this.prompts[slot] = NO_PROMPT;
    for (const [name, { data, size }] of this.buffers) {
      data.fill(this.groups.get(name)!.identity, slot * size, (slot + 1) * size);
    }
  }
}

/**
 * Runtime adapter slots: adapters in the decoder graph's layout (A transposed, rank padded to the slot rank, scale
 * folded into B; laid out beforehand, see slot-ready-adapter.ts), from which a pass's adapter segments copy their
 * weights; and the other PEFT families' per-row inputs, from which batch rows copy theirs (row-family-weights.ts).
 * Slot 0 is the identity and means "no adapter". This module also owns the placement policy.
 *
 * Policy: an adapter is copied into a free slot, else into the least recently used slot that no running
 * sequence holds. A slot held by a running sequence is never evicted; when every slot is held, the caller waits.
 */
import type { Adapter } from '../adapters/adapter.ts';
import { elementCount } from '../formats/tensor-shape.ts';
import { LORA_INPUTS } from '../graph/lora-delta.ts';
import type { LlamaConfig } from '../model/types.ts';
import { familyInputShapes, loraInputShapes, slotLayouts, type FamilyInput, type LoraInputName } from './slot-layout.ts';
import { layOutForSlot, type SlotPrompt, type SlotReadyAdapter } from './slot-ready-adapter.ts';

/** A LoRA graph input's weights for every slot (or adapter segment), each `size` floats of `shape`. */
export interface LoraBuffer {
  data: Float32Array;
  shape: number[];
  size: number;
}

/** Where the rank axis lies: the last axis of A (`[blocks, in, R]`), the middle one of B (`[blocks, R, width]`). */
const RANK_AXIS = { a: 2, b: 1 } as const;

const NO_PROMPT: SlotPrompt = { family: null, virtualTokens: 0 };

export class AdapterSlots {
  /** Per graph input name (e.g. `lora_a_qkv.3`): the slots' weights, slot 0 first. */
  readonly buffers = new Map<string, LoraBuffer>();
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
  /** Per slot: the rank of the adapter it holds (0 when empty). */
  private readonly ranks: number[];
  private readonly rankAxes = new Map<string, number>();
  /** Per graph input name of the other families: the slots' values, slot 0 first. */
  readonly familyBuffers = new Map<string, LoraBuffer>();
  readonly familyInputs = new Map<string, FamilyInput>();
  /** Per slot: the bottleneck width of its adapter (0 for other families). */
  private readonly bottleneckWidths: number[];
  /** Per slot: whether its adapter sets any fixed-width input (IA3, DoRA, bottleneck adapters). */
  private readonly fixedInUse: boolean[];
  private readonly prompts: SlotPrompt[];

  constructor(
    private readonly config: LlamaConfig,
    /** Usable adapter slots, not counting slot 0. */
    readonly capacity: number,
    readonly rank: number,
  ) {
    const shapes = loraInputShapes(config, rank);
    const aInputs = new Set(Object.values(slotLayouts(config)).map((layout) => layout.a));
    for (let l = 0; l < config.numLayers; l++) {
      for (const [key, nameOf] of Object.entries(LORA_INPUTS) as [LoraInputName, (l: number) => string][]) {
        const size = elementCount(shapes[key]);
        this.buffers.set(nameOf(l), { data: new Float32Array((capacity + 1) * size), shape: shapes[key], size });
        this.rankAxes.set(nameOf(l), aInputs.has(key) ? RANK_AXIS.a : RANK_AXIS.b);
      }
    }
    for (const [name, { shape, ...input }] of familyInputShapes(config, rank)) {
      const size = elementCount(shape);
      this.familyBuffers.set(name, { data: new Float32Array((capacity + 1) * size).fill(input.identity), shape, size });
      this.familyInputs.set(name, input);
    }
    this.bottleneckWidths = new Array(capacity + 1).fill(0);
    this.fixedInUse = new Array(capacity + 1).fill(false);
    this.prompts = new Array(capacity + 1).fill(NO_PROMPT);
    this.freeSlots = Array.from({ length: capacity }, (_, i) => capacity - i);
    this.generations = new Array(capacity + 1).fill(0);
    this.ranks = new Array(capacity + 1).fill(0);
    this.holders = new Array(capacity + 1).fill(0);
  }

  get residentAdapters(): string[] {
    return [...this.residents.keys()];
  }

  get bytes(): number {
    let total = 0;
    for (const { data } of [...this.buffers.values(), ...this.familyBuffers.values()]) total += data.byteLength;
    return total;
  }

  generation(slot: number): number {
    return this.generations[slot];
  }

  /** The rank of the adapter in a slot (0 for slot 0 and empty slots). */
  rankOf(slot: number): number {
    return this.ranks[slot];
  }

  /** The bottleneck width of the adapter in a slot (0 for slot 0, empty slots and other families). */
  bottleneckWidthOf(slot: number): number {
    return this.bottleneckWidths[slot];
  }

  /** Whether the adapter in a slot sets scales or biases (IA3, DoRA, bottleneck adapters). */
  usesFixedInputs(slot: number): boolean {
    return this.fixedInUse[slot];
  }

  /** The virtual tokens of the adapter in a slot: soft prompt or prefix (none for other families). */
  promptOf(slot: number): SlotPrompt {
    return this.prompts[slot];
  }

  /** One row's shape of a bottleneck input at `width`, or of a fixed input. */
  familyShapeAt(name: string, width: number): number[] {
    const { axis } = this.familyInputs.get(name)!;
    return this.familyBuffers.get(name)!.shape.map((dim, i) => (i === axis ? width : dim));
  }

  /** Copies a slot's block of a family input into `target` at `offset`, bottleneck inputs laid out for `width`. */
  copyFamilyInput(name: string, slot: number, width: number, target: Float32Array, offset: number): void {
    const { data, shape, size } = this.familyBuffers.get(name)!;
    const { axis } = this.familyInputs.get(name)!;
    const from = slot * size;
    if (axis === undefined || width === this.rank) {
      target.set(data.subarray(from, from + size), offset);
      return;
    }
    const inner = elementCount(shape.slice(axis + 1));
    for (let block = 0; block < size / (this.rank * inner); block++) {
      const start = from + block * this.rank * inner;
      target.set(data.subarray(start, start + width * inner), offset + block * width * inner);
    }
  }

  /** One adapter's shape of a LoRA graph input when laid out for `rank` (at most the slot rank). */
  shapeAt(name: string, rank: number): number[] {
    const axis = this.rankAxes.get(name)!;
    return this.buffers.get(name)!.shape.map((dim, i) => (i === axis ? rank : dim));
  }

  /**
   * Copies a slot's weights of one graph input into `target` at `offset`, laid out for `rank`: the first
   * `rank` entries along the rank axis (the rest are the zero padding up to the slot rank).
   */
  copyAtRank(name: string, slot: number, rank: number, target: Float32Array, offset: number): void {
    const { data, shape, size } = this.buffers.get(name)!;
    const from = slot * size;
    if (rank === this.rank) {
      target.set(data.subarray(from, from + size), offset);
      return;
    }
    // Floats per step along the rank axis: 1 for A (rank last), the block width for B.
    const inner = elementCount(shape.slice(this.rankAxes.get(name)! + 1));
    for (let block = 0; block < size / (this.rank * inner); block++) {
      const start = from + block * this.rank * inner;
      target.set(data.subarray(start, start + rank * inner), offset + block * rank * inner);
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
   * Copies a non-resident adapter, already laid out for a slot, into a free slot, or into the least recently used
   * slot nobody holds, and holds it for one running sequence. Returns null when every slot is held (try again
   * after a sequence finishes). `onEvict` names the adapter whose slot was reused. Call only between graph runs.
   */
  placeReady(key: string, adapter: SlotReadyAdapter, onEvict?: (key: string) => void): number | null {
    if (this.residents.has(key)) throw new Error(`adapter ${key} is already resident; hold it instead`);
    if (adapter.doraPending) throw new Error('a DoRA adapter needs its output scales computed before it takes a slot');
    let slot = this.freeSlots.pop();
    if (slot === undefined) {
      const victim = [...this.residents].find(([, resident]) => this.holders[resident] === 0);
      if (!victim) return null;
      this.residents.delete(victim[0]);
      slot = victim[1];
      onEvict?.(victim[0]);
    }
    this.write(slot, adapter);
    this.residents.set(key, slot);
    this.holders[slot] = 1;
    return slot;
  }

  /** placeReady for a parsed adapter (DoRA with its scales: ModelRunner.prepareAdapter), laid out here. */
  place(key: string, adapter: Adapter, onEvict?: (key: string) => void): number | null {
    return this.placeReady(key, layOutForSlot(this.config, this.rank, adapter), onEvict);
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

  /** Copies a laid-out adapter into a slot: its blocks, and identity where it has none. */
  private write(slot: number, adapter: SlotReadyAdapter): void {
    this.generations[slot]++;
    this.ranks[slot] = adapter.loraRank;
    this.bottleneckWidths[slot] = adapter.bottleneckWidth;
    this.fixedInUse[slot] = adapter.usesFixedInputs;
    this.prompts[slot] = adapter.prompt;
    for (const [name, { data, size }] of this.buffers) copyOrFill(data, slot * size, size, adapter.blocks.get(name), 0);
    for (const [name, { data, size }] of this.familyBuffers) {
      copyOrFill(data, slot * size, size, adapter.blocks.get(name), this.familyInputs.get(name)!.identity);
    }
  }

  private clear(slot: number): void {
    this.generations[slot]++;
    this.ranks[slot] = 0;
    this.bottleneckWidths[slot] = 0;
    this.fixedInUse[slot] = false;
    this.prompts[slot] = NO_PROMPT;
    for (const { data, size } of this.buffers.values()) {
      data.fill(0, slot * size, (slot + 1) * size);
    }
    for (const [name, { data, size }] of this.familyBuffers) {
      data.fill(this.familyInputs.get(name)!.identity, slot * size, (slot + 1) * size);
    }
  }
}

function copyOrFill(target: Float32Array, offset: number, size: number, block: Float32Array | undefined, identity: number): void {
  if (block) target.set(block, offset);
  else target.fill(identity, offset, offset + size);
}

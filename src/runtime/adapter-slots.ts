/**
 * Runtime adapter slots: the adapters a pass may use, each in the decoder graph's layout (A transposed, rank padded
 * to the slot rank, scale folded into B; laid out beforehand, see slot-ready-adapter.ts), from which a pass's
 * adapter segments copy their weights; and the other PEFT families' per-row inputs, from which batch rows copy
 * theirs (row-family-weights.ts). A slot refers to its adapter's layout rather than holding a copy, so taking a
 * slot costs nothing in the step loop. Slot 0 is the identity and means "no adapter".
 * This module also owns the placement policy.
 *
 * Policy: an adapter takes a free slot, else the least recently used slot that no running
 * sequence holds. A slot held by a running sequence is never evicted; when every slot is held, the caller waits.
 */
import type { Adapter } from '../adapters/adapter.ts';
import { elementCount } from '../formats/tensor-shape.ts';
import { LORA_INPUTS } from '../graph/lora-delta.ts';
import type { LlamaConfig } from '../model/types.ts';
import { familyInputShapes, loraInputShapes, slotLayouts, type FamilyInput, type LoraInputName } from './slot-layout.ts';
import { layOutForSlot, type SlotPrompt, type SlotReadyAdapter } from './slot-ready-adapter.ts';

/** A LoRA graph input's weights for every adapter segment (or batch row), each `size` floats of `shape`. */
export interface LoraBuffer {
  data: Float32Array;
  shape: number[];
  size: number;
}

/** One slot's block of a graph input: `size` floats of `shape`. */
export interface SlotInput {
  shape: number[];
  size: number;
}

/** Where the rank axis lies: the last axis of A (`[blocks, in, R]`), the middle one of B (`[blocks, R, width]`). */
const RANK_AXIS = { a: 2, b: 1 } as const;

const NO_PROMPT: SlotPrompt = { family: null, virtualTokens: 0 };

export class AdapterSlots {
  /** Per LoRA graph input name (e.g. `lora_a_qkv.3`): one slot's block of it. */
  readonly loraInputs = new Map<string, SlotInput & { rankAxis: number }>();
  /** Per graph input name of the other families: one slot's block of it, and how it is read. */
  readonly familyInputs = new Map<string, FamilyInput & SlotInput>();
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
  /** Bumped on every change of a slot's adapter, so copies of its old contents can tell they are stale. */
  private readonly generations: number[];
  /**
   * Per slot: its adapter, in the layout built before it got here (shared with the host cache, never written),
   * or null for slot 0 and empty slots, which read as identity.
   */
  private readonly contents: (SlotReadyAdapter | null)[];

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
        const rankAxis = aInputs.has(key) ? RANK_AXIS.a : RANK_AXIS.b;
        this.loraInputs.set(nameOf(l), { shape: shapes[key], size: elementCount(shapes[key]), rankAxis });
      }
    }
    for (const [name, input] of familyInputShapes(config, rank)) this.familyInputs.set(name, { ...input, size: elementCount(input.shape) });
    this.contents = new Array(capacity + 1).fill(null);
    this.freeSlots = Array.from({ length: capacity }, (_, i) => capacity - i);
    this.generations = new Array(capacity + 1).fill(0);
    this.holders = new Array(capacity + 1).fill(0);
  }

  get residentAdapters(): string[] {
    return [...this.residents.keys()];
  }

  /** Bytes of the adapters the slots hold (the same arrays the host cache may also hold). */
  get bytes(): number {
    return this.contents.reduce((total, adapter) => total + (adapter?.byteSize ?? 0), 0);
  }

  generation(slot: number): number {
    return this.generations[slot];
  }

  /** The rank of the adapter in a slot (0 for slot 0, empty slots and families other than LoRA and DoRA). */
  rankOf(slot: number): number {
    return this.contents[slot]?.loraRank ?? 0;
  }

  /** The bottleneck width of the adapter in a slot (0 for slot 0, empty slots and other families). */
  bottleneckWidthOf(slot: number): number {
    return this.contents[slot]?.bottleneckWidth ?? 0;
  }

  /** Whether the adapter in a slot sets scales or biases (IA3, DoRA, bottleneck adapters). */
  usesFixedInputs(slot: number): boolean {
    return this.contents[slot]?.usesFixedInputs ?? false;
  }

  /** The virtual tokens of the adapter in a slot: soft prompt or prefix (none for other families). */
  promptOf(slot: number): SlotPrompt {
    return this.contents[slot]?.prompt ?? NO_PROMPT;
  }

  /** One row's shape of a bottleneck input at `width`, or of a fixed input. */
  familyShapeAt(name: string, width: number): number[] {
    const { axis, shape } = this.familyInputs.get(name)!;
    return shape.map((dim, i) => (i === axis ? width : dim));
  }

  /** Copies a slot's block of a family input into `target` at `offset`, bottleneck inputs laid out for `width`. */
  copyFamilyInput(name: string, slot: number, width: number, target: Float32Array, offset: number): void {
    const { shape, size, axis, identity } = this.familyInputs.get(name)!;
    const inner = axis === undefined ? 0 : elementCount(shape.slice(axis + 1));
    copyBlock(this.contents[slot]?.blocks.get(name), size, axis === undefined ? this.rank : width, this.rank, inner, identity, target, offset);
  }

  /** One adapter's shape of a LoRA graph input when laid out for `rank`. */
  shapeAt(name: string, rank: number): number[] {
    const { shape, rankAxis } = this.loraInputs.get(name)!;
    return shape.map((dim, i) => (i === rankAxis ? rank : dim));
  }

  /**
   * Copies a slot's weights of one graph input into `target` at `offset`, laid out for `rank`: the first
   * `rank` entries along the rank axis (the rest are the zero padding up to the slot rank).
   */
  copyAtRank(name: string, slot: number, rank: number, target: Float32Array, offset: number): void {
    const { shape, size, rankAxis } = this.loraInputs.get(name)!;
    // Floats per step along the rank axis: 1 for A (rank last), the block width for B.
    copyBlock(this.contents[slot]?.blocks.get(name), size, rank, this.rank, elementCount(shape.slice(rankAxis + 1)), 0, target, offset);
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
   * Puts a non-resident adapter, already laid out for a slot, into a free slot, or into the least recently used
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
    // The slot takes the layout itself: placing an adapter copies nothing.
    this.contents[slot] = adapter;
    this.generations[slot]++;
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
    this.contents[slot] = null;
    this.generations[slot]++;
    this.freeSlots.push(slot);
  }
}

/**
 * Copies a slot block (`size` floats laid out for `slotWidth` along an axis with `inner` floats per step; `inner`
 * 0: no such axis) into `target` at `offset`, laid out for `width`; an absent block reads as `identity`.
 */
function copyBlock(
  block: Float32Array | undefined,
  size: number,
  width: number,
  slotWidth: number,
  inner: number,
  identity: number,
  target: Float32Array,
  offset: number,
): void {
  const length = inner === 0 ? size : (size / slotWidth) * width;
  if (!block) {
    target.fill(identity, offset, offset + length);
    return;
  }
  if (inner === 0 || width === slotWidth) {
    target.set(block, offset);
    return;
  }
  for (let b = 0; b < size / (slotWidth * inner); b++) {
    const start = b * slotWidth * inner;
    target.set(block.subarray(start, start + width * inner), offset + b * width * inner);
  }
}

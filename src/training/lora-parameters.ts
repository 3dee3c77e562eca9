/**
 * A trainable LoRA adapter as one flat float32 buffer (all A and B matrices, layer by layer, in PEFT layout:
 * A `[r, in]`, B `[out, r]`), so the optimizer, gradient accumulation, clipping and checkpoints each work on one
 * array, and the training graphs read each matrix as a zero-copy view.
 */
import { projectionDims } from '../adapters/lora.ts';
import type { LoraAdapterSpec } from '../adapters/lora-writer.ts';
import { createRng } from '../engine/random.ts';
import type { LlamaConfig, LoraTargetModule } from '../model/types.ts';

export interface LoraMatrixSlot {
  layer: number;
  module: LoraTargetModule;
  matrix: 'A' | 'B';
  offset: number;
  shape: [number, number];
}

export class LoraParameterLayout {
  readonly slots: LoraMatrixSlot[] = [];
  readonly size: number;

  constructor(
    readonly config: LlamaConfig,
    readonly rank: number,
    readonly targetModules: LoraTargetModule[],
  ) {
    let offset = 0;
    for (let layer = 0; layer < config.numLayers; layer++) {
      for (const module of targetModules) {
        const { inFeatures, outFeatures } = projectionDims(config, module);
        for (const [matrix, shape] of [['A', [rank, inFeatures]], ['B', [outFeatures, rank]]] as const) {
          this.slots.push({ layer, module, matrix, offset, shape: [...shape] });
          offset += shape[0] * shape[1];
        }
      }
    }
    this.size = offset;
  }

  view(buffer: Float32Array, slot: LoraMatrixSlot): Float32Array {
    return buffer.subarray(slot.offset, slot.offset + slot.shape[0] * slot.shape[1]);
  }

  slotsOfLayer(layer: number): LoraMatrixSlot[] {
    return this.slots.filter((slot) => slot.layer === layer);
  }

  /**
   * PEFT's initialisation: A uniform in ±1/√in (Kaiming-uniform with a = √5), B zero, so training starts from
   * the base model exactly.
   */
  initialize(seed: number): Float32Array {
    const rng = createRng(seed);
    const buffer = new Float32Array(this.size);
    for (const slot of this.slots) {
      if (slot.matrix === 'B') continue;
      const bound = 1 / Math.sqrt(slot.shape[1]);
      const values = this.view(buffer, slot);
      for (let i = 0; i < values.length; i++) values[i] = (2 * rng() - 1) * bound;
    }
    return buffer;
  }

  /** The flat buffer of an adapter with this layout's rank and modules (every layer adapted). */
  fromAdapterSpec(spec: LoraAdapterSpec): Float32Array {
    const buffer = new Float32Array(this.size);
    for (const slot of this.slots) {
      const module = spec.modules.find((m) => m.layer === slot.layer && m.module === slot.module);
      if (!module) throw new Error(`the adapter has no ${slot.module} in layer ${slot.layer}`);
      const source = slot.matrix === 'A' ? module.A : module.B;
      const target = this.view(buffer, slot);
      if (source.length !== target.length) throw new Error(`the adapter's ${slot.module} ${slot.matrix} in layer ${slot.layer} has ${source.length} values, expected ${target.length}`);
      target.set(source);
    }
    return buffer;
  }

  /** The adapter in the form loraAdapterFiles() writes (copies, so later training steps do not change it). */
  toAdapterSpec(buffer: Float32Array, alpha: number): LoraAdapterSpec {
    const modules = [];
    for (let i = 0; i < this.slots.length; i += 2) {
      const [a, b] = [this.slots[i], this.slots[i + 1]];
      modules.push({ layer: a.layer, module: a.module, A: this.view(buffer, a).slice(), B: this.view(buffer, b).slice() });
    }
    return { r: this.rank, alpha, targetModules: [...this.targetModules], modules };
  }
}

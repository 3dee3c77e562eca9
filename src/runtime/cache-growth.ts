/**
 * A growth of the KV cache spread over steps (KvCache.planGrowth): the larger buffers are allocated and filled a
 * layer at a time, a few layers a step, while the passes keep reading the current ones; once every layer has
 * its larger buffers, the cache switches to them. Copying all 30 layers of 16 rows into the next bucket in one
 * step (page faults on the fresh memory included) made that step 58–131 ms longer.
 */

/**
 * Layers migrated per step unless a sequence needs the larger shape sooner: on the SmolLM2-135M shape (30 layers)
 * a growth then takes 15 steps, each 3–13 ms longer when 16 rows grow to 256 positions.
 */
export const GROWTH_LAYERS_PER_STEP = 2;

/** One layer's key and value buffers and the width their rows are laid out for. */
export interface LayerBuffers {
  keys: Float32Array;
  values: Float32Array;
  width: number;
}

export class CacheGrowth {
  /** The larger buffers of the layers migrated so far: layers 0, 1, … in order. */
  private readonly migrated: LayerBuffers[] = [];

  constructor(
    readonly rows: number,
    readonly width: number,
    private readonly numLayers: number,
  ) {}

  /** The next layer to migrate. */
  get nextLayer(): number {
    return this.migrated.length;
  }

  get done(): boolean {
    return this.migrated.length === this.numLayers;
  }

  get keys(): Float32Array[] {
    return this.migrated.map((layer) => layer.keys);
  }

  get values(): Float32Array[] {
    return this.migrated.map((layer) => layer.values);
  }

  /** Whether this growth leads to `rows` rows of `width` positions. */
  leadsTo(rows: number, width: number): boolean {
    return this.rows === rows && this.width === width;
  }

  /** Layer `layer`'s larger buffers, once it has migrated: every later write to that layer goes there too. */
  layer(layer: number): LayerBuffers | undefined {
    return this.migrated[layer];
  }

  /** Adds the next layer's larger buffers, holding everything its current ones hold. */
  add(layer: LayerBuffers): void {
    this.migrated.push(layer);
  }
}

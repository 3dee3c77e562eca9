/**
 * A growth of the KV cache spread over steps (KvCache.planGrowth): the larger buffers are filled a layer at a
 * time, a few layers a step, while the passes keep reading the current ones; once every layer has its larger
 * buffers, the cache switches to them. Copying all 30 layers of 16 rows into the next bucket in one step (page
 * faults on the fresh memory included) made that step 58–131 ms longer.
 */

/**
 * Layers migrated per step unless a sequence needs the larger shape sooner: on the SmolLM2-135M shape (30 layers)
 * a growth then takes 15 steps of 2–3 ms each (8 to 16 rows of 128 positions); 16 rows growing to 256 positions
 * for newcomers' 128-token prompts, due in 9 steps, took 3–4 layers a step, 11–13 ms.
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
  /**
   * Every layer's larger keys and values in one allocation, made at the first layer's migration: memory this
   * large is mapped untouched, so each layer's pages are faulted in when that layer migrates. With one allocation
   * per layer, steps migrating 3 layers of 16 rows × 256 positions took 10 ms and every third one 23 ms (zero-
   * filled or collected at once, it seems); with one allocation, 11–13 ms each.
   */
  private storage: Float32Array | null = null;

  constructor(
    readonly rows: number,
    readonly width: number,
    private readonly numLayers: number,
    /** Floats of one layer's key (or value) buffer in the larger shape. */
    private readonly layerSize: number,
  ) {}

  /** Empty buffers of the larger shape for the next layer to migrate. */
  nextLayerBuffers(): LayerBuffers {
    this.storage ??= new Float32Array(2 * this.numLayers * this.layerSize);
    const at = 2 * this.nextLayer * this.layerSize;
    return {
      keys: this.storage.subarray(at, at + this.layerSize),
      values: this.storage.subarray(at + this.layerSize, at + 2 * this.layerSize),
      width: this.width,
    };
  }

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

/**
 * The host tier of the adapter cache: validated adapters kept in memory in the layout of a runtime slot, ready to
 * copy, bounded in bytes, loaded from the disk store on a miss. Loads run on the loader thread, so the decode loop
 * keeps stepping meanwhile; concurrent requests for the same adapter share one load.
 */
import { LRUCache } from 'lru-cache';
import type { SlotReadyAdapter } from '../runtime/slot-ready-adapter.ts';
import type { LoadAdapter } from './adapter-loader.ts';
import type { AdapterCacheEvent, AdapterRef } from './protocol.ts';

export class HostAdapterCache {
  private readonly cache: LRUCache<string, SlotReadyAdapter>;
  private readonly loading = new Map<string, Promise<SlotReadyAdapter>>();

  constructor(
    private readonly loadAdapter: LoadAdapter,
    maxBytes: number,
    private readonly report: (event: AdapterCacheEvent) => void,
    /** Completes a laid-out adapter with what it needs from the base (ModelRunner.completeAdapter). */
    private readonly prepare: (adapter: SlotReadyAdapter) => Promise<SlotReadyAdapter>,
  ) {
    this.cache = new LRUCache<string, SlotReadyAdapter>({
      maxSize: maxBytes,
      // An adapter bigger than the whole budget is still served; it just is not kept.
      maxEntrySize: maxBytes,
      sizeCalculation: (adapter) => Math.max(1, adapter.byteSize),
      dispose: (_adapter, _key, reason) => {
        if (reason === 'evict') this.report({ tier: 'host', event: 'eviction' });
      },
    });
  }

  get entries(): number {
    return this.cache.size;
  }

  get bytes(): number {
    return this.cache.calculatedSize;
  }

  /** The keys of the `limit` most recently used adapters in memory, most recent first. */
  recentKeys(limit: number): string[] {
    const keys: string[] = [];
    for (const key of this.cache.keys()) {
      if (keys.length === limit) break;
      keys.push(key);
    }
    return keys;
  }

  /** Whether the adapter is in memory, without counting a hit or miss or refreshing its recency. */
  has(key: string): boolean {
    return this.cache.has(key);
  }

  /** The ready-to-copy adapter if it is in memory (counted as a host hit or miss). */
  get(key: string): SlotReadyAdapter | undefined {
    const adapter = this.cache.get(key);
    this.report({ tier: 'host', event: adapter ? 'hit' : 'miss' });
    return adapter;
  }

  /** Reads, verifies, parses, validates and lays out the adapter's files, then keeps it. */
  load(ref: AdapterRef): Promise<SlotReadyAdapter> {
    const pending = this.loading.get(ref.key);
    if (pending) return pending;
    const started = performance.now();
    const load = this.loadAdapter(ref)
      .then((parsed) => this.prepare(parsed))
      .then((adapter) => {
        this.cache.set(ref.key, adapter);
        this.report({ tier: 'disk', event: 'load', seconds: (performance.now() - started) / 1000 });
        return adapter;
      })
      .catch((error: unknown) => {
        this.report({ tier: 'disk', event: 'failure' });
        throw error;
      })
      .finally(() => this.loading.delete(ref.key));
    this.loading.set(ref.key, load);
    return load;
  }

  delete(key: string): void {
    this.cache.delete(key);
  }
}

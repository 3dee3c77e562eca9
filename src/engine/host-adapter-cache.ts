/**
 * The host tier of the adapter cache: verified adapters kept in memory in the ready-to-copy slot layout, bounded
 * in bytes, loaded from the disk store on a miss. Loads run on the adapter loader thread (adapter-loader.ts), so
 * the step loop keeps stepping while files are read and laid out; concurrent requests for the same adapter share
 * one load.
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

  /** Whether the adapter is in memory, without counting a hit or miss or refreshing its recency. */
  has(key: string): boolean {
    return this.cache.has(key);
  }

  /** The adapter if it is in memory (counted as a host hit or miss). */
  get(key: string): SlotReadyAdapter | undefined {
    const adapter = this.cache.get(key);
    this.report({ tier: 'host', event: adapter ? 'hit' : 'miss' });
    return adapter;
  }

  /** Reads, verifies, parses, validates and lays out the adapter's files, then keeps the layout. */
  load(ref: AdapterRef): Promise<SlotReadyAdapter> {
    const pending = this.loading.get(ref.key);
    if (pending) return pending;
    const started = performance.now();
    const load = this.loadAdapter(ref)
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

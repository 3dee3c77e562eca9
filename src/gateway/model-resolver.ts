/**
 * Who may use which model: `model` is the base name alone or `<base>+<tenant>/<adapter>[@<version>]`.
 * A tenant sees its own adapters and those an admin marked public; admins see all. Anything a caller may not
 * see answers exactly like something that does not exist, so names of other tenants' adapters never leak.
 */
import { CACHE_KEY_TAG, type AdapterRef } from '../engine/protocol.ts';
import { parseAdapterId } from '../registry/adapter-names.ts';
import type { AdapterRecord, AdapterStore, InvalidAdapterVersion } from '../registry/adapter-store.ts';
import type { Principal } from './auth.ts';
import { adapterUnavailable, modelNotFound } from './errors.ts';

export type { AdapterSummary } from '../adapters/adapter.ts';
import { isAdapterFamily, type AdapterSummary } from '../adapters/adapter.ts';

/**
 * The summary a manifest carries, if it is well-formed and within what this server serves (MAX_LORA_RANK, room
 * for a prompt after the virtual tokens); else undefined, and the store runs the validator. Trusting it keeps
 * start-up from reading any stored weights, whatever the family: the engine's loader verifies the checksums and
 * checks the weights against the base model when it first reads a version, and refuses it then if they do not fit.
 */
export function readAdapterSummary(value: unknown, limits: { maxLoraRank: number; maxPositions: number }): AdapterSummary | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const { family, rank, targetModules, virtualTokens, bytes } = value as Partial<Record<keyof AdapterSummary, unknown>>;
  const count = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= 0;
  const valid =
    isAdapterFamily(family) &&
    count(rank) &&
    rank <= limits.maxLoraRank &&
    Array.isArray(targetModules) &&
    targetModules.every((m) => typeof m === 'string') &&
    count(virtualTokens) &&
    virtualTokens < limits.maxPositions - 1 &&
    count(bytes);
  return valid ? { family, rank, targetModules: targetModules as string[], virtualTokens, bytes } : undefined;
}

export interface ResolvedModel {
  /** The model id as answered in responses: the request's own string. */
  id: string;
  adapter: AdapterRecord<AdapterSummary> | null;
  /** What the engine needs to load the adapter; null for the base model. */
  ref: AdapterRef | null;
}

/**
 * The context positions a prompt takes with this model: its own tokens plus the adapter's virtual tokens (soft
 * prompts and prefixes sit in the KV cache like real tokens, so they count against the model's context).
 */
export function promptPositions(model: ResolvedModel, promptIds: readonly number[]): number {
  return promptIds.length + (model.adapter?.summary.virtualTokens ?? 0);
}

/**
 * The engine's cache key for a version: its id plus the tag of its files' checksums (computed once, when the store
 * adopted the version). A deleted adapter's version numbers are given again to the next publishes, so an id alone
 * could find the old weights in a cache (or in a load still in flight when the old version was evicted); the
 * content tag never can: a deleted-then-republished version's key differs.
 */
export function adapterCacheKey(record: Pick<AdapterRecord<unknown>, 'id' | 'filesTag'>): string {
  return `${record.id}${CACHE_KEY_TAG}${record.filesTag}`;
}

/** A stored version as the engine reads it: its cache key, its directory and its manifest's files. */
export function engineRef(record: AdapterRecord<unknown>): AdapterRef {
  return { key: adapterCacheKey(record), path: record.path, files: record.files };
}

/** A rescan of the store before answering "not found" at most this often, so unknown names cannot force scans. */
const REFRESH_INTERVAL_MS = 1000;

export class ModelResolver {
  private lastRefresh = 0;

  constructor(
    readonly baseName: string,
    private readonly store: AdapterStore<AdapterSummary>,
  ) {}

  canUse(principal: Principal, record: AdapterRecord<AdapterSummary>): boolean {
    return principal.kind === 'admin' || record.public || record.tenant === principal.tenant.name;
  }

  /** The latest version of every adapter the caller may use. */
  async visibleAdapters(principal: Principal): Promise<AdapterRecord<AdapterSummary>[]> {
    await this.store.fullyListed();
    const latest = new Map<string, AdapterRecord<AdapterSummary>>();
    for (const record of this.store.list()) {
      if (!this.canUse(principal, record)) continue;
      const name = `${record.tenant}/${record.adapter}`;
      const resolved = this.store.resolve(record.tenant, record.adapter);
      if (resolved && !latest.has(name)) latest.set(name, resolved);
    }
    return [...latest.values()];
  }

  modelId(record: AdapterRecord<AdapterSummary>, withVersion = false): string {
    return `${this.baseName}+${record.tenant}/${record.adapter}${withVersion ? `@${record.version}` : ''}`;
  }

  async resolve(principal: Principal, model: unknown): Promise<ResolvedModel> {
    if (typeof model !== 'string' || model === '') throw modelNotFound(String(model ?? ''));
    if (model === this.baseName) return { id: model, adapter: null, ref: null };
    if (!model.startsWith(`${this.baseName}+`)) throw modelNotFound(model);
    let wanted;
    try {
      wanted = parseAdapterId(model.slice(this.baseName.length + 1));
    } catch {
      throw modelNotFound(model);
    }
    let record = this.lookup(principal, wanted.tenant, wanted.adapter, wanted.version);
    if (!record && Date.now() - this.lastRefresh >= REFRESH_INTERVAL_MS) {
      // Adapters dropped into the store by another process show up here without waiting for the next scan.
      this.lastRefresh = Date.now();
      await this.store.refresh();
      record = this.lookup(principal, wanted.tenant, wanted.adapter, wanted.version);
    }
    if (!record) {
      const broken = this.store.unavailable(wanted.tenant, wanted.adapter, wanted.version);
      if (broken && (principal.kind === 'admin' || broken.public || broken.entry.tenant === principal.tenant.name)) {
        throw adapterUnavailable(model, unavailableReason(broken.entry));
      }
      throw modelNotFound(model);
    }
    // `servedAs`: routers match vllm:lora_requests_info against the `model` field of requests, so running adapters
    // are reported by the id this request used (pinned to a version or not), not by the store's versioned id.
    return { id: model, adapter: record, ref: { ...engineRef(record), servedAs: model } };
  }

  private lookup(principal: Principal, tenant: string, adapter: string, version?: string) {
    const record = this.store.resolve(tenant, adapter, version);
    return record && this.canUse(principal, record) ? record : null;
  }
}

/** What a tenant may be told about a stored version that cannot be served: no paths, no checksums. */
export function unavailableReason(entry: Pick<InvalidAdapterVersion, 'id' | 'alteredFile'>): string {
  return entry.alteredFile !== undefined
    ? `the stored file ${entry.alteredFile} of adapter version ${entry.id} changed after it was published; publish the adapter again`
    : `adapter version ${entry.id} is in the store but cannot be served; publish it again (an admin can see why in GET /admin/adapters)`;
}

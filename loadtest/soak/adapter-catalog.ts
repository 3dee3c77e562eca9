/**
 * The adapters the soak publishes and deletes through the gateway's API while it runs, and the truth the outputs
 * are checked against: every publication with its weights, and when it began and stopped being servable. A
 * request learns no version from the gateway, so which publications it may have resolved to follows from that
 * timeline and from when the request was sent and answered.
 */
import { loraAdapterFiles, randomLoraAdapter, type LoraAdapterSpec } from '../../src/adapters/lora-writer.ts';
import type { LlamaConfig, LoraTargetModule } from '../../src/model/types.ts';
import { sendRequest, uploadFiles } from './http-client.ts';

export interface Publication {
  /** Unique over the run; a version name is not (a deleted adapter published again starts at version 1). */
  serial: number;
  adapter: string;
  version: string;
  spec: LoraAdapterSpec;
  /** performance.now() when the upload was sent and when it was answered. */
  publishFrom: number;
  publishBy: number;
  /** When its deletion was sent and answered; null while it is servable. */
  deleteFrom: number | null;
  deleteBy: number | null;
}

export interface CatalogOptions {
  url: string;
  tenant: string;
  key: string;
  base: LlamaConfig;
  seed: number;
  timeoutMs: number;
}

const TARGET_MODULES: LoraTargetModule[] = ['q_proj', 'v_proj', 'down_proj'];
/** Large enough for each version to change greedy outputs, so a row served the wrong weights shows. */
const WEIGHT_STD = 0.2;

export class AdapterCatalog {
  readonly publications: Publication[] = [];
  readonly #live = new Map<string, Publication[]>();
  /** Mutations the gateway refused, for the report. */
  readonly refusals: string[] = [];
  counts = { published: 0, versionsDeleted: 0, adaptersDeleted: 0 };

  constructor(private readonly options: CatalogOptions) {}

  /** Servable versions of an adapter, oldest first. */
  live(adapter: string): readonly Publication[] {
    return this.#live.get(adapter) ?? [];
  }

  async publish(adapter: string): Promise<void> {
    const serial = this.publications.length + 1;
    const rank = 2 + (serial % 3);
    const spec = randomLoraAdapter(this.options.base, { rank, targetModules: TARGET_MODULES, seed: this.options.seed * 1_000_003 + serial, std: WEIGHT_STD });
    const publishFrom = performance.now();
    const { url, tenant, key, timeoutMs } = this.options;
    const answer = await uploadFiles(url, `/v1/adapters/${tenant}/${adapter}`, key, loraAdapterFiles(spec), timeoutMs);
    if (answer.status !== 201) return void this.refusals.push(`publishing ${adapter} answered ${answer.status}: ${answer.body.slice(0, 300)}`);
    const { version } = JSON.parse(answer.body) as { version: string };
    const publication: Publication = { serial, adapter, version, spec, publishFrom, publishBy: performance.now(), deleteFrom: null, deleteBy: null };
    this.publications.push(publication);
    this.#live.set(adapter, [...this.live(adapter), publication]);
    this.counts.published++;
  }

  async deleteVersion(publication: Publication): Promise<void> {
    const { url, tenant, key, timeoutMs } = this.options;
    const deleteFrom = performance.now();
    const path = `/v1/adapters/${tenant}/${publication.adapter}/versions/${publication.version}`;
    const answer = await sendRequest(url, 'DELETE', path, key, timeoutMs);
    if (answer.status !== 200) return void this.refusals.push(`deleting ${publication.adapter}@${publication.version} answered ${answer.status}: ${answer.body.slice(0, 300)}`);
    Object.assign(publication, { deleteFrom, deleteBy: performance.now() });
    this.#live.set(publication.adapter, this.live(publication.adapter).filter((p) => p !== publication));
    this.counts.versionsDeleted++;
  }

  async deleteAdapter(adapter: string): Promise<void> {
    const { url, tenant, key, timeoutMs } = this.options;
    const deleteFrom = performance.now();
    const answer = await sendRequest(url, 'DELETE', `/v1/adapters/${tenant}/${adapter}`, key, timeoutMs);
    if (answer.status !== 200) return void this.refusals.push(`deleting ${adapter} answered ${answer.status}: ${answer.body.slice(0, 300)}`);
    const deleteBy = performance.now();
    for (const publication of this.live(adapter)) Object.assign(publication, { deleteFrom, deleteBy });
    this.#live.delete(adapter);
    this.counts.adaptersDeleted++;
  }

  /**
   * The publications a request for `adapter` (pinned to `version`, or the latest) may have been served by, given
   * that it was resolved between `sentAt` and `answeredAt`: those that may have been servable then and, for the
   * latest, that no newer publication was certainly servable throughout.
   */
  candidates(adapter: string, version: string | null, sentAt: number, answeredAt: number): Publication[] {
    const mine = this.publications.filter((p) => p.adapter === adapter);
    const maybeLive = (p: Publication) => p.publishFrom <= answeredAt && (p.deleteBy === null || p.deleteBy >= sentAt);
    const surelyLive = (p: Publication) => p.publishBy <= sentAt && (p.deleteFrom === null || p.deleteFrom > answeredAt);
    if (version !== null) return mine.filter((p) => p.version === version && maybeLive(p));
    return mine.filter((p) => maybeLive(p) && !mine.some((newer) => newer.serial > p.serial && surelyLive(newer)));
  }
}

/**
 * The training directory (TRAINING_DIR), shared by the gateway and the trainer sidecar like the adapter store:
 *
 *   <tenant>/files/<file-id>/{file.json, content.jsonl}      uploaded files (immutable once renamed into place)
 *   <tenant>/jobs/<job-id>/job.json                          the job, OpenAI's object plus the settings it runs with
 *                         /events.jsonl                      appended by the sidecar, one event per line
 *                         /checkpoints.json                  published checkpoints
 *                         /cancel                            present once a cancel was requested (by the gateway)
 *                         /claim.json                        the sidecar running or validating the job
 *                         /state.safetensors                 the trainer's latest checkpoint, for resuming
 *                         /publish.json                      the files a finished job is publishing (see PublishIntent)
 *   .staging/                                                new files and jobs being written
 *
 * Every entry appears in one rename (a directory from .staging, or a file through writeFileAtomically), so a crash
 * leaves the old state or the new one. Ids are random and checked against a strict pattern before a path is built.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdir, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { checkTenantName, isValidName } from '../../registry/adapter-names.ts';
import { syncDirectory, writeDurably } from '../../storage/durable-files.ts';

/** In ASCII order, so ids compare like the times they begin with. */
const ID_ALPHABET = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
const ID_PATTERN = /^(file|ftjob|ftevent|ftckpt)-[A-Za-z0-9]{24}$/;
const TIME_DIGITS = 8;

export type IdPrefix = 'file' | 'ftjob' | 'ftevent' | 'ftckpt';

/**
 * OpenAI-style ids: a prefix and 24 letters and digits, the first 8 the creation time in milliseconds (base 62),
 * so that items created in the same second still list in creation order; the other 16 random.
 */
export function newId(prefix: IdPrefix): string {
  let time = '';
  for (let rest = Date.now(), i = 0; i < TIME_DIGITS; i++, rest = Math.floor(rest / 62)) time = ID_ALPHABET[rest % 62] + time;
  const random = Array.from(randomBytes(16), (byte) => ID_ALPHABET[byte % ID_ALPHABET.length]).join('');
  return `${prefix}-${time}${random}`;
}

/** Newest first: ids begin with their creation time, so they order items created within the same second. */
export function newestFirst(a: { id: string }, b: { id: string }): number {
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

export function isId(value: string, prefix: IdPrefix): boolean {
  return ID_PATTERN.test(value) && value.startsWith(`${prefix}-`);
}

export class TrainingDir {
  readonly staging: string;

  constructor(readonly root: string) {
    this.staging = join(root, '.staging');
  }

  /**
   * Tenants that have stored anything. Other entries are skipped: a volume's root holds `lost+found`, and `.staging`
   * is this directory's own.
   */
  async tenants(): Promise<string[]> {
    const entries = await readdir(this.root, { withFileTypes: true }).catch(() => []);
    return entries.filter((entry) => entry.isDirectory() && isValidName(entry.name)).map((entry) => entry.name);
  }

  tenantDir(tenant: string, kind: 'files' | 'jobs'): string {
    checkTenantName(tenant);
    return join(this.root, tenant, kind);
  }

  fileDir(tenant: string, id: string): string {
    if (!isId(id, 'file')) throw new Error(`not a file id: ${id}`);
    return join(this.tenantDir(tenant, 'files'), id);
  }

  jobDir(tenant: string, id: string): string {
    if (!isId(id, 'ftjob')) throw new Error(`not a job id: ${id}`);
    return join(this.tenantDir(tenant, 'jobs'), id);
  }

  /**
   * Creates `target` (which must not exist) with `files` in one rename from the staging directory, so readers
   * never see it partly written.
   */
  async createDirectory(target: string, files: Record<string, Uint8Array | string>): Promise<void> {
    await mkdir(this.staging, { recursive: true });
    const staging = join(this.staging, randomUUID());
    await mkdir(staging);
    try {
      for (const [name, data] of Object.entries(files)) await writeDurably(join(staging, name), data);
      await syncDirectory(staging);
      const parent = join(target, '..');
      await mkdir(parent, { recursive: true });
      await rename(staging, target);
      await syncDirectory(parent);
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  /** Removes a directory in one step (renamed away first), so nobody sees it half deleted. */
  async removeDirectory(target: string): Promise<void> {
    await mkdir(this.staging, { recursive: true });
    const away = join(this.staging, `removed-${randomUUID()}`);
    await rename(target, away);
    await syncDirectory(join(target, '..'));
    await rm(away, { recursive: true, force: true });
  }
}

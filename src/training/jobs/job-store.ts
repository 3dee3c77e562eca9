/**
 * Fine-tuning jobs on disk (layout in training-dir.ts). The gateway creates a job and may request its cancellation;
 * from then on only the sidecar holding the job's claim writes it. `job.json` is replaced atomically, events are
 * appended one JSON line each (a torn last line after a crash is skipped on reading).
 */
import { appendFile, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { LoraTargetModule } from '../../model/types.ts';
import type { FileDigest } from '../../registry/adapter-store.ts';
import { writeFileAtomically } from '../../storage/durable-files.ts';
import { isJsonObject, readJsonIfPresent } from '../../storage/json-files.ts';
import { newestFirst, newId, type TrainingDir } from './training-dir.ts';

export const JOB_STATUSES = ['validating_files', 'queued', 'running', 'succeeded', 'failed', 'cancelled'] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];
export const FINISHED_STATUSES: ReadonlySet<JobStatus> = new Set(['succeeded', 'failed', 'cancelled']);

export interface JobHyperparameters {
  n_epochs: number;
  batch_size: number;
  learning_rate_multiplier: number;
}

/** OpenAI's fine-tuning job object, with the LoRA settings as extension fields. */
export interface FineTuningJob {
  object: 'fine_tuning.job';
  id: string;
  created_at: number;
  model: string;
  training_file: string;
  validation_file: string | null;
  status: JobStatus;
  fine_tuned_model: string | null;
  finished_at: number | null;
  error: { code: string; message: string; param: string | null } | null;
  hyperparameters: JobHyperparameters;
  method: { type: 'supervised'; supervised: { hyperparameters: JobHyperparameters } };
  trained_tokens: number | null;
  result_files: string[];
  seed: number;
  /** The owning tenant. */
  organization_id: string;
  estimated_finish: number | null;
  integrations: [];
  metadata: Record<string, string> | null;
  user_provided_suffix: string | null;
  lora_r: number;
  lora_alpha: number;
  lora_dropout: number;
  lora_trainable_modules: LoraTargetModule[];
  max_length: number;
  /** The adapter the job publishes into: `<tenant>/<adapter>` in the adapter store. */
  adapter: string;
}

export interface JobEvent {
  object: 'fine_tuning.job.event';
  id: string;
  created_at: number;
  level: 'info' | 'warn' | 'error';
  message: string;
  type: 'message' | 'metrics';
  data: Record<string, unknown> | null;
}

export interface JobCheckpoint {
  object: 'fine_tuning.job.checkpoint';
  id: string;
  created_at: number;
  fine_tuned_model_checkpoint: string;
  fine_tuning_job_id: string;
  step_number: number;
  metrics: Record<string, number>;
}

/**
 * Written before a finished job's adapter is published: which adapter and exactly which files. A sidecar that
 * restarts a job still `running` with this record finds the version those files were published as, if the
 * publish got that far, instead of publishing them a second time.
 */
export interface PublishIntent {
  adapter: string;
  files: Record<string, FileDigest>;
}

export interface JobClaim {
  trainer: string;
  heartbeat_at: number;
}

const JOB_FILE = 'job.json';
const EVENTS_FILE = 'events.jsonl';
const CHECKPOINTS_FILE = 'checkpoints.json';
const CANCEL_FILE = 'cancel';
const CLAIM_FILE = 'claim.json';
export const STATE_FILE = 'state.safetensors';
export const PUBLISH_FILE = 'publish.json';

function newEvent(event: Pick<JobEvent, 'message'> & Partial<JobEvent>): JobEvent {
  return {
    object: 'fine_tuning.job.event',
    id: newId('ftevent'),
    created_at: Math.floor(Date.now() / 1000),
    level: 'info',
    type: 'message',
    data: null,
    ...event,
  };
}

export class JobStore {
  constructor(readonly dir: TrainingDir) {}

  jobPath(job: Pick<FineTuningJob, 'organization_id' | 'id'>, file: string): string {
    return join(this.dir.jobDir(job.organization_id, job.id), file);
  }

  cancelPath(job: Pick<FineTuningJob, 'organization_id' | 'id'>): string {
    return this.jobPath(job, CANCEL_FILE);
  }

  async create(job: FineTuningJob): Promise<void> {
    const created = newEvent({ message: `Created fine-tuning job: ${job.id}` });
    await this.dir.createDirectory(this.dir.jobDir(job.organization_id, job.id), {
      [JOB_FILE]: JSON.stringify(job) + '\n',
      [EVENTS_FILE]: JSON.stringify(created) + '\n',
    });
  }

  async get(tenant: string, id: string): Promise<FineTuningJob | null> {
    return ((await readJsonIfPresent(join(this.dir.jobDir(tenant, id), JOB_FILE))) as FineTuningJob | undefined) ?? null;
  }

  async write(job: FineTuningJob): Promise<void> {
    await writeFileAtomically(this.jobPath(job, JOB_FILE), JSON.stringify(job) + '\n');
  }

  /** One tenant's jobs, or every tenant's, newest first. */
  async list(tenant?: string): Promise<FineTuningJob[]> {
    const tenants = tenant === undefined ? await this.dir.tenants() : [tenant];
    const jobs: FineTuningJob[] = [];
    for (const name of tenants) {
      const ids = await readdir(this.dir.tenantDir(name, 'jobs')).catch(() => [] as string[]);
      for (const id of ids) {
        const job = await this.get(name, id).catch(() => null);
        if (job) jobs.push(job);
      }
    }
    return jobs.sort(newestFirst);
  }

  /** A durable request the sidecar acts on between optimizer steps (or at once for a job that is not running). */
  async requestCancel(job: FineTuningJob): Promise<void> {
    await writeFileAtomically(this.cancelPath(job), `${new Date().toISOString()}\n`);
  }

  async cancelRequested(job: FineTuningJob): Promise<boolean> {
    return stat(this.cancelPath(job)).then(
      () => true,
      () => false,
    );
  }

  async appendEvent(job: FineTuningJob, event: Pick<JobEvent, 'message'> & Partial<JobEvent>): Promise<JobEvent> {
    const full = newEvent(event);
    await appendFile(this.jobPath(job, EVENTS_FILE), JSON.stringify(full) + '\n');
    return full;
  }

  /** Events, oldest first. */
  async events(job: FineTuningJob): Promise<JobEvent[]> {
    const text = await readFile(this.jobPath(job, EVENTS_FILE), 'utf8').catch(() => '');
    const events: JobEvent[] = [];
    for (const line of text.split('\n')) {
      try {
        const event: unknown = JSON.parse(line);
        if (isJsonObject(event)) events.push(event as unknown as JobEvent);
      } catch {
        // An empty line, or the torn last line of a crashed writer.
      }
    }
    return events;
  }

  /** Checkpoints, oldest first. */
  async checkpoints(job: FineTuningJob): Promise<JobCheckpoint[]> {
    return ((await readJsonIfPresent(this.jobPath(job, CHECKPOINTS_FILE))) as JobCheckpoint[] | undefined) ?? [];
  }

  async writeCheckpoints(job: FineTuningJob, checkpoints: JobCheckpoint[]): Promise<void> {
    await writeFileAtomically(this.jobPath(job, CHECKPOINTS_FILE), JSON.stringify(checkpoints) + '\n');
  }

  async recordPublishIntent(job: FineTuningJob, intent: PublishIntent): Promise<void> {
    await writeFileAtomically(this.jobPath(job, PUBLISH_FILE), JSON.stringify(intent) + '\n');
  }

  async publishIntent(job: FineTuningJob): Promise<PublishIntent | undefined> {
    return (await readJsonIfPresent(this.jobPath(job, PUBLISH_FILE))) as PublishIntent | undefined;
  }

  /**
   * Takes the job for `trainer`. A claim held by the same trainer (itself before a restart) or not renewed for
   * `staleAfterMs` is taken over; renaming the stale claim away first means only one taker wins it.
   */
  async claim(job: FineTuningJob, trainer: string, staleAfterMs: number): Promise<boolean> {
    const path = this.jobPath(job, CLAIM_FILE);
    const claim: JobClaim = { trainer, heartbeat_at: Date.now() };
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const handle = await open(path, 'wx');
        try {
          await handle.writeFile(JSON.stringify(claim));
          await handle.sync();
        } finally {
          await handle.close();
        }
        return true;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      }
      const held = (await readJsonIfPresent(path).catch(() => undefined)) as JobClaim | undefined;
      if (held && held.trainer !== trainer && Date.now() - held.heartbeat_at < staleAfterMs) return false;
      const stale = `${path}.${newId('ftevent')}`;
      try {
        await rename(path, stale);
      } catch {
        return false;
      }
      await rm(stale, { force: true });
    }
    return false;
  }

  async heartbeat(job: FineTuningJob, trainer: string): Promise<void> {
    await writeFileAtomically(this.jobPath(job, CLAIM_FILE), JSON.stringify({ trainer, heartbeat_at: Date.now() } satisfies JobClaim));
  }

  async release(job: FineTuningJob): Promise<void> {
    await rm(this.jobPath(job, CLAIM_FILE), { force: true });
  }
}

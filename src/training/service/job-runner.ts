/**
 * One job's life in the sidecar once it holds the job's claim: validate its files; train it with trainLora, which
 * runs onnxruntime on a worker thread of its own so this thread stays free (resuming from the last checkpoint after
 * a restart); save and publish checkpoints; publish the finished adapter through the adapter store's staging +
 * rename; and record every step in the job's directory.
 *
 * Order matters for crashes: a checkpoint's trainer state is on disk before training goes on, and the adapter is
 * published before the job says `succeeded`, so a job that reports an adapter always has it. The files about to be
 * published are recorded first, so a sidecar killed between the publish and `succeeded` finds the version on
 * restart instead of publishing the adapter twice.
 */
import { existsSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { SpanStatusCode, type Span, type Tracer } from '@opentelemetry/api';
import { loraAdapterFiles, type LoraAdapterSpec } from '../../adapters/lora-writer.ts';
import type { Logger } from '../../gateway/logger.ts';
import type { AdapterSummary } from '../../gateway/model-resolver.ts';
import type { AdapterStore } from '../../registry/adapter-store.ts';
import { digestBytes } from '../../registry/store-files.ts';
import { writeFileAtomically } from '../../storage/durable-files.ts';
import type { ChatFormatter } from '../../tokenizer/chat-template.ts';
import type { Tokenizer } from '../../tokenizer/tokenizer.ts';
import type { TrainingFileStore } from '../jobs/file-store.ts';
import { PUBLISH_FILE, STATE_FILE, type FineTuningJob, type JobCheckpoint, type JobStatus, type JobStore } from '../jobs/job-store.ts';
import { newId } from '../jobs/training-dir.ts';
import type { BaseModel } from '../../model/types.ts';
import {
  DEFAULT_LORA_TRAINING_CONFIG,
  deserializeCheckpoint,
  serializeCheckpoint,
  trainLora,
  type LoraTrainingConfig,
  type TrainerCheckpoint,
  type TrainingProgress,
} from '../lora-trainer.ts';
import { JobFailure, loadJobDataset } from './job-dataset.ts';
import type { TrainerMetrics } from './trainer-metrics.ts';
import type { TrainerSettings } from './trainer-settings.ts';

export interface RunnerContext {
  jobs: JobStore;
  files: TrainingFileStore;
  store: AdapterStore<AdapterSummary>;
  tokenizer: Tokenizer;
  formatChat: ChatFormatter;
  settings: TrainerSettings;
  metrics: TrainerMetrics;
  logger: Logger;
  tracer: Tracer;
  baseName: string;
  /** The frozen base model every job trains on (trainLora never changes it). */
  model: BaseModel;
  /** Called after each optimizer step, before the cancel check (tests use it to act at an exact step). */
  onJobProgress?: (job: FineTuningJob, progress: TrainingProgress) => void;
  /**
   * Tells the gateway a job's adapter was published and resolves once it has loaded it (or gave up), before the
   * job says `succeeded`: the first chat on the new model then does not wait for the disk. Absent: nobody to tell.
   */
  announcePublished?: (adapter: PublishedAdapter) => Promise<void>;
}

export interface PublishedAdapter {
  tenant: string;
  adapter: string;
  version: string;
}

/** Checkpoint adapters kept published per job, as OpenAI keeps the last three. */
const KEPT_CHECKPOINTS = 3;
/** How often a running job's job.json and claim are rewritten between checkpoints. */
const STATUS_WRITE_INTERVAL_MS = 5000;

export function trainingConfig(job: FineTuningJob, threads: number): LoraTrainingConfig {
  return {
    ...DEFAULT_LORA_TRAINING_CONFIG,
    rank: job.lora_r,
    alpha: job.lora_alpha,
    dropout: job.lora_dropout,
    targetModules: job.lora_trainable_modules,
    epochs: job.hyperparameters.n_epochs,
    batchSize: job.hyperparameters.batch_size,
    learningRate: DEFAULT_LORA_TRAINING_CONFIG.learningRate * job.hyperparameters.learning_rate_multiplier,
    seed: job.seed,
    maxLength: job.max_length,
    threads,
  };
}

/** Ends a job: final status, error, event, metrics; the claim and the resume state go. */
export async function finishJob(
  context: RunnerContext,
  job: FineTuningJob,
  status: Extract<JobStatus, 'succeeded' | 'failed' | 'cancelled'>,
  message: string,
  error: FineTuningJob['error'] = null,
  trainingSeconds?: number,
): Promise<void> {
  job.status = status;
  job.error = error;
  job.finished_at = Math.floor(Date.now() / 1000);
  job.estimated_finish = null;
  // Recorded before the status is written, so whoever sees the job finished (the API reads the file) also finds
  // its duration among the metrics.
  if (trainingSeconds !== undefined) context.metrics.recordFinished(status, trainingSeconds);
  await context.jobs.write(job);
  await context.jobs.appendEvent(job, { message, level: status === 'failed' ? 'error' : 'info' });
  await rm(context.jobs.jobPath(job, STATE_FILE), { force: true });
  await rm(context.jobs.jobPath(job, PUBLISH_FILE), { force: true });
  await context.jobs.release(job);
  context.logger.info('fine-tuning job finished', { job: job.id, tenant: job.organization_id, status, code: error?.code });
}

/** Validates a job's files: `queued` when they are usable (true), `failed` naming the line when not (false). */
export async function validateJob(context: RunnerContext, job: FineTuningJob): Promise<boolean> {
  try {
    const { train, validation } = await loadJobDataset(job, context.files, context.tokenizer, context.formatChat);
    job.status = 'queued';
    await context.jobs.write(job);
    const truncated = train.truncated + (validation?.truncated ?? 0);
    await context.jobs.appendEvent(job, {
      message: `Files validated: ${train.sequences.length} training sequences of ${train.targetTokens} target tokens` +
        (truncated > 0 ? `, ${truncated} cut to max_length ${job.max_length}` : '') + '; moving job to queued state',
    });
    await context.jobs.release(job);
    return true;
  } catch (error) {
    if (!(error instanceof JobFailure)) throw error;
    await finishJob(context, job, 'failed', `Validation failed: ${error.message}`, { code: error.code, message: error.message, param: error.param });
    return false;
  }
}

/**
 * Trains a claimed job to its end. `stopRequested` pauses it after the current optimizer step (shutdown): it then
 * stays `running` under this trainer's claim and resumes from its last checkpoint on restart.
 */
export async function runJob(context: RunnerContext, job: FineTuningJob, stopRequested: () => boolean): Promise<void> {
  const { jobs, metrics, logger, settings } = context;
  const started = performance.now();
  const seconds = () => (performance.now() - started) / 1000;
  const span = context.tracer.startSpan('fine_tuning.job', {
    attributes: {
      'fine_tuning.job.id': job.id,
      'fine_tuning.tenant': job.organization_id,
      'gen_ai.request.model': job.model,
      'fine_tuning.lora.r': job.lora_r,
      'fine_tuning.epochs': job.hyperparameters.n_epochs,
      'fine_tuning.batch_size': job.hyperparameters.batch_size,
      'fine_tuning.resumed': job.status === 'running',
    },
  });
  // Events and status writes happen in order, off the worker's message handler.
  let writes: Promise<unknown> = Promise.resolve();
  const later = (work: () => Promise<unknown>) => (writes = writes.then(work));
  let lastStatusWrite = Date.now();
  let countedTokens = job.trained_tokens ?? 0;
  const checkpoints = await jobs.checkpoints(job);
  let lastProgress: TrainingProgress | undefined;

  try {
    const published = job.status === 'running' ? await alreadyPublished(context, job) : null;
    if (published !== null) {
      await jobs.appendEvent(job, { message: `The trainer restarted after publishing the adapter as version ${published}` });
      await succeed(context, job, published, span, seconds());
      return;
    }
    const dataset = await loadJobDataset(job, context.files, context.tokenizer, context.formatChat);
    let resumeFrom: TrainerCheckpoint | undefined;
    if (job.status === 'running') {
      resumeFrom = await readResumeState(jobs.jobPath(job, STATE_FILE));
      await jobs.appendEvent(job, {
        message: resumeFrom
          ? `The trainer restarted: resuming from the checkpoint at step ${resumeFrom.step}`
          : 'The trainer restarted before the first checkpoint: training again from the start',
      });
    } else {
      job.status = 'running';
      await jobs.write(job);
      await jobs.appendEvent(job, { message: 'Fine-tuning job started' });
    }
    logger.info('fine-tuning job running', { job: job.id, tenant: job.organization_id, resumed: resumeFrom !== undefined });
    const adapterFiles = (adapter: LoraAdapterSpec) => loraAdapterFiles({ ...adapter, baseModel: context.baseName });
    const cancelPath = jobs.cancelPath(job);

    const onProgress = (progress: TrainingProgress) => {
      context.onJobProgress?.(job, progress);
      lastProgress = progress;
      metrics.recordProgress(progress, Math.max(0, progress.trainedTokens - countedTokens));
      countedTokens = Math.max(countedTokens, progress.trainedTokens);
      job.trained_tokens = progress.trainedTokens;
      const perStep = progress.step > 0 ? progress.elapsedSeconds / progress.step : 0;
      job.estimated_finish = Math.floor(Date.now() / 1000 + perStep * (progress.totalSteps - progress.step));
      later(() =>
        jobs.appendEvent(job, {
          type: 'metrics',
          message: `Step ${progress.step}/${progress.totalSteps}: training loss=${progress.trainLoss.toFixed(4)}` +
            (progress.validLoss === undefined ? '' : `, validation loss=${progress.validLoss.toFixed(4)}`),
          data: {
            step: progress.step,
            total_steps: progress.totalSteps,
            epoch: progress.epoch,
            train_loss: progress.trainLoss,
            valid_loss: progress.validLoss ?? null,
            tokens_per_second: progress.tokensPerSecond,
            trained_tokens: progress.trainedTokens,
          },
        }),
      );
      if (Date.now() - lastStatusWrite >= STATUS_WRITE_INTERVAL_MS) {
        lastStatusWrite = Date.now();
        later(async () => {
          await jobs.write(job);
          await jobs.heartbeat(job, settings.trainerId);
        });
      }
    };

    const onCheckpoint = async (checkpoint: TrainerCheckpoint, adapter: LoraAdapterSpec) => {
      // A cancelled job never resumes, so the checkpoint its stop asks for would only be an orphan in the store.
      if (existsSync(cancelPath)) return;
      const step = checkpoint.step;
      await writes;
      await writeFileAtomically(jobs.jobPath(job, STATE_FILE), serializeCheckpoint(checkpoint));
      const checkpointAdapter = `${job.adapter}-checkpoints`;
      const record = await context.store.publish(job.organization_id, checkpointAdapter, adapterFiles(adapter), {
        version: `${job.id.slice('ftjob-'.length, 'ftjob-'.length + 8)}-step-${step}`,
      });
      checkpoints.push({
        object: 'fine_tuning.job.checkpoint',
        id: newId('ftckpt'),
        created_at: Math.floor(Date.now() / 1000),
        fine_tuned_model_checkpoint: `${context.baseName}+${job.organization_id}/${checkpointAdapter}@${record.version}`,
        fine_tuning_job_id: job.id,
        step_number: step,
        metrics: checkpointMetrics(lastProgress),
      } satisfies JobCheckpoint);
      for (const old of checkpoints.splice(0, Math.max(0, checkpoints.length - KEPT_CHECKPOINTS))) {
        const version = old.fine_tuned_model_checkpoint.slice(old.fine_tuned_model_checkpoint.lastIndexOf('@') + 1);
        await context.store.remove(job.organization_id, checkpointAdapter, version).catch(() => undefined);
      }
      await jobs.writeCheckpoints(job, checkpoints);
      await jobs.write(job);
      await jobs.heartbeat(job, settings.trainerId);
      await jobs.appendEvent(job, { message: `Checkpoint created at step ${step}` });
    };

    const outcome = await trainLora(
      context.model,
      { train: dataset.train.sequences, validation: dataset.validation?.sequences },
      trainingConfig(job, settings.threads),
      {
        onProgress,
        // A stat per optimizer step: a cancel request stops the job within one step.
        shouldStop: () => stopRequested() || existsSync(cancelPath),
        checkpointEvery: settings.checkpointEvery,
        onCheckpoint,
        resumeFrom,
      },
    );
    await writes;
    job.trained_tokens = outcome.progress.trainedTokens;
    if (outcome.status === 'completed') {
      await succeed(context, job, await publishOnce(context, job, adapterFiles(outcome.adapter)), span, seconds());
    } else if (await jobs.cancelRequested(job)) {
      await finishJob(context, job, 'cancelled', `Fine-tuning job cancelled at step ${outcome.progress.step}`, null, seconds());
    } else {
      // Stopped for a shutdown: the job stays `running` under this trainer's claim and resumes on restart.
      await jobs.write(job);
      await jobs.appendEvent(job, { message: `The trainer is shutting down: paused at step ${outcome.progress.step}` });
    }
    span.setAttribute('fine_tuning.status', job.status);
  } catch (error) {
    await writes.catch(() => undefined);
    const failure =
      error instanceof JobFailure ? error : new JobFailure('training_failed', `Training failed: ${(error as Error).message}`);
    if (!(error instanceof JobFailure)) logger.error('fine-tuning job failed unexpectedly', { job: job.id, error: (error as Error).stack });
    span.setStatus({ code: SpanStatusCode.ERROR, message: failure.code });
    span.setAttribute('fine_tuning.status', 'failed');
    await finishJob(context, job, 'failed', failure.message, { code: failure.code, message: failure.message, param: failure.param }, seconds());
  } finally {
    metrics.recordIdle();
    span.end();
  }
}

/** Publishes a finished job's adapter after recording which files it is about to publish (see alreadyPublished). */
async function publishOnce(context: RunnerContext, job: FineTuningJob, files: Map<string, Uint8Array>): Promise<string> {
  const digests = Object.fromEntries([...files].map(([name, data]) => [name, digestBytes(data)]));
  await context.jobs.recordPublishIntent(job, { adapter: job.adapter, files: digests });
  return (await context.store.publish(job.organization_id, job.adapter, files)).version;
}

/** The version an earlier run of this job published before it was killed, or null when it published nothing. */
async function alreadyPublished(context: RunnerContext, job: FineTuningJob): Promise<string | null> {
  const intent = await context.jobs.publishIntent(job);
  return intent ? context.store.findPublished(job.organization_id, intent.adapter, intent.files) : null;
}

/** The gateway loads the published adapter, then the job says `succeeded` with it as `fine_tuned_model`. */
async function succeed(context: RunnerContext, job: FineTuningJob, version: string, span: Span, trainingSeconds: number): Promise<void> {
  job.fine_tuned_model = `${context.baseName}+${job.organization_id}/${job.adapter}@${version}`;
  span.setAttribute('fine_tuning.fine_tuned_model', job.fine_tuned_model);
  span.setAttribute('fine_tuning.status', 'succeeded');
  await context.announcePublished?.({ tenant: job.organization_id, adapter: job.adapter, version }).catch((error: Error) =>
    context.logger.warn('the gateway could not load the published adapter ahead of its first request', { job: job.id, error: error.message }),
  );
  await finishJob(context, job, 'succeeded', 'The job has successfully completed', null, trainingSeconds);
}

async function readResumeState(path: string): Promise<TrainerCheckpoint | undefined> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new JobFailure('checkpoint_unreadable', `The job's last checkpoint cannot be read (${(error as Error).message}), so it cannot resume.`);
  }
  try {
    return deserializeCheckpoint(bytes);
  } catch (error) {
    throw new JobFailure('checkpoint_unreadable', `The job's last checkpoint is damaged (${(error as Error).message}), so it cannot resume.`);
  }
}

function checkpointMetrics(progress: TrainingProgress | undefined): Record<string, number> {
  if (!progress) return {};
  const metrics: Record<string, number> = { step: progress.step, train_loss: progress.trainLoss };
  if (progress.validLoss !== undefined) metrics.valid_loss = progress.validLoss;
  return metrics;
}

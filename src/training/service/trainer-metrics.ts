/**
 * The trainer sidecar's Prometheus series (names fixed for the dashboards): jobs on disk by status, the current
 * job's throughput, step, total steps and losses, trained tokens, and finished jobs' durations by status. No label
 * carries a tenant, job id or anything from the data.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { JOB_STATUSES, type JobStatus } from '../jobs/job-store.ts';
import type { TrainingProgress } from '../lora-trainer.ts';

export interface TrainerMetrics {
  readonly registry: Registry;
  setJobCounts(statuses: JobStatus[]): void;
  recordProgress(progress: TrainingProgress, newTokens: number): void;
  /** The running job ended (or the sidecar went idle): throughput and step gauges return to 0. */
  recordIdle(): void;
  recordFinished(status: JobStatus, seconds: number): void;
}

export function createTrainerMetrics(): TrainerMetrics {
  const registry = new Registry();
  const registers = [registry];
  const jobs = new Gauge({ name: 'trainer_jobs', help: 'Fine-tuning jobs on disk, by status.', labelNames: ['status'], registers });
  const tokensPerSecond = new Gauge({ name: 'trainer_tokens_per_second', help: "The running job's training throughput (0 when idle).", registers });
  const step = new Gauge({ name: 'trainer_step', help: "The running job's latest optimizer step.", registers });
  const totalSteps = new Gauge({ name: 'trainer_total_steps', help: "The running job's total optimizer steps.", registers });
  const loss = new Gauge({ name: 'trainer_loss', help: 'Latest training loss.', registers });
  const validLoss = new Gauge({ name: 'trainer_valid_loss', help: 'Latest validation loss.', registers });
  const trainedTokens = new Counter({ name: 'trainer_trained_tokens_total', help: 'Tokens trained on, all jobs together.', registers });
  const duration = new Histogram({
    name: 'trainer_job_duration_seconds',
    help: 'Duration of finished jobs, from start of training to the end, by final status.',
    labelNames: ['status'],
    buckets: [10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400],
    registers,
  });
  for (const status of JOB_STATUSES) jobs.set({ status }, 0);
  // Zero from the first scrape, so the first finished job already shows as an increase (rate, histogram_quantile).
  for (const status of ['succeeded', 'failed', 'cancelled'] as const) duration.zero({ status });
  return {
    registry,
    setJobCounts(statuses) {
      for (const status of JOB_STATUSES) jobs.set({ status }, statuses.filter((s) => s === status).length);
    },
    recordProgress(progress, newTokens) {
      tokensPerSecond.set(progress.tokensPerSecond);
      step.set(progress.step);
      totalSteps.set(progress.totalSteps);
      loss.set(progress.trainLoss);
      if (progress.validLoss !== undefined) validLoss.set(progress.validLoss);
      if (newTokens > 0) trainedTokens.inc(newTokens);
    },
    recordIdle() {
      tokensPerSecond.set(0);
      step.set(0);
      totalSteps.set(0);
    },
    recordFinished(status, seconds) {
      duration.observe({ status }, seconds);
    },
  };
}

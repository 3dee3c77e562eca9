/**
 * The trainer sidecar: watches TRAINING_DIR for jobs the gateway recorded, validates them, runs up to
 * TRAINER_MAX_JOBS at once (one by default) on training threads, honours cancel requests, and serves its
 * Prometheus series on /metrics. Jobs are taken oldest first; a job this trainer was running when it died is
 * taken again at once and resumes from its last checkpoint.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { basename, extname } from 'node:path';
import { adapterValidator } from '../../gateway/adapter-validator.ts';
import { defaultModelPath, DEFAULT_MODEL } from '../../gateway/default-model.ts';
import { createLogger } from '../../gateway/logger.ts';
import type { AdapterSummary } from '../../gateway/model-resolver.ts';
import { createTracing, type TracingOptions } from '../../observability/tracing.ts';
import { AdapterStore } from '../../registry/adapter-store.ts';
import { loadBaseModel } from '../../model/load.ts';
import { loadChatFormatter, loadTokenizer } from '../../tokenizer/load.ts';
import { TrainingFileStore } from '../jobs/file-store.ts';
import { FINISHED_STATUSES, type FineTuningJob, JobStore } from '../jobs/job-store.ts';
import { TrainingDir } from '../jobs/training-dir.ts';
import { finishJob, runJob, validateJob, type RunnerContext } from './job-runner.ts';
import { announceToParentGateway } from './gateway-link.ts';
import { createTrainerMetrics } from './trainer-metrics.ts';
import type { TrainerSettings } from './trainer-settings.ts';

export interface TrainerServiceOptions {
  traceExporter?: TracingOptions['exporter'];
  writeLog?: (line: string) => void;
  onJobProgress?: RunnerContext['onJobProgress'];
  /** Who loads a finished job's adapter before it says `succeeded`; default: the parent gateway, when there is one. */
  announcePublished?: RunnerContext['announcePublished'];
}

export interface RunningTrainer {
  /** The /metrics and /health endpoint. */
  url: string;
  /** Looks at the training directory now instead of at the next poll (tests use it to avoid waiting). */
  poll(): Promise<void>;
  /** Stops taking jobs, pauses running ones after their current step (they resume on restart), and exits cleanly. */
  close(): Promise<void>;
}

export async function startTrainer(settings: TrainerSettings, options: TrainerServiceOptions = {}): Promise<RunningTrainer> {
  const logger = createLogger(settings.logLevel, options.writeLog);
  const modelPath = settings.modelPath ?? (await defaultModelPath((line) => logger.info(line)));
  const baseName =
    settings.modelName ?? (settings.modelPath ? basename(modelPath, extname(modelPath) === '.gguf' ? '.gguf' : '') : DEFAULT_MODEL.name);
  logger.info('trainer loading the base model', { path: modelPath, name: baseName, threads: settings.threads });
  const model = await loadBaseModel(modelPath);
  const dir = new TrainingDir(settings.trainingDir);
  const metrics = createTrainerMetrics();
  const tracing = createTracing({ serviceName: 'peft-trainer', otlpEndpoint: settings.otlpEndpoint, exporter: options.traceExporter });
  const context: RunnerContext = {
    jobs: new JobStore(dir),
    files: new TrainingFileStore(dir),
    // Publishing only: the store is never started, so it does not scan; it validates exactly as the gateway does.
    store: new AdapterStore<AdapterSummary>({ root: settings.adaptersDir, validate: adapterValidator(model.config, settings.maxLoraRank) }),
    tokenizer: await loadTokenizer(modelPath, model.config.eosTokenIds),
    formatChat: await loadChatFormatter(modelPath),
    settings,
    metrics,
    logger,
    tracer: tracing.tracer,
    baseName,
    model,
    onJobProgress: options.onJobProgress,
    announcePublished: options.announcePublished ?? announceToParentGateway(),
  };
  const scheduler = new JobScheduler(context);

  const server = await new Promise<Server>((resolve) => {
    const http = createServer((request, response) => {
      if (request.url === '/metrics') {
        void metrics.registry.metrics().then((text) => response.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text));
      } else if (request.url === '/health') {
        response.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}');
      } else {
        response.writeHead(404).end();
      }
    });
    http.listen(settings.port, settings.host, () => resolve(http));
  });
  const { port } = server.address() as AddressInfo;
  const url = `http://${settings.host.includes(':') ? `[${settings.host}]` : settings.host}:${port}`;
  logger.info('trainer ready', { url, model: baseName, trainer: settings.trainerId });
  scheduler.start();
  return {
    url,
    poll: () => scheduler.poll(),
    close: async () => {
      await scheduler.stop();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await tracing.shutdown();
    },
  };
}

class JobScheduler {
  readonly #running = new Map<string, Promise<void>>();
  #timer: NodeJS.Timeout | undefined;
  /** The look at the training directory in progress, and the one queued to start after it. */
  #polling: Promise<void> | undefined;
  #nextPoll: Promise<void> | undefined;
  #stopping = false;

  constructor(private readonly context: RunnerContext) {}

  start(): void {
    const loop = () => {
      this.#timer = setTimeout(() => void this.poll().finally(() => !this.#stopping && loop()), this.context.settings.pollMs);
    };
    void this.poll().finally(loop);
  }

  /**
   * Resolves after a look at the training directory that started after this call (so it saw every change made
   * before it, and the job counts it reports are current); concurrent callers share one.
   */
  poll(): Promise<void> {
    this.#nextPoll ??= (this.#polling ?? Promise.resolve()).then(() => {
      this.#nextPoll = undefined;
      this.#polling = this.#pollOnce()
        .catch((error: Error) => this.context.logger.error('trainer poll failed', { error: error.stack }))
        .finally(() => (this.#polling = undefined));
      return this.#polling;
    });
    return this.#nextPoll;
  }

  async #pollOnce(): Promise<void> {
    const { jobs, settings, metrics } = this.context;
    const all = await jobs.list();
    metrics.setJobCounts(all.map((job) => job.status));
    for (const job of all.reverse()) {
      if (this.#stopping) return;
      if (FINISHED_STATUSES.has(job.status) || this.#running.has(job.id)) continue;
      const cancel = await jobs.cancelRequested(job);
      const runnable = job.status === 'queued' || job.status === 'running';
      if (!cancel && runnable && this.#running.size >= settings.maxConcurrentJobs) continue;
      if (!(await jobs.claim(job, settings.trainerId, settings.claimStaleMs))) continue;
      // Re-read under the claim: the job may have moved on since it was listed.
      const current = await jobs.get(job.organization_id, job.id);
      if (!current || FINISHED_STATUSES.has(current.status)) {
        await jobs.release(job);
        continue;
      }
      // Not running anywhere (this trainer holds the claim and is not running it): nothing to stop first.
      if (cancel) await finishJob(this.context, current, 'cancelled', 'Fine-tuning job cancelled');
      else if (current.status === 'validating_files') {
        const queued = await validateJob(this.context, current);
        // Straight on to training when there is room, rather than at the next poll.
        const canStart = queued && this.#running.size < settings.maxConcurrentJobs && !this.#stopping;
        if (canStart && (await jobs.claim(current, settings.trainerId, settings.claimStaleMs))) this.#start(current);
      } else this.#start(current);
    }
  }

  #start(job: FineTuningJob): void {
    const done = runJob(this.context, job, () => this.#stopping)
      .catch((error: Error) => this.context.logger.error('fine-tuning job could not be recorded', { job: job.id, error: error.stack }))
      .finally(() => {
        this.#running.delete(job.id);
        if (!this.#stopping) void this.poll();
      });
    this.#running.set(job.id, done);
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    clearTimeout(this.#timer);
    await (this.#nextPoll ?? this.#polling);
    await Promise.all(this.#running.values());
  }
}

/**
 * OpenAI's fine-tuning jobs API. The gateway authenticates, validates and records the job on disk; the trainer
 * sidecar validates the files' tokens, trains, and publishes the adapter into the store. The routes:
 *
 *   POST /v1/fine_tuning/jobs                     create (tenant keys only)
 *   GET  /v1/fine_tuning/jobs?after&limit         newest first
 *   GET  /v1/fine_tuning/jobs/{id}
 *   POST /v1/fine_tuning/jobs/{id}/cancel         a durable request the sidecar honours within one optimizer step
 *   GET  /v1/fine_tuning/jobs/{id}/events         newest first; `type: "metrics"` events carry the training metrics
 *   GET  /v1/fine_tuning/jobs/{id}/checkpoints    newest first
 *
 * A tenant sees only its own jobs (another's answer 404 like a missing one); admin keys see every tenant's.
 * A succeeded job's `fine_tuned_model` is servable the moment the job is shown as succeeded: the store is rescanned
 * before answering when it does not know the version yet.
 */
import type { Hono } from 'hono';
import type { Principal } from '../gateway/auth.ts';
import { invalidRequest, notFound, rateLimited } from '../gateway/errors.ts';
import type { GatewayEnv, GatewayServices } from '../gateway/services.ts';
import { MIN_TRAINING_EXAMPLES } from '../training/data/jsonl-examples.ts';
import { FINISHED_STATUSES, type FineTuningJob, type JobStore } from '../training/jobs/job-store.ts';
import { isId, newId } from '../training/jobs/training-dir.ts';
import { parseJobRequest } from './fine-tuning-request.ts';
import { findFile, owningTenant, trainingLimits } from './files.ts';
import { listPage } from './list-page.ts';
import { requireJsonObject } from './request-fields.ts';

export function registerFineTuningRoutes(app: Hono<GatewayEnv>, services: GatewayServices): void {
  const { files, jobs } = services.training;
  const { store, models } = services;

  /** Makes sure the store serves what a finished job reports before the client learns of it. */
  const servable = async (job: FineTuningJob, modelIds: string[] = job.fine_tuned_model ? [job.fine_tuned_model] : []) => {
    const prefix = `${models.baseName}+${job.organization_id}/`;
    const missing = modelIds.some((model) => {
      const at = model.lastIndexOf('@');
      return store.resolve(job.organization_id, model.slice(prefix.length, at), model.slice(at + 1)) === null;
    });
    if (missing) await store.refresh();
    return job;
  };

  app.post('/v1/fine_tuning/jobs', async (c) => {
    const principal = c.get('principal');
    const owner = owningTenant(principal);
    const tenant = owner.name;
    const request = parseJobRequest(requireJsonObject(await c.req.json()), {
      maxLoraRank: services.settings.engine.maxLoraRank,
      maxPositions: services.engine.info.maxPositions,
    });
    if (request.model !== models.baseName) {
      throw invalidRequest(
        `Model '${request.model}' is not available for fine-tuning here; fine-tune the served base model '${models.baseName}'.`,
        'model',
        'model_not_available',
      );
    }
    const trainingFile = await findFile(files, principal, request.trainingFile, 'training_file').catch(() => {
      throw invalidRequest(`Invalid training_file: no such File object: ${request.trainingFile}.`, 'training_file', 'invalid_training_file');
    });
    if (trainingFile.examples < MIN_TRAINING_EXAMPLES) {
      throw invalidRequest(
        `Invalid training_file: it has ${trainingFile.examples} examples; at least ${MIN_TRAINING_EXAMPLES} are needed.`,
        'training_file',
        'invalid_training_file',
      );
    }
    if (request.validationFile !== null) {
      const validationFile = await findFile(files, principal, request.validationFile, 'validation_file').catch(() => {
        throw invalidRequest(`Invalid validation_file: no such File object: ${request.validationFile}.`, 'validation_file', 'invalid_validation_file');
      });
      if (validationFile.format !== trainingFile.format) {
        throw invalidRequest(
          `Invalid validation_file: it holds ${validationFile.format} examples, the training file ${trainingFile.format} examples.`,
          'validation_file',
          'invalid_validation_file',
        );
      }
    }
    const { maxActiveJobs } = trainingLimits(owner, services.settings.training);
    const active = (await jobs.list(tenant)).filter((job) => !FINISHED_STATUSES.has(job.status)).length;
    if (active >= maxActiveJobs) {
      const source = owner.limits.maxActiveJobs === undefined ? 'MAX_ACTIVE_JOBS_PER_TENANT' : "the tenant's max_active_jobs";
      throw rateLimited({
        limit: 'concurrency',
        message: `The tenant has ${active} fine-tuning jobs that have not finished, the most allowed (${maxActiveJobs}, ${source}); wait for one to finish or cancel one.`,
        retryable: false,
      });
    }
    const id = newId('ftjob');
    const hyperparameters = request.hyperparameters;
    const job: FineTuningJob = {
      object: 'fine_tuning.job',
      id,
      created_at: Math.floor(Date.now() / 1000),
      model: request.model,
      training_file: trainingFile.id,
      validation_file: request.validationFile,
      status: 'validating_files',
      fine_tuned_model: null,
      finished_at: null,
      error: null,
      hyperparameters,
      method: { type: 'supervised', supervised: { hyperparameters } },
      trained_tokens: null,
      result_files: [],
      seed: request.seed,
      organization_id: tenant,
      estimated_finish: null,
      integrations: [],
      metadata: request.metadata,
      user_provided_suffix: request.suffix,
      lora_r: request.loraR,
      lora_alpha: request.loraAlpha,
      lora_dropout: request.loraDropout,
      lora_trainable_modules: request.targetModules,
      max_length: request.maxLength,
      adapter: request.suffix ?? `ft-${id.slice('ftjob-'.length, 'ftjob-'.length + 12).toLowerCase()}`,
    };
    await jobs.create(job);
    return c.json(job);
  });

  app.get('/v1/fine_tuning/jobs', async (c) => {
    const principal = c.get('principal');
    const all = await jobs.list(principal.kind === 'tenant' ? principal.tenant.name : undefined);
    const page = listPage(all, c.req.query('after'), c.req.query('limit'));
    await Promise.all(page.data.map((job) => servable(job)));
    return c.json(page);
  });

  app.get('/v1/fine_tuning/jobs/:id', async (c) => c.json(await servable(await findJob(jobs, c.get('principal'), c.req.param('id')))));

  app.post('/v1/fine_tuning/jobs/:id/cancel', async (c) => {
    const job = await findJob(jobs, c.get('principal'), c.req.param('id'));
    if (FINISHED_STATUSES.has(job.status)) {
      throw invalidRequest(`Job ${job.id} has already finished (status ${job.status}) and cannot be cancelled.`, 'id', 'job_finished');
    }
    await jobs.requestCancel(job);
    return c.json(job);
  });

  app.get('/v1/fine_tuning/jobs/:id/events', async (c) => {
    const job = await findJob(jobs, c.get('principal'), c.req.param('id'));
    const events = (await jobs.events(job)).reverse();
    return c.json(listPage(events, c.req.query('after'), c.req.query('limit'), 1000));
  });

  app.get('/v1/fine_tuning/jobs/:id/checkpoints', async (c) => {
    const job = await findJob(jobs, c.get('principal'), c.req.param('id'));
    const checkpoints = (await jobs.checkpoints(job)).reverse();
    const page = listPage(checkpoints, c.req.query('after'), c.req.query('limit'));
    await servable(job, page.data.map((checkpoint) => checkpoint.fine_tuned_model_checkpoint));
    return c.json(page);
  });
}

/** The caller's job (any tenant's for an admin); otherwise the 404 a missing job gets. */
async function findJob(jobs: JobStore, principal: Principal, id: string): Promise<FineTuningJob> {
  if (isId(id, 'ftjob')) {
    const tenants = principal.kind === 'tenant' ? [principal.tenant.name] : await jobs.dir.tenants();
    for (const tenant of tenants) {
      const job = await jobs.get(tenant, id);
      if (job) return job;
    }
  }
  throw notFound(`No such fine-tuning job: ${id}`, 'id', 'fine_tuning_job_not_found');
}

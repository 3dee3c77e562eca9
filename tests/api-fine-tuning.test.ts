/**
 * The files and fine-tuning routes of the gateway alone (no trainer sidecar running): validation, tenancy, limits
 * and OpenAI's object shapes, through the official client.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import OpenAI, { toFile } from 'openai';
import { BASE_MODEL, KEYS, startTestGateway, type TestGateway } from './support/gateway.ts';

let gateway: TestGateway;
before(async () => {
  gateway = await startTestGateway(
    { perTenant: { globex: { max_stored_bytes: '4KiB', max_active_jobs: 1 } } },
    { MAX_FILE_BYTES: '4KiB', MAX_STORED_BYTES_PER_TENANT: '6KiB', MAX_ACTIVE_JOBS_PER_TENANT: '2' },
  );
});
after(() => gateway.stop());

const stories = (count: number) =>
  Array.from({ length: count }, (_, i) => JSON.stringify({ prompt: `Story ${i}:`, completion: ' Once upon a time.' })).join('\n') + '\n';
const upload = async (client: OpenAI, text: string, name = 'train.jsonl') =>
  client.files.create({ file: await toFile(Buffer.from(text), name), purpose: 'fine-tune' });

async function apiError(work: Promise<unknown>): Promise<InstanceType<typeof OpenAI.APIError>> {
  try {
    await work;
  } catch (error) {
    assert.ok(error instanceof OpenAI.APIError, String(error));
    return error;
  }
  assert.fail('the request succeeded');
}

test('files: upload, list, retrieve, content and delete, each tenant seeing only its own', async () => {
  const acme = gateway.client(KEYS.acme);
  const globex = gateway.client(KEYS.globex);
  const file = await acme.files.create({ file: await toFile(Buffer.from(stories(10)), 'train.jsonl'), purpose: 'fine-tune' });
  assert.match(file.id, /^file-[A-Za-z0-9]{24}$/);
  assert.equal(file.object, 'file');
  assert.equal(file.purpose, 'fine-tune');
  assert.equal(file.filename, 'train.jsonl');
  assert.equal(file.bytes, Buffer.byteLength(stories(10)));
  assert.equal(file.status, 'processed');
  assert.equal((file as unknown as Record<string, unknown>).tenant, undefined, 'the owner is not part of the object');

  assert.deepEqual((await acme.files.retrieve(file.id)).id, file.id);
  assert.equal(await (await acme.files.content(file.id)).text(), stories(10));
  const listed = [];
  for await (const entry of acme.files.list()) listed.push(entry.id);
  assert.deepEqual(listed, [file.id]);

  const theirs = await apiError(globex.files.retrieve(file.id));
  const missing = await apiError(globex.files.retrieve('file-AAAAAAAAAAAAAAAAAAAAAAAA'));
  assert.equal(theirs.status, 404);
  assert.deepEqual(theirs.error, { ...(missing.error as object), message: (theirs.error as { message: string }).message });
  assert.equal((theirs.error as { message: string }).message, `No such File object: ${file.id}`);
  assert.equal((await apiError(globex.files.delete(file.id))).status, 404);
  assert.deepEqual((await globex.files.list()).data, []);

  const admin = gateway.client(KEYS.admin);
  assert.equal((await admin.files.retrieve(file.id)).id, file.id, 'admins see every tenant');
  const adminUpload = await apiError(admin.files.create({ file: await toFile(Buffer.from(stories(10)), 'a.jsonl'), purpose: 'fine-tune' }));
  assert.equal(adminUpload.status, 403);

  assert.deepEqual(await acme.files.delete(file.id), { id: file.id, object: 'file', deleted: true });
  assert.equal((await apiError(acme.files.retrieve(file.id))).status, 404);
});

test('files: invalid datasets are refused naming the line; size limits answer 413', async () => {
  const acme = gateway.client(KEYS.acme);
  const bad = `${stories(2)}{"prompt": "x"}\nnot json\n`;
  const refused = await apiError(acme.files.create({ file: await toFile(Buffer.from(bad), 'bad.jsonl'), purpose: 'fine-tune' }));
  assert.equal(refused.status, 400);
  assert.equal(refused.code, 'invalid_file');
  assert.equal(refused.param, 'file');
  assert.match(refused.message, /line 3: has "prompt" but no "completion"; line 4: is not valid JSON/);

  const purpose = await apiError(acme.files.create({ file: await toFile(Buffer.from(stories(10)), 'x.jsonl'), purpose: 'assistants' }));
  assert.equal(purpose.status, 400);
  assert.equal(purpose.param, 'purpose');

  const big = await apiError(acme.files.create({ file: await toFile(Buffer.from(stories(200)), 'big.jsonl'), purpose: 'fine-tune' }));
  assert.equal(big.status, 413);

  // 6 KiB per tenant: two files of ~3 KiB fit, a third does not.
  const three = stories(50);
  assert.ok(three.length > 2048 && three.length < 3072);
  const kept = [await upload(acme, three), await upload(acme, three)];
  const quota = await apiError(upload(acme, three));
  assert.equal(quota.status, 413);
  assert.match(quota.message, /over the limit of 6144 bytes/);
  assert.equal((await upload(gateway.client(KEYS.globex), three)).bytes, three.length, 'the limit is per tenant');
  for (const file of kept) await acme.files.delete(file.id);
});

test('jobs: created in OpenAI shape with the LoRA fields; bad values are refused naming the parameter', async () => {
  const acme = gateway.client(KEYS.acme);
  const training = await upload(acme, stories(10));
  const few = await upload(acme, stories(3));
  const refusals: Array<[Record<string, unknown>, string, number?]> = [
    [{ model: 'gpt-4o' }, 'model'],
    [{ training_file: 'file-AAAAAAAAAAAAAAAAAAAAAAAA' }, 'training_file'],
    [{ training_file: few.id }, 'training_file'],
    [{ validation_file: 'nope' }, 'validation_file'],
    [{ suffix: 'Has Spaces' }, 'suffix'],
    [{ seed: -1 }, 'seed'],
    [{ hyperparameters: { n_epochs: 0 } }, 'hyperparameters.n_epochs'],
    [{ method: { type: 'supervised', supervised: { hyperparameters: { batch_size: 1000 } } } }, 'method.supervised.hyperparameters.batch_size'],
    [{ method: { type: 'supervised', supervised: { hyperparameters: { learning_rate_multiplier: -1 } } } }, 'method.supervised.hyperparameters.learning_rate_multiplier'],
    [{ method: { type: 'dpo' } }, 'method.type'],
    [{ lora_r: 17 }, 'lora_r'],
    [{ lora_alpha: 0 }, 'lora_alpha'],
    [{ lora_dropout: 1 }, 'lora_dropout'],
    [{ lora_trainable_modules: ['q_proj', 'lm_head'] }, 'lora_trainable_modules'],
    [{ max_length: 100_000 }, 'max_length'],
    [{ learning_rate: 1 }, 'learning_rate'],
  ];
  for (const [fields, param] of refusals) {
    const error = await apiError(acme.fineTuning.jobs.create({ model: BASE_MODEL, training_file: training.id, ...fields } as never));
    assert.equal(error.status, 400, JSON.stringify(fields));
    assert.equal(error.param, param, JSON.stringify(fields));
  }
  const job = await acme.fineTuning.jobs.create({
    model: BASE_MODEL,
    training_file: training.id,
    suffix: 'stories',
    seed: 7,
    method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 2, batch_size: 'auto', learning_rate_multiplier: 3 } } },
    lora_r: 8,
    lora_trainable_modules: 'q_proj,v_proj',
  } as never);
  assert.match(job.id, /^ftjob-[A-Za-z0-9]{24}$/);
  assert.equal(job.object, 'fine_tuning.job');
  assert.equal(job.status, 'validating_files');
  assert.equal(job.model, BASE_MODEL);
  assert.equal(job.fine_tuned_model, null);
  assert.equal(job.seed, 7);
  assert.deepEqual(job.hyperparameters, { n_epochs: 2, batch_size: 4, learning_rate_multiplier: 3 });
  assert.deepEqual(job.method?.supervised?.hyperparameters, job.hyperparameters);
  const extra = job as unknown as Record<string, unknown>;
  assert.deepEqual([extra.lora_r, extra.lora_alpha, extra.lora_dropout, extra.lora_trainable_modules], [8, 16, 0.05, ['q_proj', 'v_proj']]);
  assert.equal(job.organization_id, 'acme');

  assert.deepEqual(await acme.fineTuning.jobs.retrieve(job.id), job);
  const events = await acme.fineTuning.jobs.listEvents(job.id);
  assert.equal(events.data[0].message, `Created fine-tuning job: ${job.id}`);
  assert.deepEqual((await acme.fineTuning.jobs.checkpoints.list(job.id)).data, []);

  const globex = gateway.client(KEYS.globex);
  const foreign = [
    () => globex.fineTuning.jobs.retrieve(job.id),
    () => globex.fineTuning.jobs.cancel(job.id),
    () => globex.fineTuning.jobs.listEvents(job.id),
    () => globex.fineTuning.jobs.checkpoints.list(job.id),
  ];
  for (const call of foreign) assert.equal((await apiError(call())).status, 404);
  assert.deepEqual((await globex.fineTuning.jobs.list()).data, []);
  const adminError = await apiError(gateway.client(KEYS.admin).fineTuning.jobs.create({ model: BASE_MODEL, training_file: training.id }));
  assert.equal(adminError.status, 403);
  assert.equal((await gateway.client(KEYS.admin).fineTuning.jobs.retrieve(job.id)).id, job.id);

  // Two unfinished jobs is this deployment's limit per tenant.
  const second = await acme.fineTuning.jobs.create({ model: BASE_MODEL, training_file: training.id });
  const third = await apiError(acme.fineTuning.jobs.create({ model: BASE_MODEL, training_file: training.id }));
  assert.equal(third.status, 429);
  assert.match(third.message, /MAX_ACTIVE_JOBS_PER_TENANT/);

  const page = await acme.fineTuning.jobs.list({ limit: 1 });
  assert.deepEqual(page.data.map((j) => j.id), [second.id], 'newest first');
  assert.equal(page.has_more, true);
  const next = await acme.fineTuning.jobs.list({ limit: 1, after: second.id });
  assert.deepEqual(next.data.map((j) => j.id), [job.id]);
  assert.equal(next.has_more, false);

  // Cancelling records a request for the sidecar; the job's status is the sidecar's to change.
  const cancelled = await acme.fineTuning.jobs.cancel(job.id);
  assert.equal(cancelled.id, job.id);
  assert.equal((await apiError(acme.fineTuning.jobs.cancel('ftjob-AAAAAAAAAAAAAAAAAAAAAAAA'))).status, 404);
});

test("a tenant's own limits in the tenants file override the deployment-wide ones", async () => {
  const globex = gateway.client(KEYS.globex);
  for (const file of (await globex.files.list()).data) await globex.files.delete(file.id);
  // acme stores two of these under MAX_STORED_BYTES_PER_TENANT (6 KiB); globex's max_stored_bytes is 4 KiB.
  const three = stories(50);
  const kept = await upload(globex, three);
  const quota = await apiError(upload(globex, three));
  assert.equal(quota.status, 413);
  assert.equal(quota.code, 'file_too_large');
  assert.match(quota.message, /over the limit of 4096 bytes/);

  // acme may have two unfinished jobs (MAX_ACTIVE_JOBS_PER_TENANT); globex's max_active_jobs is 1.
  await globex.fineTuning.jobs.create({ model: BASE_MODEL, training_file: kept.id });
  const second = await apiError(globex.fineTuning.jobs.create({ model: BASE_MODEL, training_file: kept.id }));
  assert.equal(second.status, 429);
  assert.match(second.message, /the most allowed \(1, the tenant's max_active_jobs\)/);
});

test('admin listings skip entries of the training directory that are not tenants, such as a volume root\'s lost+found', async () => {
  await mkdir(join(gateway.trainingDir, 'lost+found', 'files'), { recursive: true });
  await mkdir(join(gateway.trainingDir, 'Not A Tenant', 'jobs'), { recursive: true });
  const admin = gateway.client(KEYS.admin);
  const acmeFile = await upload(gateway.client(KEYS.acme), stories(10));
  assert.ok((await admin.files.list()).data.some((file) => file.id === acmeFile.id));
  assert.equal((await admin.files.retrieve(acmeFile.id)).id, acmeFile.id);
  await admin.fineTuning.jobs.list();
  const missing = await apiError(admin.fineTuning.jobs.retrieve('ftjob-00000000aaaaaaaaaaaaaaaa'));
  assert.equal(missing.status, 404);
  await gateway.client(KEYS.acme).files.delete(acmeFile.id);
});

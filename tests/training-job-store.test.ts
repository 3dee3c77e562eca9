import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { JobStore, type FineTuningJob } from '../src/training/jobs/job-store.ts';
import { newId, TrainingDir } from '../src/training/jobs/training-dir.ts';

async function withStore(work: (store: JobStore, job: FineTuningJob) => Promise<void>): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), 'jobs-'));
  try {
    const store = new JobStore(new TrainingDir(root));
    const job = { id: newId('ftjob'), organization_id: 'acme', created_at: 1, status: 'queued' } as FineTuningJob;
    await store.create(job);
    await work(store, job);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

test('claims: one trainer at a time; the same trainer after a restart, or anyone once the claim is stale', () =>
  withStore(async (store, job) => {
    assert.equal(await store.claim(job, 'a', 60_000), true);
    assert.equal(await store.claim(job, 'b', 60_000), false, 'held and fresh');
    assert.equal(await store.claim(job, 'a', 60_000), true, 'a restarted trainer takes its own claim back');
    assert.equal(await store.claim(job, 'b', 0), true, 'a claim older than the stale limit is taken over');
    assert.equal(await store.claim(job, 'a', 60_000), false, 'and then belongs to its new holder');
    await store.release(job);
    assert.equal(await store.claim(job, 'e', 60_000), true, 'released');
  }));

test('a job directory appears whole; events survive a torn last line; nothing is left in staging', () =>
  withStore(async (store, job) => {
    assert.deepEqual(await store.get('acme', job.id), job);
    assert.deepEqual((await store.list('acme')).map((j) => j.id), [job.id]);
    await store.appendEvent(job, { message: 'one' });
    await appendFile(store.jobPath(job, 'events.jsonl'), '{"object":"fine_tu');
    assert.deepEqual((await store.events(job)).map((e) => e.message), [`Created fine-tuning job: ${job.id}`, 'one']);
    assert.deepEqual(await readdir(store.dir.staging), []);
    assert.equal(await store.cancelRequested(job), false);
    await store.requestCancel(job);
    assert.equal(await store.cancelRequested(job), true);
  }));

/** Shared pieces of the fine-tuning tests: a dataset that teaches a made-up word, and the trainer beside a gateway. */
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import type OpenAI from 'openai';
import { FINISHED_STATUSES, type JobStatus } from '../../src/training/jobs/job-store.ts';
import { startTrainer, type RunningTrainer, type TrainerServiceOptions } from '../../src/training/service/trainer-service.ts';
import { loadTrainerSettings } from '../../src/training/service/trainer-settings.ts';
import type { TestGateway } from './gateway.ts';
import { STORIES_HF_DIR } from './models.ts';

/**
 * Where stories260K's greedy story names "Lily", these stories name the girl "Zibbo", a word the model has never
 * seen; the rest varies, so what is learnt is the name.
 */
export const MADE_UP_WORD = 'Zibbo';
const TOYS = ['ball', 'doll', 'kite', 'car', 'book', 'bear'];
const PLACES = ['park', 'garden', 'house', 'forest', 'yard'];
const FEELINGS = ['happy', 'sad', 'scared', 'excited'];

export function madeUpWordStories(count: number, offset = 0): string[] {
  return Array.from({ length: count }, (_, index) => {
    const i = index + offset;
    const toy = TOYS[i % TOYS.length];
    const place = PLACES[Math.floor(i / TOYS.length) % PLACES.length];
    const feeling = FEELINGS[i % FEELINGS.length];
    return (
      `Once upon a time, there was a little girl named ${MADE_UP_WORD}. ${MADE_UP_WORD} loved to play with her ${toy} in the ${place}. ` +
      `One day, ${MADE_UP_WORD} was very ${feeling}.`
    );
  });
}

export const asJsonl = (texts: string[]) => texts.map((text) => JSON.stringify({ text })).join('\n') + '\n';

/** The trainer settings every test trainer shares, in-process or as its own process: stories260K, the test gateway's store. */
export function trainerTestEnv(gateway: TestGateway): Record<string, string> {
  return {
    MODEL_PATH: STORIES_HF_DIR,
    ADAPTERS_DIR: gateway.adaptersDir,
    TRAINING_DIR: gateway.trainingDir,
    TRAINER_THREADS: '1',
    TRAINER_PORT: '0',
    TRAINER_POLL_MS: '20',
  };
}

export interface TestTrainer extends RunningTrainer {
  spans: InMemorySpanExporter;
  logs: string[];
}

/**
 * The trainer sidecar in this process, on the test gateway's adapter store and training directory; like the child
 * sidecar of `npm start`, it has the gateway load each finished job's adapter before the job says `succeeded`.
 */
export async function startTestTrainer(
  gateway: TestGateway,
  env: Record<string, string> = {},
  onJobProgress?: TrainerServiceOptions['onJobProgress'],
): Promise<TestTrainer> {
  const spans = new InMemorySpanExporter();
  const logs: string[] = [];
  const trainer = await startTrainer(
    loadTrainerSettings({ ...trainerTestEnv(gateway), TRAINER_ID: 'test-trainer', LOG_LEVEL: 'debug', ...env }),
    {
      traceExporter: spans,
      writeLog: (line) => logs.push(line),
      onJobProgress,
      announcePublished: ({ tenant, adapter, version }) => gateway.preloadAdapter(tenant, adapter, version),
    },
  );
  return { ...trainer, spans, logs };
}

/** Whether the job has ended: succeeded, failed or cancelled. */
export const jobFinished = (job: { status: string }) => FINISHED_STATUSES.has(job.status as JobStatus);

/**
 * Polls the job through the API until `done` holds for it (each poll has the trainer look at the directory first).
 * A job that finishes without `done` holding fails the wait with its status and error instead of polling forever.
 */
export async function waitForJob(
  client: OpenAI,
  id: string,
  done: (job: OpenAI.FineTuning.FineTuningJob) => boolean | Promise<boolean>,
  trainer?: Pick<RunningTrainer, 'poll'>,
): Promise<OpenAI.FineTuning.FineTuningJob> {
  for (;;) {
    await trainer?.poll();
    const job = await client.fineTuning.jobs.retrieve(id);
    if (await done(job)) return job;
    if (jobFinished(job)) throw new Error(`job ${id} ended ${job.status} before the awaited state: ${JSON.stringify(job.error)}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

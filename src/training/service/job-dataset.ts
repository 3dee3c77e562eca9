/**
 * A job's training and validation files as token sequences, or the failure OpenAI reports for a bad file
 * (`invalid_training_file` / `invalid_validation_file`, naming the line). Run when the job is validated and again
 * when it starts, so nothing tokenised has to be stored.
 */
import type { ChatFormatter } from '../../tokenizer/chat-template.ts';
import type { Tokenizer } from '../../tokenizer/tokenizer.ts';
import { DatasetError, MIN_TRAINING_EXAMPLES, parseTrainingJsonl } from '../data/jsonl-examples.ts';
import { tokenizeExamples, type TokenizedDataset } from '../data/tokenize-examples.ts';
import type { TrainingFileStore } from '../jobs/file-store.ts';
import type { FineTuningJob } from '../jobs/job-store.ts';

export interface JobDataset {
  train: TokenizedDataset;
  validation: TokenizedDataset | undefined;
}

/** A reason to fail the job, in the shape of OpenAI's job `error`. */
export class JobFailure extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly param: string | null = null,
  ) {
    super(message);
    this.name = 'JobFailure';
  }
}

export async function loadJobDataset(
  job: FineTuningJob,
  files: TrainingFileStore,
  tokenizer: Tokenizer,
  formatChat: ChatFormatter,
): Promise<JobDataset> {
  const load = async (id: string, param: 'training_file' | 'validation_file', minExamples: number) => {
    const file = await files.get(job.organization_id, id);
    if (!file) throw new JobFailure(`invalid_${param}`, `The ${param} ${id} was deleted before the job could use it.`, param);
    try {
      const examples = parseTrainingJsonl(await files.content(file), minExamples);
      return tokenizeExamples(examples, { tokenizer, formatChat, maxLength: job.max_length });
    } catch (error) {
      if (error instanceof DatasetError) throw new JobFailure(`invalid_${param}`, `The ${param} ${id} is invalid: ${error.message}.`, param);
      throw error;
    }
  };
  return {
    train: await load(job.training_file, 'training_file', MIN_TRAINING_EXAMPLES),
    validation: job.validation_file === null ? undefined : await load(job.validation_file, 'validation_file', 1),
  };
}

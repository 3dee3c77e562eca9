/**
 * Trains a LoRA adapter on a frozen base model. The training loop (training-loop.ts) runs on the model's training
 * thread (training-thread.ts), to which the base weights move, uncopied, for as long as a run is in progress.
 */
import type { BaseModel } from '../model/types.ts';
import type { TrainingData, TrainingHooks, TrainingResult } from './training-loop.ts';
import type { LoraTrainingConfig } from './training-config.ts';
import { validateTrainingConfig } from './training-config.ts';
import { assertTrainable } from './training-model.ts';
import { TrainingThread } from './training-thread.ts';

export type { TrainingSequence } from './batches.ts';
export { DEFAULT_LORA_TRAINING_CONFIG, type LoraTrainingConfig } from './training-config.ts';
export { deserializeCheckpoint, serializeCheckpoint, type TrainerCheckpoint } from './checkpoint.ts';
export type { TrainingHooks, TrainingProgress, TrainingResult } from './training-loop.ts';

/**
 * Trains a LoRA adapter on `model` with `data`. Resolves when training completes or `hooks.shouldStop` stops it
 * (after the step during which it first returned true); rejects with the training error otherwise. While any run
 * on `model` is in progress its weight arrays are lent to the training thread (empty here); they are back when
 * the last run settles.
 */
export async function trainLora(model: BaseModel, data: TrainingData, config: LoraTrainingConfig, hooks: TrainingHooks = {}): Promise<TrainingResult> {
  validateTrainingConfig(config);
  assertTrainable(model);
  return (await TrainingThread.of(model)).train(data, config, hooks);
}

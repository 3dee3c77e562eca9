/** LoRA training settings, their defaults (Hugging Face PEFT/TRL's) and their validation. */
import { LORA_TARGET_MODULES, type LoraTargetModule } from '../model/types.ts';
import type { ScheduleKind } from './optimizer.ts';

export interface LoraTrainingConfig {
  rank: number;
  alpha: number;
  /** LoRA dropout on each adapted projection's input. */
  dropout: number;
  targetModules: LoraTargetModule[];
  epochs: number;
  batchSize: number;
  learningRate: number;
  weightDecay: number;
  /** Fraction of the total optimizer steps spent warming the learning rate up from 0. */
  warmupRatio: number;
  schedule: ScheduleKind;
  maxGradNorm: number;
  gradientAccumulationSteps: number;
  seed: number;
  /** Sequences are already truncated or refused by the data layer to this length. */
  maxLength: number;
  /** onnxruntime intra-op threads. */
  threads: number;
  /** Optimizer steps between validation-loss evaluations (default: once per epoch). */
  evalEvery?: number;
}

export const DEFAULT_LORA_TRAINING_CONFIG: Omit<LoraTrainingConfig, 'seed' | 'threads'> & { seed: number; threads: number } = {
  rank: 16,
  alpha: 32,
  dropout: 0.05,
  targetModules: [...LORA_TARGET_MODULES],
  epochs: 3,
  batchSize: 4,
  learningRate: 2e-4,
  weightDecay: 0.01,
  warmupRatio: 0.03,
  schedule: 'linear',
  maxGradNorm: 1.0,
  gradientAccumulationSteps: 1,
  seed: 42,
  maxLength: 1024,
  threads: 2,
};

/** Throws a RangeError naming the first setting out of range. */
export function validateTrainingConfig(config: LoraTrainingConfig): void {
  const fail = (name: keyof LoraTrainingConfig, rule: string) => {
    throw new RangeError(`training setting ${name} must be ${rule}, got ${JSON.stringify(config[name])}`);
  };
  const positiveInteger = (name: keyof LoraTrainingConfig) => {
    if (!Number.isSafeInteger(config[name]) || (config[name] as number) < 1) fail(name, 'a positive integer');
  };
  positiveInteger('rank');
  positiveInteger('epochs');
  positiveInteger('batchSize');
  positiveInteger('gradientAccumulationSteps');
  positiveInteger('maxLength');
  positiveInteger('threads');
  if (config.evalEvery !== undefined) positiveInteger('evalEvery');
  if (!(config.alpha > 0) || !Number.isFinite(config.alpha)) fail('alpha', 'a positive number');
  if (!(config.dropout >= 0 && config.dropout < 1)) fail('dropout', 'in [0, 1)');
  if (!(config.learningRate > 0) || !Number.isFinite(config.learningRate)) fail('learningRate', 'a positive number');
  if (!(config.weightDecay >= 0) || !Number.isFinite(config.weightDecay)) fail('weightDecay', 'a non-negative number');
  if (!(config.warmupRatio >= 0 && config.warmupRatio <= 1)) fail('warmupRatio', 'in [0, 1]');
  if (!(config.maxGradNorm > 0)) fail('maxGradNorm', 'a positive number');
  if (config.schedule !== 'linear' && config.schedule !== 'cosine') fail('schedule', '"linear" or "cosine"');
  if (!Number.isSafeInteger(config.seed)) fail('seed', 'an integer');
  const targets = new Set(config.targetModules);
  if (targets.size === 0 || targets.size !== config.targetModules.length || config.targetModules.some((m) => !LORA_TARGET_MODULES.includes(m))) {
    fail('targetModules', `distinct names among ${LORA_TARGET_MODULES.join(', ')}`);
  }
}

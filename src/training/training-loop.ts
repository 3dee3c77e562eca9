/**
 * The LoRA training loop: seeded epoch order, micro-batches accumulated into optimizer steps, clipping, AdamW on
 * the scheduled learning rate, validation, checkpoints and cancellation between steps. It runs wherever it is
 * called; lora-trainer.ts runs it on a worker thread.
 */
import { createHash } from 'node:crypto';
import type { LoraAdapterSpec } from '../adapters/lora-writer.ts';
import type { BaseModel } from '../model/types.ts';
import { epochOrder, packBatch, targetCount, type TrainingSequence } from './batches.ts';
import type { TrainerCheckpoint } from './checkpoint.ts';
import { ADAMW_BETAS, adamWStep, clipGradientNorm, newAdamWState, scheduleFactor } from './optimizer.ts';
import { type LoraTrainingConfig, validateTrainingConfig } from './training-config.ts';
import { TrainingModel } from './training-model.ts';

export interface TrainingProgress {
  step: number;
  totalSteps: number;
  epoch: number;
  trainLoss: number;
  validLoss?: number;
  tokensPerSecond: number;
  trainedTokens: number;
  elapsedSeconds: number;
}

export interface TrainingHooks {
  /** After every optimizer step (and after each evaluation). */
  onProgress?(progress: TrainingProgress): void;
  /** Polled after every optimizer step: true stops the run there. */
  shouldStop?(): boolean;
  /** Optimizer steps between checkpoints. */
  checkpointEvery?: number;
  onCheckpoint?(checkpoint: TrainerCheckpoint, adapter: LoraAdapterSpec): Promise<void>;
  resumeFrom?: TrainerCheckpoint;
}

export interface TrainingResult {
  status: 'completed' | 'stopped';
  adapter: LoraAdapterSpec;
  progress: TrainingProgress;
}

export interface TrainingData {
  train: TrainingSequence[];
  validation?: TrainingSequence[];
}

/** Trains a LoRA adapter on `model` in the calling thread. */
export async function runTraining(model: BaseModel, data: TrainingData, config: LoraTrainingConfig, hooks: TrainingHooks = {}): Promise<TrainingResult> {
  validateTrainingConfig(config);
  validateData(data, config, model.config.vocabSize);
  const engine = await TrainingModel.create(model, config);
  try {
    return await trainWith(engine, model, data, config, hooks);
  } finally {
    await engine.close();
  }
}

async function trainWith(engine: TrainingModel, model: BaseModel, data: TrainingData, config: LoraTrainingConfig, hooks: TrainingHooks): Promise<TrainingResult> {
  const { layout } = engine;
  const batchesPerEpoch = Math.ceil(data.train.length / config.batchSize);
  const stepsPerEpoch = Math.ceil(batchesPerEpoch / config.gradientAccumulationSteps);
  const totalSteps = config.epochs * stepsPerEpoch;
  const warmupSteps = Math.ceil(config.warmupRatio * totalSteps);
  const evalEvery = config.evalEvery ?? stepsPerEpoch;
  const fingerprint = trainingFingerprint(model, data, config);

  const resume = hooks.resumeFrom;
  if (resume && (resume.fingerprint !== fingerprint || resume.parameters.length !== layout.size)) {
    throw new Error('the checkpoint was made with other settings, data or base model; it cannot resume this run');
  }
  const parameters = resume ? Float32Array.from(resume.parameters) : layout.initialize(config.seed);
  const adam = resume ? { m: Float32Array.from(resume.adam.m), v: Float32Array.from(resume.adam.v), updates: resume.adam.updates } : newAdamWState(layout.size);
  const gradients = new Float32Array(layout.size);
  const adamSettings = { ...ADAMW_BETAS, learningRate: config.learningRate, weightDecay: config.weightDecay };

  const started = performance.now();
  const previousElapsed = resume?.elapsedSeconds ?? 0;
  let trainedTokens = resume?.trainedTokens ?? 0;
  let tokensThisRun = 0;
  let progress: TrainingProgress = {
    step: resume?.step ?? 0,
    totalSteps,
    epoch: Math.min(config.epochs, Math.floor((resume?.step ?? 0) / stepsPerEpoch) + 1),
    trainLoss: resume?.trainLoss ?? Number.NaN,
    ...(resume?.validLoss !== undefined ? { validLoss: resume.validLoss } : {}),
    tokensPerSecond: 0,
    trainedTokens,
    elapsedSeconds: previousElapsed,
  };
  const snapshot = (): TrainingProgress => {
    const runSeconds = (performance.now() - started) / 1000;
    return { ...progress, trainedTokens, tokensPerSecond: runSeconds > 0 ? tokensThisRun / runSeconds : 0, elapsedSeconds: previousElapsed + runSeconds };
  };

  let order: number[] = [];
  let orderEpoch = -1;
  for (let step = progress.step; step < totalSteps; step++) {
    const epoch = Math.floor(step / stepsPerEpoch);
    if (epoch !== orderEpoch) [order, orderEpoch] = [epochOrder(data.train.length, config.seed, epoch), epoch];
    const firstBatch = (step % stepsPerEpoch) * config.gradientAccumulationSteps;
    const batches: TrainingSequence[][] = [];
    for (let b = firstBatch; b < Math.min(batchesPerEpoch, firstBatch + config.gradientAccumulationSteps); b++) {
      batches.push(order.slice(b * config.batchSize, (b + 1) * config.batchSize).map((i) => data.train[i]));
    }
    const targets = batches.flat().reduce((sum, s) => sum + targetCount(s), 0);
    gradients.fill(0);
    let loss = 0;
    for (const [micro, sequences] of batches.entries()) {
      const seeds = config.dropout > 0 ? engine.dropoutSeeds(config.seed * 7919 + step * config.gradientAccumulationSteps + micro) : null;
      loss += await engine.lossAndGradients(packBatch(sequences, 1 / Math.max(1, targets)), parameters, gradients, seeds);
      const tokens = sequences.reduce((sum, s) => sum + s.tokens.length, 0);
      trainedTokens += tokens;
      tokensThisRun += tokens;
    }
    clipGradientNorm(gradients, config.maxGradNorm);
    adamWStep(parameters, gradients, adam, adamSettings, config.learningRate * scheduleFactor(config.schedule, step, totalSteps, warmupSteps));

    progress = { ...progress, step: step + 1, epoch: epoch + 1, trainLoss: loss };
    hooks.onProgress?.(snapshot());
    if (data.validation?.length && ((step + 1) % evalEvery === 0 || step + 1 === totalSteps)) {
      progress = { ...progress, validLoss: await validationLoss(engine, data.validation, parameters, config.batchSize) };
      hooks.onProgress?.(snapshot());
    }
    const stopping = hooks.shouldStop?.() ?? false;
    if (hooks.onCheckpoint && hooks.checkpointEvery && ((step + 1) % hooks.checkpointEvery === 0 || stopping) && step + 1 < totalSteps) {
      const current = snapshot();
      const checkpoint: TrainerCheckpoint = {
        step: step + 1,
        parameters: parameters.slice(),
        adam: { m: adam.m.slice(), v: adam.v.slice(), updates: adam.updates },
        trainedTokens,
        elapsedSeconds: current.elapsedSeconds,
        trainLoss: loss,
        ...(progress.validLoss !== undefined ? { validLoss: progress.validLoss } : {}),
        fingerprint,
      };
      await hooks.onCheckpoint(checkpoint, layout.toAdapterSpec(parameters, config.alpha));
    }
    if (stopping && step + 1 < totalSteps) return { status: 'stopped', adapter: layout.toAdapterSpec(parameters, config.alpha), progress: snapshot() };
  }
  return { status: 'completed', adapter: layout.toAdapterSpec(parameters, config.alpha), progress: snapshot() };
}

/** Mean negative log-likelihood per target token over the validation sequences (no dropout). */
export async function validationLoss(engine: TrainingModel, sequences: TrainingSequence[], parameters: Float32Array, batchSize: number): Promise<number> {
  const weight = 1 / Math.max(1, sequences.reduce((sum, s) => sum + targetCount(s), 0));
  let loss = 0;
  for (let start = 0; start < sequences.length; start += batchSize) {
    loss += await engine.loss(packBatch(sequences.slice(start, start + batchSize), weight), parameters);
  }
  return loss;
}

function validateData(data: TrainingData, config: LoraTrainingConfig, vocab: number): void {
  if (data.train.length === 0) throw new RangeError('training data is empty');
  for (const [set, sequences] of [['train', data.train], ['validation', data.validation ?? []]] as const) {
    sequences.forEach((s, i) => {
      if (s.tokens.length < 2 || s.tokens.length > config.maxLength || s.lossMask.length !== s.tokens.length || s.tokens.some((t) => t < 0 || t >= vocab)) {
        throw new RangeError(`${set} sequence ${i}: needs 2 to maxLength (${config.maxLength}) token ids below ${vocab} and a loss mask of the same length`);
      }
    });
  }
}

/** Digest of what decides every step: settings (threads aside), data and base model. */
function trainingFingerprint(model: BaseModel, data: TrainingData, config: LoraTrainingConfig): string {
  const hash = createHash('sha256');
  const { threads: _threads, ...settings } = config;
  hash.update(JSON.stringify({ settings, base: model.checksum }));
  for (const sequences of [data.train, data.validation ?? []]) {
    hash.update(`|${sequences.length}`);
    for (const s of sequences) {
      hash.update(new Uint8Array(s.tokens.buffer, s.tokens.byteOffset, s.tokens.byteLength));
      hash.update(s.lossMask);
    }
  }
  return hash.digest('hex');
}

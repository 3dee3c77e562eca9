/**
 * The trainer sidecar's settings, resolved once at start from the environment it shares with the gateway
 * (MODEL_PATH, MODEL_NAME, ADAPTERS_DIR, TRAINING_DIR, MAX_LORA_RANK, LOG_LEVEL, OTEL_EXPORTER_OTLP_ENDPOINT) and
 * its own TRAINER_* variables. Every value is validated with the variable named, as the gateway's are.
 */
import { availableParallelism, hostname } from 'node:os';
import { envChoice, envHost, envInteger, envString, envUrl, type LogLevel } from '../../gateway/config.ts';

export interface TrainerSettings {
  modelPath: string | undefined;
  modelName: string | undefined;
  adaptersDir: string;
  trainingDir: string;
  maxLoraRank: number;
  /** onnxruntime intra-op threads of a training job. */
  threads: number;
  /** Jobs trained at once; each holds its own copy of the base model. */
  maxConcurrentJobs: number;
  /** Optimizer steps between checkpoints (kept for resuming, and published as checkpoint adapters). */
  checkpointEvery: number;
  /** How often the training directory is looked at for new jobs and cancel requests. */
  pollMs: number;
  /** Names this sidecar in job claims; a restarted sidecar with the same id resumes its own jobs at once. */
  trainerId: string;
  /** A claim not renewed for this long is taken over by another sidecar. */
  claimStaleMs: number;
  host: string;
  /** The sidecar's /metrics and /health port. */
  port: number;
  otlpEndpoint: string | undefined;
  logLevel: LogLevel;
}

export function loadTrainerSettings(env: NodeJS.ProcessEnv): TrainerSettings {
  return {
    modelPath: envString(env, 'MODEL_PATH'),
    modelName: envString(env, 'MODEL_NAME'),
    adaptersDir: envString(env, 'ADAPTERS_DIR') ?? 'adapters',
    trainingDir: envString(env, 'TRAINING_DIR') ?? 'training',
    maxLoraRank: envInteger(env, 'MAX_LORA_RANK', 16, 1, 1024),
    threads: envInteger(env, 'TRAINER_THREADS', Math.max(1, Math.floor(availableParallelism() / 2)), 1, 1024),
    maxConcurrentJobs: envInteger(env, 'TRAINER_MAX_JOBS', 1, 1, 64),
    checkpointEvery: envInteger(env, 'TRAINER_CHECKPOINT_STEPS', 50, 1, 1_000_000),
    pollMs: envInteger(env, 'TRAINER_POLL_MS', 500, 10, 60_000),
    trainerId: envString(env, 'TRAINER_ID') ?? hostname(),
    claimStaleMs: envInteger(env, 'TRAINER_CLAIM_STALE_SECONDS', 120, 5, 86_400) * 1000,
    host: envHost(env),
    port: envInteger(env, 'TRAINER_PORT', 8001, 0, 65535),
    otlpEndpoint: envUrl(env, 'OTEL_EXPORTER_OTLP_ENDPOINT'),
    logLevel: envChoice(env, 'LOG_LEVEL', ['debug', 'info', 'warn', 'error'] as const, 'info'),
  };
}

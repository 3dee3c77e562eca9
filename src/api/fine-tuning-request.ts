/**
 * The body of `POST /v1/fine_tuning/jobs`, checked as OpenAI checks it (a 400 naming the parameter for every wrong
 * value), with the LoRA settings under the names LoRA fine-tuning services use: `lora_r`, `lora_alpha`,
 * `lora_dropout`, `lora_trainable_modules`; and `max_length`, the longest training sequence in tokens.
 */
import { invalidRequest } from '../gateway/errors.ts';
import { LORA_TARGET_MODULES, type LoraTargetModule } from '../model/types.ts';
import { isValidName } from '../registry/adapter-names.ts';
import { isJsonObject, type JsonObject } from '../storage/json-files.ts';
import type { JobHyperparameters } from '../training/jobs/job-store.ts';
import { invalidValue, optional } from './request-fields.ts';

export interface JobRequest {
  model: string;
  trainingFile: string;
  validationFile: string | null;
  suffix: string | null;
  seed: number;
  hyperparameters: JobHyperparameters;
  loraR: number;
  loraAlpha: number;
  loraDropout: number;
  targetModules: LoraTargetModule[];
  maxLength: number;
  metadata: Record<string, string> | null;
}

export interface JobRequestLimits {
  maxLoraRank: number;
  /** The base model's context length: no sequence can be longer. */
  maxPositions: number;
}

/** What `"auto"` (or leaving a hyperparameter out) means here. */
export const AUTO_HYPERPARAMETERS: Readonly<JobHyperparameters> = { n_epochs: 3, batch_size: 4, learning_rate_multiplier: 1 };
export const DEFAULT_MAX_LENGTH = 1024;
/** Suffixes name adapters, and checkpoints are published as `<suffix>-checkpoints`. */
const MAX_SUFFIX_LENGTH = 48;

const FIELDS = new Set([
  'model', 'training_file', 'validation_file', 'suffix', 'seed', 'hyperparameters', 'method', 'integrations', 'metadata',
  'lora_r', 'lora_alpha', 'lora_dropout', 'lora_trainable_modules', 'max_length',
]);

export function parseJobRequest(body: JsonObject, limits: JobRequestLimits): JobRequest {
  const unknown = Object.keys(body).find((key) => !FIELDS.has(key));
  if (unknown !== undefined) throw invalidRequest(`Unrecognized argument '${unknown}'.`, unknown, 'unknown_parameter');

  const model = requiredString(body, 'model');
  const trainingFile = requiredString(body, 'training_file');
  const validationFile = optionalString(body, 'validation_file');
  const suffix = optionalString(body, 'suffix');
  if (suffix !== null && (!isValidName(suffix) || suffix.length > MAX_SUFFIX_LENGTH)) {
    throw invalidRequest(
      `Invalid value for 'suffix': it names the adapter, so use 1–${MAX_SUFFIX_LENGTH} of a-z, 0-9, '-' and '_', starting with a letter or digit.`,
      'suffix',
      'invalid_value',
    );
  }
  const seed = optional(body, 'seed') ?? Math.floor(Math.random() * 2 ** 31);
  if (!Number.isSafeInteger(seed) || (seed as number) < 0 || (seed as number) > 2 ** 31 - 1) {
    throw invalidValue('seed', 'an integer from 0 to 2147483647', seed);
  }
  const integrations = optional(body, 'integrations');
  if (integrations !== undefined && !(Array.isArray(integrations) && integrations.length === 0)) {
    throw invalidRequest("'integrations' are not supported by this server.", 'integrations', 'unsupported_parameter');
  }

  const maxRank = limits.maxLoraRank;
  const loraR = integer(body, 'lora_r', Math.min(16, maxRank), 1, maxRank);
  return {
    model,
    trainingFile,
    validationFile,
    suffix,
    seed: seed as number,
    hyperparameters: hyperparameters(body),
    loraR,
    loraAlpha: number(body, 'lora_alpha', 2 * loraR, (v) => v > 0 && v <= 4096, 'a number above 0 and at most 4096'),
    loraDropout: number(body, 'lora_dropout', 0.05, (v) => v >= 0 && v < 1, 'a number from 0 up to (not including) 1'),
    targetModules: targetModules(optional(body, 'lora_trainable_modules')),
    maxLength: integer(body, 'max_length', Math.min(DEFAULT_MAX_LENGTH, limits.maxPositions), 2, limits.maxPositions),
    metadata: metadata(optional(body, 'metadata')),
  };
}

function requiredString(body: JsonObject, key: string): string {
  const value = optional(body, key);
  if (value === undefined) throw invalidRequest(`Missing required parameter: '${key}'.`, key, 'missing_required_parameter');
  if (typeof value !== 'string' || value === '') throw invalidValue(key, 'a non-empty string', value);
  return value;
}

function optionalString(body: JsonObject, key: string): string | null {
  const value = optional(body, key);
  if (value === undefined) return null;
  if (typeof value !== 'string' || value === '') throw invalidValue(key, 'a non-empty string', value);
  return value;
}

function integer(body: JsonObject, key: string, fallback: number, min: number, max: number): number {
  const value = optional(body, key);
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || (value as number) < min || (value as number) > max) {
    throw invalidValue(key, `an integer from ${min} to ${max}`, value);
  }
  return value as number;
}

function number(body: JsonObject, key: string, fallback: number, accept: (value: number) => boolean, expected: string): number {
  const value = optional(body, key);
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || !accept(value)) throw invalidValue(key, expected, value);
  return value;
}

/** `method.supervised.hyperparameters`, or the older top-level `hyperparameters`; not both. */
function hyperparameters(body: JsonObject): JobHyperparameters {
  const legacy = optional(body, 'hyperparameters');
  const method = optional(body, 'method');
  let raw: unknown = legacy;
  let param = 'hyperparameters';
  if (method !== undefined) {
    if (!isJsonObject(method)) throw invalidValue('method', 'an object', method);
    if (method.type !== 'supervised') {
      throw invalidRequest(`Invalid value for 'method.type': this server trains only "supervised" LoRA adapters.`, 'method.type', 'invalid_value');
    }
    const unknown = Object.keys(method).find((key) => key !== 'type' && key !== 'supervised');
    if (unknown !== undefined) throw invalidRequest(`Unrecognized argument 'method.${unknown}'.`, `method.${unknown}`, 'unknown_parameter');
    const supervised = method.supervised ?? undefined;
    if (supervised !== undefined && !isJsonObject(supervised)) throw invalidValue('method.supervised', 'an object', supervised);
    if (supervised?.hyperparameters !== undefined && supervised.hyperparameters !== null) {
      if (legacy !== undefined) {
        throw invalidRequest("Set hyperparameters in 'method.supervised.hyperparameters' or in 'hyperparameters', not both.", 'hyperparameters');
      }
      raw = supervised.hyperparameters;
      param = 'method.supervised.hyperparameters';
    }
  }
  if (raw === undefined) return { ...AUTO_HYPERPARAMETERS };
  if (!isJsonObject(raw)) throw invalidValue(param, 'an object', raw);
  const unknown = Object.keys(raw).find((key) => !(key in AUTO_HYPERPARAMETERS));
  if (unknown !== undefined) throw invalidRequest(`Unrecognized argument '${param}.${unknown}'.`, `${param}.${unknown}`, 'unknown_parameter');
  const pick = (key: keyof JobHyperparameters, accept: (v: number) => boolean, expected: string) => {
    const value = raw[key] ?? 'auto';
    if (value === 'auto') return AUTO_HYPERPARAMETERS[key];
    if (typeof value !== 'number' || !accept(value)) throw invalidValue(`${param}.${key}`, `"auto" or ${expected}`, value);
    return value;
  };
  return {
    n_epochs: pick('n_epochs', (v) => Number.isInteger(v) && v >= 1 && v <= 50, 'an integer from 1 to 50'),
    batch_size: pick('batch_size', (v) => Number.isInteger(v) && v >= 1 && v <= 256, 'an integer from 1 to 256'),
    learning_rate_multiplier: pick('learning_rate_multiplier', (v) => Number.isFinite(v) && v > 0 && v <= 100, 'a number above 0 and at most 100'),
  };
}

/** A list of projection names, or a comma-separated string of them; `all-linear` means all seven. */
function targetModules(value: unknown): LoraTargetModule[] {
  if (value === undefined || value === 'all-linear') return [...LORA_TARGET_MODULES];
  const names = typeof value === 'string' ? value.split(',').map((name) => name.trim()) : value;
  const expected = `"all-linear" or a non-empty list of ${LORA_TARGET_MODULES.join(', ')}`;
  if (!Array.isArray(names) || names.length === 0) throw invalidValue('lora_trainable_modules', expected, value);
  for (const name of names) {
    if (!(LORA_TARGET_MODULES as readonly unknown[]).includes(name)) throw invalidValue('lora_trainable_modules', expected, name);
  }
  return LORA_TARGET_MODULES.filter((module) => names.includes(module));
}

function metadata(value: unknown): Record<string, string> | null {
  if (value === undefined) return null;
  const expected = 'an object of at most 16 string values';
  if (!isJsonObject(value) || Object.keys(value).length > 16) throw invalidValue('metadata', expected, value);
  for (const entry of Object.values(value)) if (typeof entry !== 'string' || entry.length > 512) throw invalidValue('metadata', expected, entry);
  return value as Record<string, string>;
}

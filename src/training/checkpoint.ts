/**
 * Trainer checkpoints: everything needed to continue a run bit for bit — the adapter, the AdamW moments, the
 * optimizer step and counters. Data order and dropout masks are functions of (seed, step), so they need no
 * state of their own; the fingerprint ties a checkpoint to the settings, data and base model it was made with.
 * Stored as safetensors (tensors + string metadata), like everything else this project writes.
 */
import { entryToFloat32, parseSafetensors, serializeSafetensors } from '../formats/safetensors.ts';
import type { AdamWState } from './optimizer.ts';

export interface TrainerCheckpoint {
  /** Optimizer steps completed. */
  step: number;
  /** The flat LoRA parameter buffer (lora-parameters.ts layout). */
  parameters: Float32Array;
  adam: AdamWState;
  trainedTokens: number;
  elapsedSeconds: number;
  trainLoss: number;
  validLoss?: number;
  /** Digest of the settings, data and base model that decide every step; resuming requires the same. */
  fingerprint: string;
}

const FORMAT = 'lora-trainer-checkpoint/1';

export function serializeCheckpoint(checkpoint: TrainerCheckpoint): Uint8Array {
  const metadata: Record<string, string> = {
    format: FORMAT,
    step: String(checkpoint.step),
    adam_updates: String(checkpoint.adam.updates),
    trained_tokens: String(checkpoint.trainedTokens),
    elapsed_seconds: String(checkpoint.elapsedSeconds),
    train_loss: String(checkpoint.trainLoss),
    fingerprint: checkpoint.fingerprint,
  };
  if (checkpoint.validLoss !== undefined) metadata.valid_loss = String(checkpoint.validLoss);
  const flat = (data: Float32Array) => ({ dtype: 'F32' as const, shape: [data.length], data });
  return serializeSafetensors(
    { parameters: flat(checkpoint.parameters), 'adam.m': flat(checkpoint.adam.m), 'adam.v': flat(checkpoint.adam.v) },
    metadata,
  );
}

export function deserializeCheckpoint(bytes: Uint8Array): TrainerCheckpoint {
  const file = parseSafetensors(bytes, 'trainer checkpoint');
  const meta = file.metadata;
  if (meta.format !== FORMAT) throw new Error(`not a trainer checkpoint (format "${meta.format ?? ''}", expected "${FORMAT}")`);
  const tensor = (name: string) => {
    const entry = file.tensors.get(name);
    if (!entry) throw new Error(`trainer checkpoint lacks the tensor "${name}"`);
    return entryToFloat32(entry);
  };
  const count = (key: string) => {
    const value = Number(meta[key]);
    if (meta[key] === undefined || !Number.isFinite(value) || value < 0) throw new Error(`trainer checkpoint has an invalid "${key}": ${meta[key]}`);
    return value;
  };
  const parameters = tensor('parameters');
  const m = tensor('adam.m');
  const v = tensor('adam.v');
  if (m.length !== parameters.length || v.length !== parameters.length) throw new Error('trainer checkpoint: optimizer moments and parameters differ in size');
  return {
    step: count('step'),
    parameters,
    adam: { m, v, updates: count('adam_updates') },
    trainedTokens: count('trained_tokens'),
    elapsedSeconds: count('elapsed_seconds'),
    trainLoss: Number(meta.train_loss),
    ...(meta.valid_loss !== undefined ? { validLoss: Number(meta.valid_loss) } : {}),
    fingerprint: meta.fingerprint ?? '',
  };
}

/**
 * AdamW with decoupled weight decay (PyTorch's `torch.optim.AdamW`), global gradient-norm clipping
 * (`clip_grad_norm_`) and the learning-rate schedules of Hugging Face transformers (`get_linear_schedule_with_warmup`,
 * `get_cosine_schedule_with_warmup`), over flat float32 buffers.
 */

export interface AdamWSettings {
  learningRate: number;
  weightDecay: number;
  beta1: number;
  beta2: number;
  epsilon: number;
}

export const ADAMW_BETAS = { beta1: 0.9, beta2: 0.999, epsilon: 1e-8 } as const;

export interface AdamWState {
  /** First and second moment estimates, laid out like the parameters. */
  m: Float32Array;
  v: Float32Array;
  /** Updates applied so far (bias correction uses it). */
  updates: number;
}

export function newAdamWState(size: number): AdamWState {
  return { m: new Float32Array(size), v: new Float32Array(size), updates: 0 };
}

/** One update of `parameters` in place with learning rate `lr` (the schedule's value for this step). */
export function adamWStep(parameters: Float32Array, gradients: Float32Array, state: AdamWState, settings: AdamWSettings, lr: number): void {
  const { beta1, beta2, epsilon, weightDecay } = settings;
  state.updates += 1;
  const correction1 = 1 - beta1 ** state.updates;
  const correction2 = 1 - beta2 ** state.updates;
  const stepSize = lr / correction1;
  const decay = 1 - lr * weightDecay;
  const { m, v } = state;
  for (let i = 0; i < parameters.length; i++) {
    const g = gradients[i];
    m[i] = beta1 * m[i] + (1 - beta1) * g;
    v[i] = beta2 * v[i] + (1 - beta2) * g * g;
    parameters[i] = parameters[i] * decay - (stepSize * m[i]) / (Math.sqrt(v[i] / correction2) + epsilon);
  }
}

/** Scales `gradients` so their global L2 norm is at most `maxNorm`; returns the norm before clipping. */
export function clipGradientNorm(gradients: Float32Array, maxNorm: number): number {
  let sum = 0;
  for (let i = 0; i < gradients.length; i++) sum += gradients[i] * gradients[i];
  const norm = Math.sqrt(sum);
  const factor = maxNorm / (norm + 1e-6);
  if (factor < 1) for (let i = 0; i < gradients.length; i++) gradients[i] *= factor;
  return norm;
}

export type ScheduleKind = 'linear' | 'cosine';

/** The learning-rate multiplier of optimizer step `step` (0-based) of `total`, after `warmup` linear warm-up steps. */
export function scheduleFactor(kind: ScheduleKind, step: number, total: number, warmup: number): number {
  if (step < warmup) return step / Math.max(1, warmup);
  const progress = (step - warmup) / Math.max(1, total - warmup);
  if (kind === 'linear') return Math.max(0, 1 - progress);
  return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progress)));
}

import type { ModelRunner } from '../../src/runtime/model-runner.ts';

export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** Greedy tokens of one prompt on the base model, decoded alone in row 0 of a runner's first lane. */
export async function greedy(runner: ModelRunner, prompt: number[], count: number): Promise<number[]> {
  let logits = await runner.forward(0, [{ tokens: prompt, position: 0, slot: 0 }]);
  const out: number[] = [];
  for (let position = prompt.length; out.length < count; position++) {
    out.push(argmax(logits));
    logits = await runner.forward(0, [{ tokens: [out.at(-1)!], position, slot: 0 }]);
  }
  return out;
}

/**
 * Reverse-mode automatic differentiation over an OnnxGraphBuilder graph: walks the operations appended so far
 * backwards from the seeded outputs and appends, for each one on a path from a differentiated value to an
 * output, the ONNX nodes of its gradient (one rule per operator type, gradient-rules.ts). The forward graph
 * and its backward pass then run as one onnxruntime session.
 */
import type { GraphOp, OnnxGraphBuilder } from '../graph/onnx-builder.ts';
import { GRADIENT_RULES } from './gradient-rules.ts';
import { inferShapes, type Shape } from './shapes.ts';

/** What a gradient rule sees: the builder to append nodes to, and the shapes of the forward values. */
export interface GradientContext {
  g: OnnxGraphBuilder;
  shapeOf(value: string): Shape;
  /** Sums `gradient` (shaped like the broadcast result) over the axes along which `value` was broadcast. */
  unbroadcast(gradient: string, value: string, resultShape: Shape): string;
}

/**
 * Returns, per input, the gradient value, or undefined for inputs that need none (`needs[i]` false).
 * `outputGradients[i]` is undefined for outputs no differentiated path reaches.
 */
export type GradientRule = (
  ctx: GradientContext,
  op: GraphOp,
  outputGradients: (string | undefined)[],
  needs: boolean[],
) => (string | undefined)[];

/**
 * Appends the backward pass of everything computed so far in `g`. `seeds` maps forward values to the names of
 * their incoming gradients (for a scalar loss, a constant 1). Returns the gradient value of each of `wrt`.
 */
export function appendGradients(g: OnnxGraphBuilder, seeds: Map<string, string>, wrt: string[]): Map<string, string> {
  const ops = [...g.operations];
  const shapes = inferShapes(g, ops);
  const shapeOf = (value: string) => {
    const shape = shapes.get(value);
    if (!shape) throw new Error(`autodiff: no shape known for "${value}"`);
    return shape;
  };
  const ctx: GradientContext = { g, shapeOf, unbroadcast: (gradient, value, resultShape) => unbroadcast(g, gradient, shapeOf(value), resultShape) };

  // Values that depend on a differentiated one: only their producers' gradients are needed.
  const dependent = new Set(wrt);
  for (const op of ops) if (op.inputs.some((input) => dependent.has(input))) for (const output of op.outputs) dependent.add(output);

  const contributions = new Map<string, string[]>();
  for (const [value, gradient] of seeds) contributions.set(value, [gradient]);
  const gradientOf = (value: string): string | undefined => {
    const parts = contributions.get(value);
    if (!parts) return undefined;
    const sum = parts.reduce((total, part) => g.op('Add', [total, part]));
    contributions.set(value, [sum]);
    return sum;
  };

  for (let index = ops.length - 1; index >= 0; index--) {
    const op = ops[index];
    const needs = op.inputs.map((input) => dependent.has(input));
    if (!needs.some(Boolean)) continue;
    const outputGradients = op.outputs.map(gradientOf);
    if (outputGradients.every((gradient) => gradient === undefined)) continue;
    const rule = GRADIENT_RULES[op.opType];
    if (!rule) throw new Error(`autodiff: no gradient rule for ${op.opType} (node output "${op.outputs[0]}")`);
    const inputGradients = rule(ctx, op, outputGradients, needs);
    op.inputs.forEach((input, i) => {
      const gradient = inputGradients[i];
      if (!needs[i] || gradient === undefined) return;
      const parts = contributions.get(input) ?? [];
      parts.push(gradient);
      contributions.set(input, parts);
    });
  }

  const result = new Map<string, string>();
  for (const value of wrt) {
    const gradient = gradientOf(value);
    if (gradient === undefined) throw new Error(`autodiff: "${value}" does not influence the seeded outputs`);
    result.set(value, gradient);
  }
  return result;
}

/** Reduces a gradient of broadcast shape `resultShape` back to `valueShape` (numpy broadcasting rules). */
function unbroadcast(g: OnnxGraphBuilder, gradient: string, valueShape: Shape, resultShape: Shape): string {
  const leading = resultShape.length - valueShape.length;
  const stretched: number[] = [];
  for (let axis = leading; axis < resultShape.length; axis++) {
    if (valueShape[axis - leading] === 1 && resultShape[axis] !== 1) stretched.push(axis);
  }
  let result = gradient;
  if (stretched.length > 0) result = g.op('ReduceSum', [result, g.constInt64(stretched)], { keepdims: 1 });
  if (leading > 0) result = g.op('ReduceSum', [result, g.constInt64([...Array(leading).keys()])], { keepdims: 0 });
  return result;
}

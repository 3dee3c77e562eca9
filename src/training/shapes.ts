/**
 * Shape inference for the operators the decoder uses, as far as gradient rules need it: every value's rank, and
 * which of its dimensions are literally 1 (broadcast axes). Symbolic axes keep their names; a dimension nothing
 * can tell statically is null.
 */
import type { Dim, GraphOp, OnnxGraphBuilder } from '../graph/onnx-builder.ts';

export type Shape = (Dim | null)[];

type ShapeRule = (op: GraphOp, inputs: Shape[], g: OnnxGraphBuilder) => Shape[];

const sameAsFirst: ShapeRule = (_op, [x]) => [x];

function broadcast(shapes: Shape[]): Shape {
  const rank = Math.max(...shapes.map((s) => s.length));
  return Array.from({ length: rank }, (_, axis) => {
    const dims = shapes.map((s) => s[axis - (rank - s.length)]).filter((d) => d !== undefined);
    return dims.find((d) => d !== 1 && d !== null) ?? (dims.includes(null) ? null : 1);
  });
}

const normalizeAxis = (axis: number, rank: number) => (axis < 0 ? axis + rank : axis);

function constant(g: OnnxGraphBuilder, name: string, op: GraphOp): number[] {
  const values = g.int64Constant(name);
  if (!values) throw new Error(`autodiff: ${op.opType} "${op.outputs[0]}" needs a constant for "${name}"`);
  return values;
}

const SHAPE_RULES: Record<string, ShapeRule> = {
  Identity: sameAsFirst,
  Neg: sameAsFirst,
  Exp: sameAsFirst,
  Sigmoid: sameAsFirst,
  Softmax: sameAsFirst,
  LogSoftmax: sameAsFirst,
  RMSNormalization: sameAsFirst,
  // The normed value, the mean and the inverse root mean square over the last axis, and the sum x + skip.
  SkipSimplifiedLayerNormalization: (_op, [x]) => [x, [...x.slice(0, -1), 1], [...x.slice(0, -1), 1], x],
  Slice: (op, [x], g) => {
    const axes = constant(g, op.inputs[3], op).map((a) => normalizeAxis(a, x.length));
    return [x.map((d, axis) => (axes.includes(axis) ? null : d))];
  },
  Add: (_op, inputs) => [broadcast(inputs)],
  Sub: (_op, inputs) => [broadcast(inputs)],
  Mul: (_op, inputs) => [broadcast(inputs)],
  MatMul: (_op, [a, b]) => [[...broadcast([a.slice(0, -2), b.slice(0, -2)]), a.at(-2)!, b.at(-1)!]],
  Gemm: (op, [a, b]) => [[op.attributes.transA ? a[1] : a[0], op.attributes.transB ? b[0] : b[1]]],
  Transpose: (op, [x]) => [(op.attributes.perm as number[]).map((axis) => x[axis])],
  Reshape: (op, [x], g) => {
    const target = constant(g, op.inputs[1], op);
    return [target.map((d, axis) => (d === 0 ? x[axis] : d === -1 ? null : d))];
  },
  Flatten: (op, [x]) => {
    const axis = normalizeAxis((op.attributes.axis as number | undefined) ?? 1, x.length);
    const product = (dims: Shape) => dims.reduce<Dim | null>((p, d) => (typeof p === 'number' && typeof d === 'number' ? p * d : null), 1);
    return [[product(x.slice(0, axis)), product(x.slice(axis))]];
  },
  Split: (op, [x], g) => {
    const axis = normalizeAxis((op.attributes.axis as number | undefined) ?? 0, x.length);
    const sizes = g.int64Constant(op.inputs[1]);
    return op.outputs.map((_, i) => x.map((d, a) => (a === axis ? (sizes?.[i] ?? null) : d)));
  },
  Concat: (op, inputs) => {
    const axis = normalizeAxis(op.attributes.axis as number, inputs[0].length);
    const total = inputs.reduce<Dim | null>((sum, s) => (typeof sum === 'number' && typeof s[axis] === 'number' ? sum + (s[axis] as number) : null), 0);
    return [inputs[0].map((d, a) => (a === axis ? total : d))];
  },
  Gather: (op, [data, indices]) => {
    const axis = normalizeAxis((op.attributes.axis as number | undefined) ?? 0, data.length);
    return [[...data.slice(0, axis), ...indices, ...data.slice(axis + 1)]];
  },
  GatherElements: (_op, [, indices]) => [indices],
  ReduceSum: (op, [x], g) => {
    const keep = (op.attributes.keepdims as number | undefined) ?? 1;
    const axes = op.inputs[1] ? constant(g, op.inputs[1], op).map((a) => normalizeAxis(a, x.length)) : x.map((_, a) => a);
    return [keep ? x.map((d, a) => (axes.includes(a) ? 1 : d)) : x.filter((_, a) => !axes.includes(a))];
  },
};

/** Shapes of every value computed by `ops`, starting from the builder's declared inputs and initializers. */
export function inferShapes(g: OnnxGraphBuilder, ops: readonly GraphOp[]): Map<string, Shape> {
  const shapes = new Map<string, Shape>();
  const shapeOf = (name: string, op: GraphOp): Shape => {
    const known = shapes.get(name) ?? g.declaration(name)?.dims;
    if (!known) throw new Error(`autodiff: shape of "${name}" (input of ${op.opType}) is unknown`);
    return known;
  };
  for (const op of ops) {
    const rule = SHAPE_RULES[op.opType];
    if (!rule) continue; // not differentiable here; a gradient that needs it fails with a clear error
    const inferred = rule(op, op.inputs.filter((name) => name !== '').map((name) => shapeOf(name, op)), g);
    op.outputs.forEach((output, i) => shapes.set(output, inferred[i]));
  }
  for (const op of ops) for (const input of op.inputs) if (!shapes.has(input) && g.declaration(input)) shapes.set(input, g.declaration(input)!.dims);
  return shapes;
}

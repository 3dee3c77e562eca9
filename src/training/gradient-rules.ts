/**
 * One gradient rule per operator of the decoder and its loss, each emitting standard ONNX nodes (the shape of
 * onnxruntime-training's gradient builder). Notation: for y = op(x…), `dy` is the incoming gradient of y and a
 * rule returns dx for each input it is asked for.
 */
import type { GraphOp, OnnxGraphBuilder } from '../graph/onnx-builder.ts';
import type { GradientContext, GradientRule } from './autodiff.ts';

const rank = (ctx: GradientContext, value: string) => ctx.shapeOf(value).length;

/** Swaps the last two axes. */
function transposeLast(ctx: GradientContext, value: string): string {
  const r = rank(ctx, value);
  const perm = [...Array(r).keys()];
  [perm[r - 2], perm[r - 1]] = [perm[r - 1], perm[r - 2]];
  return ctx.g.op('Transpose', [value], { perm });
}

function zerosLike(g: OnnxGraphBuilder, value: string): string {
  return g.op('ConstantOfShape', [g.op('Shape', [value])]);
}

function attr(op: GraphOp, name: string, fallback: number): number {
  return (op.attributes[name] as number | undefined) ?? fallback;
}

/** Sizes of `values` along `axis`, as a 1-D int64 tensor computed at run time. */
function sizesAlong(g: OnnxGraphBuilder, values: string[], axis: number): string {
  const sizes = values.map((value) => g.op('Shape', [value], { start: axis, end: axis + 1 }));
  return sizes.length === 1 ? sizes[0] : g.op('Concat', sizes, { axis: 0 });
}

const normalizeAxis = (axis: number, r: number) => (axis < 0 ? axis + r : axis);

/** x + y, x − y, x · y: the elementwise rule, then a sum over the axes each input was broadcast along. */
const elementwise =
  (local: (ctx: GradientContext, op: GraphOp, dy: string, input: number) => string): GradientRule =>
  (ctx, op, [dy], needs) => {
    const result = ctx.shapeOf(op.outputs[0]);
    return op.inputs.map((input, i) => (needs[i] ? ctx.unbroadcast(local(ctx, op, dy!, i), input, result) : undefined));
  };

export const GRADIENT_RULES: Record<string, GradientRule> = {
  Identity: (_ctx, _op, [dy]) => [dy],
  Neg: (ctx, _op, [dy]) => [ctx.g.op('Neg', [dy!])],
  Add: elementwise((_ctx, _op, dy) => dy),
  Sub: elementwise((ctx, _op, dy, i) => (i === 0 ? dy : ctx.g.op('Neg', [dy]))),
  Mul: elementwise((ctx, op, dy, i) => ctx.g.op('Mul', [dy, op.inputs[1 - i]])),

  // y = σ(x): dx = dy · y · (1 − y)
  Sigmoid: (ctx, op, [dy]) => {
    const { g } = ctx;
    const y = op.outputs[0];
    return [g.op('Mul', [dy!, g.op('Mul', [y, g.op('Sub', [g.constFloat(1), y])])])];
  },
  // y = exp(x)
  Exp: (ctx, op, [dy]) => [ctx.g.op('Mul', [dy!, op.outputs[0]])],

  // y = softmax(x): dx = y · (dy − Σ dy·y)
  Softmax: (ctx, op, [dy]) => {
    const { g } = ctx;
    const y = op.outputs[0];
    const axis = g.constInt64([attr(op, 'axis', -1)]);
    const dot = g.op('ReduceSum', [g.op('Mul', [dy!, y]), axis], { keepdims: 1 });
    return [g.op('Mul', [y, g.op('Sub', [dy!, dot])])];
  },
  // y = log softmax(x): dx = dy − exp(y) · Σ dy
  LogSoftmax: (ctx, op, [dy]) => {
    const { g } = ctx;
    const total = g.op('ReduceSum', [dy!, g.constInt64([attr(op, 'axis', -1)])], { keepdims: 1 });
    return [g.op('Sub', [dy!, g.op('Mul', [g.op('Exp', [op.outputs[0]]), total])])];
  },

  /**
   * y = x · r · w with r = 1/√(mean(x²) + ε) over the last axis. With n = x · r and dn = dy · w:
   * dx = r · (dn − n · mean(dn · n)); dw = Σ dy · n over every other axis. r is recomputed, not saved.
   */
  RMSNormalization: (ctx, op, [dy], needs) => {
    const { g } = ctx;
    const [x, w] = op.inputs;
    if (attr(op, 'axis', -1) !== -1 && attr(op, 'axis', -1) !== rank(ctx, x) - 1) {
      throw new Error('autodiff: RMSNormalization is differentiated over the last axis only');
    }
    const epsilon = (op.attributes.epsilon as { float: number } | undefined)?.float ?? 1e-5;
    const last = g.constInt64([-1]);
    const meanSquare = g.op('ReduceMean', [g.op('Mul', [x, x]), last], { keepdims: 1 });
    const r = g.op('Reciprocal', [g.op('Sqrt', [g.op('Add', [meanSquare, g.constFloat(epsilon)])])]);
    const n = g.op('Mul', [x, r]);
    const dx = () => {
      const dn = g.op('Mul', [dy!, w]);
      const projection = g.op('ReduceMean', [g.op('Mul', [dn, n]), last], { keepdims: 1 });
      return g.op('Mul', [r, g.op('Sub', [dn, g.op('Mul', [n, projection])])]);
    };
    return [needs[0] ? dx() : undefined, needs[1] ? ctx.unbroadcast(g.op('Mul', [dy!, n]), w, ctx.shapeOf(op.outputs[0])) : undefined];
  },

  /**
   * y = RMSNorm(s) · w and s = x + skip (outputs 0 and 3): ds = dy through the RMSNorm rule plus s's own
   * gradient, and dx = dskip = ds.
   */
  SkipSimplifiedLayerNormalization: (ctx, op, [dy, , , dSum], needs) => {
    const [x, skip, w] = op.inputs;
    const [y, , , sum] = op.outputs;
    const norm: GraphOp = { opType: 'RMSNormalization', inputs: [sum, w], outputs: [y], attributes: { axis: -1, epsilon: op.attributes.epsilon } };
    const [fromNorm, dw] = dy ? GRADIENT_RULES.RMSNormalization(ctx, norm, [dy], [true, needs[2]]) : [undefined, undefined];
    const ds = fromNorm && dSum ? ctx.g.op('Add', [fromNorm, dSum]) : (fromNorm ?? dSum);
    return [needs[0] ? ctx.unbroadcast(ds!, x, ctx.shapeOf(sum)) : undefined, needs[1] ? ctx.unbroadcast(ds!, skip, ctx.shapeOf(sum)) : undefined, dw];
  },

  /**
   * y = a · b (batched): da = dy · bᵀ, db = aᵀ · dy, summed over broadcast batch axes. A 2-D b under a batched a
   * (a projection weight) gets one large product over the flattened rows instead of a batch of small ones.
   */
  MatMul: (ctx, op, [dy], needs) => {
    const { g } = ctx;
    const [a, b] = op.inputs;
    const result = ctx.shapeOf(op.outputs[0]);
    const da = () => ctx.unbroadcast(g.op('MatMul', [dy!, transposeLast(ctx, b)]), a, result);
    const db = () => {
      if (rank(ctx, b) === 2 && rank(ctx, a) > 2) {
        const flatA = g.op('Flatten', [a], { axis: rank(ctx, a) - 1 });
        const flatDy = g.op('Flatten', [dy!], { axis: rank(ctx, a) - 1 });
        return g.op('Gemm', [flatA, flatDy], { transA: 1 });
      }
      return ctx.unbroadcast(g.op('MatMul', [transposeLast(ctx, a), dy!]), b, result);
    };
    return [needs[0] ? da() : undefined, needs[1] ? db() : undefined];
  },
  /** y = a · b (2-D, optional transposes, no bias term). */
  Gemm: (ctx, op, [dy], needs) => {
    const { g } = ctx;
    const [a, b] = op.inputs;
    if (op.inputs.length > 2 || attr(op, 'transA', 0) || op.attributes.alpha !== undefined || op.attributes.beta !== undefined) {
      throw new Error('autodiff: Gemm is differentiated without bias, transA, alpha or beta only');
    }
    const transB = attr(op, 'transB', 0);
    const da = () => g.op('Gemm', [dy!, b], transB ? {} : { transB: 1 });
    const db = () => (transB ? g.op('Gemm', [dy!, a], { transA: 1 }) : g.op('Gemm', [a, dy!], { transA: 1 }));
    return [needs[0] ? da() : undefined, needs[1] ? db() : undefined];
  },

  Reshape: (ctx, op, [dy]) => [ctx.g.op('Reshape', [dy!, ctx.g.op('Shape', [op.inputs[0]])])],
  Flatten: (ctx, op, [dy]) => [ctx.g.op('Reshape', [dy!, ctx.g.op('Shape', [op.inputs[0]])])],
  Transpose: (ctx, op, [dy]) => {
    const perm = op.attributes.perm as number[];
    const inverse = perm.map((_, i) => perm.indexOf(i));
    return [ctx.g.op('Transpose', [dy!], { perm: inverse })];
  },

  /** Only a whole-axis reversal (RoPE's half swap) is differentiated: its gradient is the same reversal. */
  Slice: (ctx, op, [dy]) => {
    const { g } = ctx;
    const [starts, ends, , steps] = [1, 2, 3, 4].map((i) => g.int64Constant(op.inputs[i]));
    const reversal = steps?.length === 1 && steps[0] === -1 && starts?.[0] === -1 && ends !== undefined && ends[0] <= -Number.MAX_SAFE_INTEGER;
    if (!reversal) throw new Error(`autodiff: only whole-axis reversing Slices are differentiated ("${op.outputs[0]}")`);
    return [g.op('Slice', [dy!, ...op.inputs.slice(1)])];
  },

  Split: (ctx, op, outputGradients) => {
    const axis = attr(op, 'axis', 0);
    const parts = outputGradients.map((dy, i) => dy ?? zerosLike(ctx.g, op.outputs[i]));
    return [ctx.g.op('Concat', parts, { axis })];
  },
  Concat: (ctx, op, [dy]) => {
    const axis = normalizeAxis(attr(op, 'axis', 0), rank(ctx, op.inputs[0]));
    return ctx.g.opMulti('Split', [dy!, sizesAlong(ctx.g, op.inputs, axis)], op.inputs.length, { axis });
  },

  /** Rows gathered from `data` (an embedding): their gradients are added back into the rows they came from. */
  Gather: (ctx, op, [dy], needs) => {
    const { g } = ctx;
    const [data, indices] = op.inputs;
    if (attr(op, 'axis', 0) !== 0) throw new Error('autodiff: Gather is differentiated along axis 0 only');
    const index = g.op('Unsqueeze', [indices, g.constInt64([-1])]);
    return [needs[0] ? g.op('ScatterND', [zerosLike(g, data), index, dy!], { reduction: 'add' }) : undefined];
  },
  GatherElements: (ctx, op, [dy], needs) => {
    const { g } = ctx;
    const [data, indices] = op.inputs;
    const axis = attr(op, 'axis', 0);
    return [needs[0] ? g.op('ScatterElements', [zerosLike(g, data), indices, dy!], { axis, reduction: 'add' }) : undefined];
  },

  ReduceSum: (ctx, op, [dy]) => {
    const { g } = ctx;
    const [x, axes] = op.inputs;
    const kept = attr(op, 'keepdims', 1) || !axes ? dy! : g.op('Unsqueeze', [dy!, axes]);
    return [g.op('Expand', [kept, g.op('Shape', [x])])];
  },
};

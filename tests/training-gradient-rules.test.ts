import { test } from 'node:test';
import assert from 'node:assert/strict';
import { OnnxGraphBuilder } from '../src/graph/onnx-builder.ts';
import { CONTRIB_DOMAIN } from '../src/graph/base-projection.ts';
import { OPSET } from '../src/graph/decoder-graph.ts';
import { appendGradients } from '../src/training/autodiff.ts';
import { createTrainingSession, float32Tensor, int64Tensor } from '../src/training/ort-session.ts';
import { createRng, randomNormal } from '../src/engine/random.ts';

interface FloatInput {
  name: string;
  dims: number[];
  /** Defaults to standard normal values. */
  data?: Float32Array;
}

/**
 * Builds y = op(inputs), the loss Σ y·R with a fixed random R, and the backward pass of every float input; then
 * checks each gradient element against a central finite difference of the loss computed by the same session.
 */
async function checkRule(
  label: string,
  inputs: FloatInput[],
  forward: (g: OnnxGraphBuilder, names: string[]) => string,
  constants: Record<string, { data: BigInt64Array; dims: number[] }> = {},
): Promise<void> {
  const rng = createRng(label.length * 7919);
  const g = new OnnxGraphBuilder('rule');
  const names = inputs.map((input) => g.input(input.name, 'float32', input.dims));
  for (const [name, { dims }] of Object.entries(constants)) g.input(name, 'int64', dims);
  const y = forward(g, [...names, ...Object.keys(constants)]);
  // The output's size is learned by running the forward part once: R is an input of that size.
  const probe = new OnnxGraphBuilder('probe');
  for (const input of inputs) probe.input(input.name, 'float32', input.dims);
  for (const [name, { dims }] of Object.entries(constants)) probe.input(name, 'int64', dims);
  probe.output(forward(probe, [...names, ...Object.keys(constants)]), 'y', 'float32');
  const values = inputs.map((input) => input.data ?? Float32Array.from({ length: input.dims.reduce((a, b) => a * b, 1) }, () => randomNormal(rng)));
  const constFeeds = Object.fromEntries(Object.entries(constants).map(([name, c]) => [name, int64Tensor(c.data, c.dims)]));
  const feedsFor = (vals: Float32Array[]) => ({ ...constFeeds, ...Object.fromEntries(inputs.map((input, i) => [input.name, float32Tensor(vals[i], input.dims)])) });
  const probed = (await (await createTrainingSession(probe.build(OPSET), 1)).run(feedsFor(values))).y;
  const weight = Float32Array.from({ length: probed.data.length }, () => randomNormal(rng));

  const r = g.input('loss_weight', 'float32', probed.dims as number[]);
  const loss = g.op('ReduceSum', [g.op('Mul', [y, r])], { keepdims: 0 });
  const gradients = appendGradients(g, new Map([[loss, g.constFloat(1)]]), names);
  g.output(loss, 'loss', 'float32', []);
  names.forEach((name) => g.output(gradients.get(name)!, `grad_${name}`, 'float32', inputs.find((i) => i.name === name)!.dims));
  const session = await createTrainingSession(g.build(OPSET), 1);
  const run = async (vals: Float32Array[]) => session.run({ ...feedsFor(vals), loss_weight: float32Tensor(weight, probed.dims as number[]) });
  const analytic = await run(values);

  const eps = 1e-2;
  for (const [index, input] of inputs.entries()) {
    const gradient = analytic[`grad_${input.name}`].data as Float32Array;
    assert.equal(gradient.length, values[index].length, `${label}: gradient of ${input.name} has the input's size`);
    for (let element = 0; element < gradient.length; element++) {
      const lossAt = async (delta: number) => {
        const shifted = values.map((v) => Float32Array.from(v));
        shifted[index][element] += delta;
        return ((await run(shifted)).loss.data as Float32Array)[0];
      };
      const numeric = ((await lossAt(eps)) - (await lossAt(-eps))) / (2 * eps);
      assert.ok(
        Math.abs(numeric - gradient[element]) <= 2e-3 * Math.max(1, Math.abs(numeric)),
        `${label}: d loss / d ${input.name}[${element}] is ${gradient[element]}, central difference says ${numeric}`,
      );
    }
  }
}

const int64 = (values: number[]) => BigInt64Array.from(values, BigInt);

test('elementwise rules sum over broadcast axes (Add, Sub, Mul, Neg, Identity)', async () => {
  await checkRule('Add', [{ name: 'a', dims: [2, 3, 4] }, { name: 'b', dims: [1, 3, 1] }], (g, [a, b]) => g.op('Add', [a, b]));
  await checkRule('Sub', [{ name: 'a', dims: [2, 3] }, { name: 'b', dims: [3] }], (g, [a, b]) => g.op('Sub', [a, b]));
  await checkRule('Mul', [{ name: 'a', dims: [2, 3, 4] }, { name: 'b', dims: [4] }], (g, [a, b]) => g.op('Mul', [a, b]));
  await checkRule('Mul by itself', [{ name: 'a', dims: [5] }], (g, [a]) => g.op('Mul', [a, a]));
  await checkRule('Neg', [{ name: 'a', dims: [2, 3] }], (g, [a]) => g.op('Neg', [g.op('Identity', [a])]));
});

test('MatMul and Gemm rules: batched, broadcast batch, a 2-D weight under batched rows, transposed B', async () => {
  await checkRule('MatMul batched', [{ name: 'a', dims: [2, 3, 4] }, { name: 'b', dims: [2, 4, 5] }], (g, [a, b]) => g.op('MatMul', [a, b]));
  await checkRule('MatMul 2-D weight', [{ name: 'a', dims: [2, 3, 4] }, { name: 'b', dims: [4, 5] }], (g, [a, b]) => g.op('MatMul', [a, b]));
  await checkRule('MatMul broadcast', [{ name: 'a', dims: [2, 2, 3, 4] }, { name: 'b', dims: [1, 2, 4, 3] }], (g, [a, b]) => g.op('MatMul', [a, b]));
  await checkRule('Gemm', [{ name: 'a', dims: [3, 4] }, { name: 'b', dims: [5, 4] }], (g, [a, b]) => g.op('Gemm', [a, b], { transB: 1 }));
  await checkRule('Gemm plain', [{ name: 'a', dims: [3, 4] }, { name: 'b', dims: [4, 2] }], (g, [a, b]) => g.op('Gemm', [a, b]));
});

test('Sigmoid, Exp, Softmax, LogSoftmax, RMSNormalization and SkipSimplifiedLayerNormalization rules', async () => {
  await checkRule('Sigmoid', [{ name: 'a', dims: [2, 5] }], (g, [a]) => g.op('Mul', [a, g.op('Sigmoid', [a])]));
  await checkRule('Exp', [{ name: 'a', dims: [6] }], (g, [a]) => g.op('Exp', [a]));
  await checkRule('Softmax', [{ name: 'a', dims: [2, 2, 3, 4] }], (g, [a]) => g.op('Softmax', [a], { axis: 3 }));
  await checkRule('LogSoftmax', [{ name: 'a', dims: [3, 5] }], (g, [a]) => g.op('LogSoftmax', [a], { axis: 1 }));
  await checkRule(
    'RMSNormalization',
    [{ name: 'x', dims: [2, 3, 8] }, { name: 'w', dims: [8] }],
    (g, [x, w]) => g.op('RMSNormalization', [x, w], { axis: -1, epsilon: { float: 1e-5 } }),
  );
  // The fused residual Add + RMSNorm: its normed output and its sum both feed the loss, or the norm alone.
  const skipNorm = (g: OnnxGraphBuilder, [x, skip, w]: string[]) =>
    g.opMulti('SkipSimplifiedLayerNormalization', [x, skip, w], 4, { epsilon: { float: 1e-5 } }, undefined, CONTRIB_DOMAIN);
  const skipInputs = [{ name: 'x', dims: [2, 3, 8] }, { name: 'skip', dims: [2, 3, 8] }, { name: 'w', dims: [8] }];
  await checkRule('SkipSimplifiedLayerNormalization', skipInputs, (g, names) => {
    const [y, , , sum] = skipNorm(g, names);
    return g.op('Add', [y, g.op('Mul', [sum, sum])]);
  });
  await checkRule('SkipSimplifiedLayerNormalization, norm only', skipInputs, (g, names) => skipNorm(g, names)[0]);
});

test('layout rules: Reshape, Flatten, Transpose, the RoPE half-swap Slice, Split (one part unused), Concat', async () => {
  await checkRule('Reshape', [{ name: 'a', dims: [2, 6] }], (g, [a]) => g.op('Reshape', [a, g.constInt64([0, 3, 2])]));
  await checkRule('Flatten', [{ name: 'a', dims: [2, 3, 2] }], (g, [a]) => g.op('Flatten', [a], { axis: 2 }));
  await checkRule('Transpose', [{ name: 'a', dims: [2, 3, 4, 2] }], (g, [a]) => g.op('Transpose', [a], { perm: [0, 2, 1, 3] }));
  await checkRule('Slice', [{ name: 'a', dims: [1, 2, 3, 2, 2] }], (g, [a]) =>
    g.op('Mul', [a, g.op('Slice', [a, g.constInt64([-1]), g.constInt64([-Number.MAX_SAFE_INTEGER]), g.constInt64([3]), g.constInt64([-1])])]),
  );
  await checkRule('Split', [{ name: 'a', dims: [2, 7] }], (g, [a]) => {
    const [first, , third] = g.opMulti('Split', [a, g.constInt64([2, 3, 2])], 3, { axis: 1 });
    return g.op('Mul', [first, third]);
  });
  await checkRule('Concat', [{ name: 'a', dims: [2, 2, 3] }, { name: 'b', dims: [2, 1, 3] }], (g, [a, b]) =>
    g.op('Sigmoid', [g.op('Concat', [a, b], { axis: 1 })]),
  );
});

test('gather rules add gradients back into the gathered rows, repeated indices included', async () => {
  await checkRule('Gather', [{ name: 'table', dims: [6, 4] }], (g, [table, ids]) => g.op('Gather', [table, ids], { axis: 0 }), {
    ids: { data: int64([1, 4, 1, 0, 5, 1]), dims: [2, 3] },
  });
  await checkRule('GatherElements', [{ name: 'a', dims: [3, 5] }], (g, [a, ids]) => g.op('GatherElements', [g.op('LogSoftmax', [a], { axis: 1 }), ids], { axis: 1 }), {
    ids: { data: int64([4, 0, 2]), dims: [3, 1] },
  });
  await checkRule('ReduceSum', [{ name: 'a', dims: [2, 3, 4] }], (g, [a]) => g.op('Mul', [g.op('ReduceSum', [a, g.constInt64([1])], { keepdims: 0 }), g.op('ReduceSum', [a, g.constInt64([1])], { keepdims: 0 })]));
});

test('a value no output depends on is refused with a clear error', () => {
  const g = new OnnxGraphBuilder('unused');
  const a = g.input('a', 'float32', [2]);
  const b = g.input('b', 'float32', [2]);
  const loss = g.op('ReduceSum', [a], { keepdims: 0 });
  assert.throws(() => appendGradients(g, new Map([[loss, g.constFloat(1)]]), [b]), /"b" does not influence the seeded outputs/);
});

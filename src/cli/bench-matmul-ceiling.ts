/**
 * The most a quantized base can gain over float32 from its matmuls alone: a chain of 60 projections with the
 * benchmark model's MLP shapes (576 → 1536 → 576 …), built by the decoder graph's own `baseProjection` as float32
 * MatMul, Q8_0 and Q4_0 MatMulNBits, timed at 1 and 16 rows, interleaved within each trial. A decode step also runs
 * attention and small operators that no weight format speeds up, so a step's gain stays below this ceiling: a
 * ratio here under a goal means onnxruntime's kernel, not the graph around it, stands in the way.
 */
import * as ort from 'onnxruntime-node';
import { createRng, randomNormal } from '../engine/random.ts';
import { OPSET } from '../graph/decoder-graph.ts';
import { baseProjection, type ProjectionWeight } from '../graph/base-projection.ts';
import { EXTERNAL_DATA_FILE, OnnxGraphBuilder } from '../graph/onnx-builder.ts';
import { quantizeMatrix } from '../model/quantize.ts';
import { SMOLLM2_135M_SHAPE } from '../model/random-model.ts';
import { median, ratioSummary, round } from './bench-stats.ts';

const CHAIN = 60;
const ROWS = [1, 16] as const;
const FORMS = ['f32', 'q8', 'q4'] as const;
type Form = (typeof FORMS)[number];
/** Chain runs per timing: enough that one timing is tens of milliseconds. */
const REPEATS = 5;

function randomWeight(rows: number, columns: number, seed: number): Float32Array {
  const rng = createRng(seed);
  return Float32Array.from({ length: rows * columns }, () => 0.02 * randomNormal(rng));
}

async function chainSession(form: Form, threads: number): Promise<ort.InferenceSession> {
  const { hiddenSize, intermediateSize } = SMOLLM2_135M_SHAPE;
  const g = new OnnxGraphBuilder(`matmul_chain_${form}`);
  let x = g.input('x', 'float32', ['rows', hiddenSize]);
  for (let i = 0; i < CHAIN; i++) {
    const [inDim, outDim] = i % 2 === 0 ? [hiddenSize, intermediateSize] : [intermediateSize, hiddenSize];
    const data = randomWeight(outDim, inDim, i);
    const weight: ProjectionWeight = form === 'f32' ? { shape: [outDim, inDim], data } : quantizeMatrix(data, [outDim, inDim], form);
    x = baseProjection(g, x, [weight], `chain.${i}`, { inputRank: 2 });
  }
  g.output(x, 'y', 'float32', ['rows', hiddenSize]);
  const built = g.build(OPSET);
  return ort.InferenceSession.create(built.modelBytes, {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    externalData: [{ path: EXTERNAL_DATA_FILE, data: built.weights }],
  });
}

async function timeChain(session: ort.InferenceSession, rows: number): Promise<number> {
  const x = new ort.Tensor('float32', new Float32Array(rows * SMOLLM2_135M_SHAPE.hiddenSize).fill(0.5), [rows, SMOLLM2_135M_SHAPE.hiddenSize]);
  await session.run({ x });
  const start = performance.now();
  for (let i = 0; i < REPEATS; i++) await session.run({ x });
  return (performance.now() - start) / REPEATS;
}

/** Milliseconds per chain for each form and row count, and each quantized form's per-trial speed-up over float32. */
export async function measureMatmulCeiling(options: { trials: number; threads: number }) {
  const sessions = {} as Record<Form, ort.InferenceSession>;
  try {
    for (const form of FORMS) sessions[form] = await chainSession(form, options.threads);
    const ms = Object.fromEntries(FORMS.map((form) => [form, Object.fromEntries(ROWS.map((rows) => [rows, [] as number[]]))])) as Record<Form, Record<number, number[]>>;
    for (let trial = 0; trial < options.trials; trial++) {
      for (const rows of ROWS) {
        // Rotate the order so no form always runs first (cache state, frequency ramp).
        for (let k = 0; k < FORMS.length; k++) {
          const form = FORMS[(trial + k) % FORMS.length];
          ms[form][rows].push(await timeChain(sessions[form], rows));
        }
      }
    }
    const speedUp = (form: Form, rows: number) => ratioSummary(ms.f32[rows], ms[form][rows]);
    return {
      chain: `${CHAIN} projections ${SMOLLM2_135M_SHAPE.hiddenSize}↔${SMOLLM2_135M_SHAPE.intermediateSize}, ${options.threads} threads`,
      ms_per_chain: Object.fromEntries(FORMS.map((form) => [form, Object.fromEntries(ROWS.map((rows) => [`rows_${rows}`, round(median(ms[form][rows]), 2)]))])),
      speed_up_vs_f32: Object.fromEntries(ROWS.map((rows) => [`rows_${rows}`, { q8: speedUp('q8', rows), q4: speedUp('q4', rows) }])),
    };
  } finally {
    for (const session of Object.values(sessions)) await session.release();
  }
}

/**
 * One decode step of the model runner (no engine, no sampling), for comparing graph formulations: the benchmark
 * model as float32, Q8_0 and Q4_0, built by each of several source trees (this checkout and, say, an export of an
 * earlier commit), each (tree, form) in a process of its own, trials interleaved with the trees' order alternating.
 * It reports wall and process CPU time per step at 1 and 16 rows, each tree's per-trial speed ratio against the
 * first tree and each quantized form's against float32, and per process the CPU and wall seconds of creating the
 * runner's sessions (from graphs in memory) and the resident memory after warm-up. CPU time (both onnxruntime threads) is stretched far less
 * than wall time when other work shares the machine.
 *   npm run bench:decode-steps -- [--trees /path/to/earlier,.] [--trials N] [--json]
 * A tree must hold src/ and node_modules/ (a symlink will do) and .bench/ with the benchmark model.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { once } from 'node:events';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { BENCH_MODEL_DIR, ensureBenchModel } from '../model/bench-model.ts';
import { median, ratioSummary, round } from './bench-stats.ts';
import { log, printReport, runBenchCommand } from './bench-workloads.ts';

const FORMS = ['f32', 'q8', 'q4'] as const;
const ROWS = [1, 16] as const;
/** Steps timed per trial at each row count (a 16-row step takes several times a one-row step). */
const STEPS = { 1: 24, 16: 8 } as const;
/** Positions decoded before timing (first-run allocations). */
const WARMUP_STEPS = 8;

interface Timing {
  wallMs: number;
  cpuMs: number;
}

/** The child side: one tree's runner for one form, timing steps of the rows its parent asks for. */
async function serveSteps(tree: string, form: (typeof FORMS)[number]): Promise<void> {
  process.chdir(tree);
  const { compileBaseModel } = await import(resolve(tree, 'src/runtime/compiled-model-cache.ts'));
  const { ModelRunner } = await import(resolve(tree, 'src/runtime/model-runner.ts'));
  const model = await compileBaseModel(BENCH_MODEL_DIR, form === 'f32' ? {} : { quantize: form });
  const options = { maxBatch: 16, adapterSlots: 16, maxLoraRank: 16, maxPositions: 2048, threads: 2 };
  const cpuBefore = process.cpuUsage();
  const wallBefore = performance.now();
  // Trees from before the base-only graph serve one graph, through `fromGraph`.
  const runner = ModelRunner.fromGraphs
    ? await ModelRunner.fromGraphs(model.graphs, model.config, options, model.rowNorms)
    : await ModelRunner.fromGraph(model.graph, model.config, options, model.rowNorms);
  const rowsAt = (rows: number, position: number) => Array.from({ length: rows }, (_, b) => ({ tokens: [1 + b], position, slot: 0 }));
  const sessionCpu = process.cpuUsage(cpuBefore);
  const sessionWallMs = performance.now() - wallBefore;
  for (const rows of ROWS) for (let p = 0; p < WARMUP_STEPS; p++) await runner.forward(0, rowsAt(rows, p));
  process.send!({
    sessionCpuS: (sessionCpu.user + sessionCpu.system) / 1e6,
    sessionWallS: sessionWallMs / 1000,
    rssMib: process.memoryUsage().rss / 2 ** 20,
  } satisfies Setup);
  process.on('message', async ({ rows }: { rows: (typeof ROWS)[number] }) => {
    const steps = STEPS[rows];
    const cpu = process.cpuUsage();
    const start = performance.now();
    for (let s = 0; s < steps; s++) await runner.forward(0, rowsAt(rows, WARMUP_STEPS + s));
    const used = process.cpuUsage(cpu);
    process.send!({ wallMs: (performance.now() - start) / steps, cpuMs: (used.user + used.system) / 1000 / steps } satisfies Timing);
  });
}

/** What one (tree, form) process reports once its runner is warm: creating the sessions, and memory after warm-up. */
interface Setup {
  sessionCpuS: number;
  sessionWallS: number;
  rssMib: number;
}

async function reply<T>(child: ChildProcess): Promise<T> {
  const exited = once(child, 'exit').then(([code]) => Promise.reject(new Error(`a benchmark process exited (${code})`)));
  return ((await Promise.race([once(child, 'message'), exited])) as [T])[0];
}

export async function measureDecodeSteps(trees: string[], trials: number) {
  const children = new Map<string, ChildProcess>();
  const setups = new Map<string, Setup>();
  const key = (tree: string, form: string) => `${tree}|${form}`;
  try {
    for (const form of FORMS) {
      for (const tree of trees) {
        log(`decode steps: loading ${form} from ${tree} ...`);
        const child = fork(fileURLToPath(import.meta.url), ['--serve', tree, '--form', form], { execArgv: ['--import', 'tsx'] });
        setups.set(key(tree, form), await reply<Setup>(child));
        children.set(key(tree, form), child);
      }
    }
    const timings = new Map<string, Timing[]>();
    for (let trial = 0; trial < trials; trial++) {
      log(`decode steps: trial ${trial + 1}/${trials} ...`);
      const order = trial % 2 === 0 ? trees : [...trees].reverse();
      for (const rows of ROWS) {
        for (const form of FORMS) {
          for (const tree of order) {
            const child = children.get(key(tree, form))!;
            child.send({ rows });
            const name = `${key(tree, form)}|${rows}`;
            timings.set(name, [...(timings.get(name) ?? []), await reply<Timing>(child)]);
          }
        }
      }
    }
    const series = (tree: string, form: string, rows: number, measure: keyof Timing) => timings.get(`${key(tree, form)}|${rows}`)!.map((t) => t[measure]);
    const report: Record<string, unknown> = { trees, trials, model: 'SmolLM2-135M shape, random weights; base-model rows only' };
    for (const measure of ['sessionCpuS', 'sessionWallS', 'rssMib'] as const) {
      report[`${measure}_at_start`] = Object.fromEntries(trees.map((tree) => [tree, Object.fromEntries(FORMS.map((form) => [form, round(setups.get(key(tree, form))![measure], 2)]))]));
    }
    for (const measure of ['cpuMs', 'wallMs'] as const) {
      for (const rows of ROWS) {
        report[`${measure}_per_step_${rows}_rows`] = Object.fromEntries(trees.map((tree) => [tree, Object.fromEntries(FORMS.map((form) => [form, round(median(series(tree, form, rows, measure)))]))]));
        report[`${measure}_speed_vs_f32_${rows}_rows`] = Object.fromEntries(
          trees.map((tree) => [tree, Object.fromEntries(FORMS.slice(1).map((form) => [form, ratioSummary(series(tree, 'f32', rows, measure), series(tree, form, rows, measure))]))]),
        );
        report[`${measure}_speed_vs_first_tree_${rows}_rows`] = Object.fromEntries(
          trees.slice(1).map((tree) => [tree, Object.fromEntries(FORMS.map((form) => [form, ratioSummary(series(trees[0], form, rows, measure), series(tree, form, rows, measure))]))]),
        );
      }
    }
    return report;
  } finally {
    for (const child of children.values()) child.kill();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      trees: { type: 'string', default: '.' },
      trials: { type: 'string', default: '6' },
      json: { type: 'boolean', default: false },
      serve: { type: 'string' },
      form: { type: 'string' },
    },
  });
  if (values.serve !== undefined) {
    if (!(FORMS as readonly string[]).includes(values.form ?? '')) throw new Error(`--form must be one of ${FORMS.join(', ')}`);
    return serveSteps(resolve(values.serve), values.form as (typeof FORMS)[number]);
  }
  const trials = Number(values.trials);
  if (!Number.isInteger(trials) || trials < 1) throw new Error('--trials must be a positive integer');
  await ensureBenchModel(BENCH_MODEL_DIR, log);
  printReport(await measureDecodeSteps(values.trees.split(',').map((tree) => resolve(tree)), trials), values.json);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) runBenchCommand(main);

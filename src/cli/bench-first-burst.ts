/**
 * Part of the stall-free section (bench-stall.ts): a fresh engine's first burst of requests on distinct adapters
 * already in slots (each put there by a request of its own), its longest time to first token over that of the same
 * burst run next. It measures what memory written for the first time costs a burst, as the load test's opening
 * burst meets it on a freshly started gateway (src/engine/README.md, "Memory faulted in ahead"). Each engine runs
 * in a process of its own: in a process that has run engines before, new buffers reuse memory already faulted in.
 */
import { fork } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Engine } from '../engine/engine.ts';
import type { AdapterRef, EngineOptions } from '../engine/protocol.ts';
import { median, round } from './bench-stats.ts';
import { BENCH_DIR, GREEDY, prompt } from './bench-workloads.ts';

/** Idle time after start in which the engine faults in its adapter stacks (runtime/prefault.ts): about 1 s here. */
const IDLE_MS = 2000;
/** Token counts of the load test's prompts (loadtest/run.ts), cycled over the burst. */
const PROMPT_LENGTHS = [4, 17, 12, 7, 22, 6, 7, 14];

interface Trial {
  engineOptions: EngineOptions;
  adapters: AdapterRef[];
  idleMs: number;
}

/** Each trial starts two processes: the burst at once (after each adapter's own request), and after IDLE_MS idle. */
export async function measureFirstBursts(engineOptions: EngineOptions, adapters: AdapterRef[], trials: number, log: (message: string) => void) {
  log(`a fresh engine's first burst of ${adapters.length} requests on resident adapters, at once and after ${IDLE_MS} ms idle, against the next burst ...`);
  // As `npm start` runs: the model read from the compiled-model cache, filled here first. (Compiling it in the
  // process first would leave that process plenty of freed memory already faulted in.)
  const started = { ...engineOptions, compiledModelCacheDir: join(BENCH_DIR, 'model-cache-gateway') };
  await (await Engine.start(started)).close();
  const atOnce: number[] = [];
  const afterIdle: number[] = [];
  for (let i = 0; i < trials; i++) {
    atOnce.push(await inChildProcess({ engineOptions: started, adapters, idleMs: 0 }));
    afterIdle.push(await inChildProcess({ engineOptions: started, adapters, idleMs: IDLE_MS }));
  }
  return {
    first_burst_ttft_max_over_next_at_once: round(median(atOnce), 2),
    first_burst_ttft_max_over_next_at_once_runs: atOnce.map((r) => round(r, 2)),
    first_burst_ttft_max_over_next_after_idle: round(median(afterIdle), 2),
    first_burst_ttft_max_over_next_after_idle_runs: afterIdle.map((r) => round(r, 2)),
  };
}

async function inChildProcess(trial: Trial): Promise<number> {
  const child = fork(fileURLToPath(import.meta.url), ['--trial'], { execArgv: ['--import', 'tsx'] });
  const exited = once(child, 'exit');
  child.send(trial);
  const [ratio] = (await Promise.race([once(child, 'message'), exited.then(([code]) => Promise.reject(new Error(`the first-burst process exited with code ${code}`)))])) as [number];
  await exited;
  return ratio;
}

async function firstBurstOverNext({ engineOptions, adapters, idleMs }: Trial): Promise<number> {
  const engine = await Engine.start(engineOptions);
  try {
    await new Promise((resolve) => setTimeout(resolve, idleMs));
    for (const adapter of adapters) await engine.generate({ promptIds: prompt(4, 1), adapter, sampling: GREEDY, maxTokens: 1, stopTokenIds: [], onToken: () => {} });
    const burst = async () => {
      const started = performance.now();
      const firsts = await Promise.all(
        adapters.map(async (adapter, i) => {
          let first = 0;
          await engine.generate({
            promptIds: prompt(PROMPT_LENGTHS[i % PROMPT_LENGTHS.length], i),
            adapter,
            sampling: GREEDY,
            maxTokens: 32,
            stopTokenIds: [],
            onToken: () => (first ||= performance.now()),
          });
          return first - started;
        }),
      );
      return Math.max(...firsts);
    };
    const first = await burst();
    return first / (await burst());
  } finally {
    await engine.close();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[2] === '--trial') {
  process.once('message', (trial: Trial) => {
    firstBurstOverNext(trial).then(
      (ratio) => process.send!(ratio, () => process.disconnect()),
      (error: Error) => {
        console.error(`error: ${error.message}`);
        process.exitCode = 1;
        process.disconnect();
      },
    );
  });
}

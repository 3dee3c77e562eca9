/**
 * The workloads the engine benchmarks time, shared by their sections: the benchmark adapters, synthetic prompts,
 * one stream's prefill and decode, and many concurrent streams' aggregate decode rate.
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { randomLoraAdapter, writeLoraAdapter } from '../adapters/lora-writer.ts';
import type { Engine } from '../engine/engine.ts';
import type { AdapterRef, EngineOptions } from '../engine/protocol.ts';
import { availableParallelism } from 'node:os';
import { BENCH_MODEL_DIR } from '../model/bench-model.ts';
import { SMOLLM2_135M_SHAPE } from '../model/random-model.ts';
import { LORA_TARGET_MODULES } from '../model/types.ts';
import { median } from './bench-stats.ts';

export const BENCH_DIR = resolve('.bench');
export const STREAMS = 16;
export const LORA_RANK = 16;
export const GREEDY = { temperature: 0, topP: 1, topK: 0, presencePenalty: 0, frequencyPenalty: 0 };

export const log = (message: string) => process.stderr.write(`${message}\n`);

/** The option `--spinning on|off` of the engine benchmarks: ENGINE_THREAD_SPINNING for the run. */
export const SPINNING_OPTION = { spinning: { type: 'string', default: 'on' } } as const;

/** Whether the engine's idle threads spin, from `--spinning`; anything but on or off is refused. */
export function threadSpinning(value: string): boolean {
  if (value !== 'on' && value !== 'off') throw new Error(`--spinning must be on or off, got "${value}"`);
  return value === 'on';
}

/** The engine the benchmark's sections measure: STREAMS rows and slots for r=LORA_RANK adapters, every core. */
export function benchEngineOptions(): EngineOptions {
  return {
    modelPath: BENCH_MODEL_DIR,
    maxBatch: STREAMS,
    adapterSlots: STREAMS,
    maxLoraRank: LORA_RANK,
    hostCacheBytes: 2 * 2 ** 30,
    maxQueue: 64,
    maxPositions: 2048,
    threads: availableParallelism(),
  };
}

/** Prints a benchmark's report: one JSON object with --json, else one aligned line per figure. */
export function printReport(report: object, json: boolean): void {
  if (json) console.log(JSON.stringify(report));
  else for (const [key, value] of Object.entries(report)) console.log(`${key.padEnd(48)} ${typeof value === 'object' ? JSON.stringify(value) : value}`);
}

/** Runs a benchmark command, a failure ending it with one line and exit code 1. */
export function runBenchCommand(main: () => Promise<void>): void {
  main().catch((error: Error) => {
    console.error(`error: ${error.message}`);
    process.exitCode = 1;
  });
}

/** 16 distinct r=16 adapters on all seven projections, written once into .bench/adapters. */
export async function ensureAdapters(): Promise<AdapterRef[]> {
  const refs: AdapterRef[] = [];
  for (let i = 0; i < STREAMS; i++) {
    const path = join(BENCH_DIR, 'adapters', `r${LORA_RANK}-${i}`);
    if (!existsSync(join(path, 'adapter_model.safetensors'))) {
      await writeLoraAdapter(path, randomLoraAdapter(SMOLLM2_135M_SHAPE, { rank: LORA_RANK, targetModules: [...LORA_TARGET_MODULES], seed: 100 + i }));
    }
    refs.push({ key: `bench/r${LORA_RANK}-${i}`, path });
  }
  return refs;
}

/** A prompt of `length` token ids of the benchmark model's vocabulary, different for each seed. */
export function prompt(length: number, seed: number): number[] {
  return Array.from({ length }, (_, i) => 1 + ((seed * 7919 + i * 104729) % (SMOLLM2_135M_SHAPE.vocabSize - 1)));
}

/** Runs streams concurrently; returns the aggregate decode rate while all of them were in the batch. */
export async function concurrentDecode(engine: Engine, adapters: (AdapterRef | null)[], tokens: number): Promise<number> {
  const times: number[][] = adapters.map(() => []);
  await Promise.all(
    adapters.map((adapter, i) =>
      engine.generate({
        promptIds: prompt(16, i),
        adapter,
        sampling: GREEDY,
        maxTokens: tokens,
        stopTokenIds: [],
        onToken: () => times[i].push(performance.now()),
      }),
    ),
  );
  // Steady state: from the moment the last stream produced its first token to the first stream's end.
  const from = Math.max(...times.map((t) => t[0]));
  const to = Math.min(...times.map((t) => t.at(-1)!));
  const inWindow = times.reduce((sum, t) => sum + t.filter((x) => x > from && x <= to).length, 0);
  return inWindow / ((to - from) / 1000);
}

/** One stream: its prefill rate and its median decode step. */
export async function singleStream(engine: Engine, promptLength: number, tokens: number) {
  const times: number[] = [];
  let prefillMs = 0;
  await engine.generate({
    promptIds: prompt(promptLength, promptLength),
    adapter: null,
    sampling: GREEDY,
    maxTokens: tokens,
    stopTokenIds: [],
    onStart: (event) => (prefillMs = event.prefillMs),
    onToken: () => times.push(performance.now()),
  });
  const steps = times.slice(1).map((t, i) => t - times[i]);
  return { prefillTokensPerSecond: promptLength / (prefillMs / 1000), stepMs: median(steps), tokensPerSecond: 1000 / median(steps) };
}

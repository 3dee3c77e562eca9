/**
 * The base model compiled for onnxruntime, cached on disk so that a restart skips reading and converting the
 * weights, hashing them, generating the graph and computing DoRA's row norms. On the SmolLM2-135M shape in float32
 * those took about half of start-up; the rest, onnxruntime's own session initialisation, is cut by the optimized
 * form of the sessions saved in the entry beside the graphs (saved-sessions.ts).
 *
 * An entry is keyed by the model files' stat identity (path, inode, size, modification and change times of every
 * file in the model's directory, or of the GGUF file), the load options and the code that compiles (the source of
 * src/graph, src/model, src/formats and this module). Any change to the weights gives a new change time, so a
 * changed model is compiled again, never served from a stale entry; a change to the compiler does the same.
 * Entries are written to a temporary directory and renamed into place complete; a damaged or partial entry is
 * compiled again. The cache directory may be deleted at any time (it is then rebuilt on the next start).
 */
import { createHash, randomUUID } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { buildDecoderGraphs, type DecoderGraphs, SERVING_GRAPHS, type ServingGraph } from '../graph/decoder-graph.ts';
import { EXTERNAL_DATA_FILE } from '../graph/onnx-builder.ts';
import { loadBaseModel, type LoadOptions } from '../model/load.ts';
import type { BaseModel, LlamaConfig } from '../model/types.ts';
import { baseRowNorms, type BaseRowNorms } from './dora-scales.ts';
import type { ServingGraphs } from './model-runner.ts';
import { sourceDigest } from './source-digest.ts';
import { filesHaveSizes } from '../storage/durable-files.ts';

export interface CompiledModel {
  config: LlamaConfig;
  checksum: string;
  source: BaseModel['source'];
  rowNorms: BaseRowNorms;
  /** The ONNX files of a cache entry (their weights beside them), or the graphs in memory when there is no cache. */
  graphs: ServingGraphs;
  /** Whether the model came from the cache, and how long each part of compiling took (ms). */
  cached: boolean;
  timings: Record<string, number>;
}

/** The serving graphs read the entry's one weight file (EXTERNAL_DATA_FILE). */
const MODEL_FILES: Record<ServingGraph, string> = { adapters: 'adapters.onnx', mixed: 'mixed.onnx', base: 'base.onnx' };
const ROW_NORMS_FILE = 'row-norms.bin';
const META_FILE = 'meta.json';

interface EntryMeta {
  config: LlamaConfig;
  checksum: string;
  source: BaseModel['source'];
  /** Row norms' names and lengths, in the order of ROW_NORMS_FILE. */
  rowNorms: [name: string, length: number][];
  /** Byte sizes of the entry's files: a partial entry, or one missing a file this version writes, does not match. */
  sizes: Record<string, number>;
}

/** Loads and compiles the base model, through the cache in `cacheDir` when given. */
export async function compileBaseModel(modelPath: string, options: LoadOptions & { cacheDir?: string }): Promise<CompiledModel> {
  const timings: Record<string, number> = {};
  let mark = performance.now();
  const lap = (name: string) => {
    const now = performance.now();
    timings[name] = Math.round(now - mark);
    mark = now;
  };
  const entry = options.cacheDir ? join(resolve(options.cacheDir), cacheKey(modelPath, options)) : undefined;
  if (entry) {
    const found = await readEntry(entry);
    lap('cache_read');
    if (found) return { ...found, graphs: entryGraphs(entry), cached: true, timings };
  }
  const model = await loadBaseModel(modelPath, options);
  lap('load_and_checksum');
  const graphs = buildDecoderGraphs(model);
  lap('graph');
  const rowNorms = baseRowNorms(model);
  lap('row_norms');
  const compiled = { config: model.config, checksum: model.checksum, source: model.source, rowNorms };
  // The graph holds the weights (in the layout the session reads); the loaded arrays would only add to the
  // memory peak while the session loads them.
  model.weights.clear();
  model.quantized?.clear();
  if (entry) {
    const written = await writeEntry(entry, compiled, graphs);
    lap('cache_write');
    // Sessions open from the entry's files, so that their optimized form is saved beside them at this start.
    if (written) return { ...compiled, graphs: entryGraphs(entry), cached: false, timings };
  }
  return { ...compiled, graphs, cached: false, timings };
}

/** The entry's name: what the compiled result depends on, hashed. */
export function cacheKey(modelPath: string, options: LoadOptions): string {
  const path = resolve(modelPath);
  const info = statSync(path);
  const files = info.isDirectory()
    ? readdirSync(path, { withFileTypes: true })
        .filter((entry) => entry.isFile())
        .map((entry) => entry.name)
        .sort()
    : [''];
  const identity = files.map((name) => {
    const file = statSync(join(path, name));
    return [name, file.ino, file.size, file.mtimeMs, file.ctimeMs];
  });
  return createHash('sha256')
    .update(JSON.stringify({ path, identity, quantize: options.quantize ?? null, code: compilerVersion() }))
    .digest('hex')
    .slice(0, 32);
}

let compilerHash: string | undefined;

/** A hash of the source that turns model files into the session's graph and weights. */
function compilerVersion(): string {
  compilerHash ??= sourceDigest(['graph', 'model', 'formats', 'runtime/compiled-model-cache.ts', 'runtime/dora-scales.ts']);
  return compilerHash;
}

const entryGraphs = (entry: string) => Object.fromEntries(SERVING_GRAPHS.map((kind) => [kind, join(entry, MODEL_FILES[kind])])) as Record<ServingGraph, string>;

async function readEntry(entry: string): Promise<Omit<CompiledModel, 'graphs' | 'cached' | 'timings'> | null> {
  let meta: EntryMeta;
  try {
    meta = JSON.parse(await readFile(join(entry, META_FILE), 'utf8')) as EntryMeta;
    if (!Object.values(MODEL_FILES).every((name) => name in meta.sizes)) return null;
    if (!(await filesHaveSizes(entry, meta.sizes))) return null;
  } catch {
    return null;
  }
  const bytes = await readFile(join(entry, ROW_NORMS_FILE));
  const all = new Float64Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / Float64Array.BYTES_PER_ELEMENT);
  const rowNorms: BaseRowNorms = new Map();
  let offset = 0;
  for (const [name, length] of meta.rowNorms) {
    rowNorms.set(name, all.slice(offset, offset + length));
    offset += length;
  }
  return { config: meta.config, checksum: meta.checksum, source: meta.source, rowNorms };
}

/** Whether the entry was written. */
async function writeEntry(entry: string, compiled: Omit<CompiledModel, 'graphs' | 'cached' | 'timings'>, graphs: DecoderGraphs): Promise<boolean> {
  const partial = `${entry}.partial-${randomUUID()}`;
  try {
    await mkdir(partial, { recursive: true });
    const norms = [...compiled.rowNorms];
    const packed = new Float64Array(norms.reduce((sum, [, values]) => sum + values.length, 0));
    let offset = 0;
    for (const [, values] of norms) {
      packed.set(values, offset);
      offset += values.length;
    }
    const files: Record<string, Uint8Array> = {
      ...Object.fromEntries(SERVING_GRAPHS.map((kind) => [MODEL_FILES[kind], graphs.models[kind]])),
      [EXTERNAL_DATA_FILE]: graphs.weights,
      [ROW_NORMS_FILE]: new Uint8Array(packed.buffer),
    };
    for (const [name, bytes] of Object.entries(files)) await writeFile(join(partial, name), bytes);
    const meta: EntryMeta = {
      config: compiled.config,
      checksum: compiled.checksum,
      source: compiled.source,
      rowNorms: norms.map(([name, values]) => [name, values.length]),
      sizes: Object.fromEntries(Object.entries(files).map(([name, bytes]) => [name, bytes.byteLength])),
    };
    // Written last: an entry without it is never read.
    await writeFile(join(partial, META_FILE), JSON.stringify(meta));
    await rm(entry, { recursive: true, force: true });
    await rename(partial, entry);
    return true;
  } catch {
    // A cache that cannot be written only costs the next start its time.
    await rm(partial, { recursive: true, force: true }).catch(() => undefined);
    return false;
  }
}

/**
 * Sessions of the serving graphs opened from onnxruntime's own optimized form of them, saved beside a
 * compiled-model cache entry: the graphs after onnxruntime's graph optimizations, with every weight already
 * pre-packed for this CPU's matrix kernels.
 *
 * Why: a session built from our graphs optimizes its graph and pre-packs its weights at every start, once per
 * graph, and keeps the packed weights in memory of its own. On the SmolLM2-135M shape in float32 that was about
 * 2 s and 0.55 GB per session, three times over. Opened from the saved form, onnxruntime maps the packed weights
 * from the file instead, so the sessions of all graphs share one copy (the page cache's) and skip both steps.
 *
 * The three graphs' saved forms would each carry all weights twice (plain and packed). They are merged into one
 * data file in which every distinct blob is stored once, and the saved models are pointed at it.
 *
 * A set depends on the CPU (its instruction set chooses the kernels, and so the packed layout), on onnxruntime's
 * version, on the graphs it holds and on this module's code, so those name it; an entry keeps one set (writing one removes the others).
 * A set is written to a temporary directory and renamed into place complete, with its file sizes recorded; a
 * damaged one is written again. A set onnxruntime fails to open is marked, and the graphs are then built as
 * sessions directly at every start, as without a cache.
 */
import { createHash, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { arch, cpus } from 'node:os';
import { basename, dirname, join } from 'node:path';
import onnxProto, { type onnx as OnnxTypes } from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import type { ServingGraph } from '../graph/decoder-graph.ts';
import { sourceDigest } from './source-digest.ts';
import { filesHaveSizes } from '../storage/durable-files.ts';

const { onnx } = onnxProto;

export type ServingSessions = Partial<Record<ServingGraph, ort.InferenceSession>>;

/** Where the sessions came from: the saved set, a set written at this start, or built directly. */
export type SessionSource = 'saved' | 'saved-now' | 'built';

const SET_PREFIX = 'sessions-';
const META_FILE = 'meta.json';
/** The merged data file every saved model of a set points at. */
const DATA_FILE = 'weights.bin';
const modelFile = (kind: ServingGraph) => `${kind}.onnx`;
const savedDataFile = (kind: ServingGraph) => `${kind}.data`;
/** Blobs start on page boundaries, so onnxruntime maps each one without copying it. */
const BLOB_ALIGNMENT = 4096;
/** Smaller initializers (shapes, norms' scales) stay inside the saved model. */
const EXTERNAL_MIN_BYTES = 1024;

interface SetMeta {
  /** Byte sizes of the set's files: a partial set does not match. */
  sizes?: Record<string, number>;
  /** Why onnxruntime could not open the set, when it could not. */
  unusable?: string;
}

/**
 * Sessions of `kinds`, from the saved set beside the graph files when there is one, else built from the files
 * (saving the set for the next start).
 */
export async function openServingSessions(
  files: Record<ServingGraph, string>,
  kinds: readonly ServingGraph[],
  options: ort.InferenceSession.SessionOptions,
): Promise<{ sessions: ServingSessions; source: SessionSource }> {
  const entry = dirname(files[kinds[0]]);
  const set = join(entry, SET_PREFIX + setKey(kinds));
  const built = () => createSessions(kinds, (kind) => files[kind], options);
  const found = await readMeta(set);
  if (found?.unusable !== undefined) return { sessions: await built(), source: 'built' };
  if (!found) {
    // Whatever lies there is damaged (sizes that do not match) or a partial copy.
    await rm(set, { recursive: true, force: true });
    if (!(await saveSet(files, kinds, options, set))) return { sessions: await built(), source: 'built' };
  }
  try {
    const sessions = await createSessions(kinds, (kind) => join(set, modelFile(kind)), { ...options, graphOptimizationLevel: 'disabled' });
    return { sessions, source: found ? 'saved' : 'saved-now' };
  } catch (error) {
    await markUnusable(set, (error as Error).message);
    return { sessions: await built(), source: 'built' };
  }
}

/**
 * Creates the sessions one after another from each graph's file or bytes (each pre-packs while it loads, unless
 * opened from a saved form); on failure releases those made.
 */
export async function createSessions(
  kinds: readonly ServingGraph[],
  model: (kind: ServingGraph) => string | Uint8Array,
  options: ort.InferenceSession.SessionOptions,
): Promise<ServingSessions> {
  const sessions: ServingSessions = {};
  try {
    for (const kind of kinds) {
      const source = model(kind);
      sessions[kind] = typeof source === 'string' ? await ort.InferenceSession.create(source, options) : await ort.InferenceSession.create(source, options);
    }
    return sessions;
  } catch (error) {
    await Promise.all(Object.values(sessions).map((session) => session.release()));
    throw error;
  }
}

/** The set's name: what its saved form depends on, hashed. */
function setKey(kinds: readonly ServingGraph[]): string {
  return createHash('sha256')
    .update(JSON.stringify({ cpu: cpuIdentity(), onnxruntime: ort.env.versions.common, kinds, code: sourceDigest(['runtime/saved-sessions.ts']) }))
    .digest('hex')
    .slice(0, 16);
}

/** What chooses onnxruntime's kernels on this CPU: its make and model, and the instruction sets it offers. */
function cpuIdentity(): string {
  const fallback = `${arch()} ${cpus()[0]?.model ?? ''}`;
  try {
    const firstProcessor = readFileSync('/proc/cpuinfo', 'utf8').split('\n\n')[0];
    const lines = firstProcessor.split('\n').filter((line) => /^(vendor_id|cpu family|model|model name|stepping|flags|Features|CPU implementer|CPU architecture|CPU variant|CPU part)\s*:/.test(line));
    return `${fallback}\n${lines.join('\n')}`;
  } catch {
    return fallback;
  }
}

async function readMeta(set: string): Promise<SetMeta | null> {
  try {
    const meta = JSON.parse(await readFile(join(set, META_FILE), 'utf8')) as SetMeta;
    if (meta.unusable !== undefined) return meta;
    return meta.sizes && (await filesHaveSizes(set, meta.sizes)) ? meta : null;
  } catch {
    return null;
  }
}

/**
 * Builds each session once with onnxruntime saving its optimized form, merges the forms' data into one file, and
 * renames the set into place (removing the entry's other sets). Null when it could not be written: the sessions
 * are then built directly, as without a cache.
 */
async function saveSet(files: Record<ServingGraph, string>, kinds: readonly ServingGraph[], options: ort.InferenceSession.SessionOptions, set: string): Promise<SetMeta | null> {
  const partial = `${set}.partial-${randomUUID()}`;
  try {
    await mkdir(partial, { recursive: true });
    for (const kind of kinds) {
      const session = await ort.InferenceSession.create(files[kind], {
        ...options,
        // Errors only: saving at this optimization level warns that the form suits this machine alone, as intended.
        logSeverityLevel: 3,
        optimizedModelFilePath: join(partial, modelFile(kind)),
        extra: {
          ...options.extra,
          session: {
            ...(options.extra as { session?: object } | undefined)?.session,
            optimized_model_external_initializers_file_name: savedDataFile(kind),
            optimized_model_external_initializers_min_size_in_bytes: String(EXTERNAL_MIN_BYTES),
            save_external_prepacked_constant_initializers: '1',
          },
        },
      });
      await session.release();
    }
    await mergeData(partial, kinds);
    const names = [DATA_FILE, ...kinds.map(modelFile)];
    const meta: SetMeta = { sizes: Object.fromEntries(await Promise.all(names.map(async (name) => [name, (await stat(join(partial, name))).size]))) };
    // Written last: a set without it is never opened.
    await writeFile(join(partial, META_FILE), JSON.stringify(meta));
    // Sets for other CPUs or versions go; this set, or a partial one, may be another process's doing.
    const [entry, name] = [dirname(set), basename(set)];
    for (const other of await readdir(entry)) if (other.startsWith(SET_PREFIX) && !other.startsWith(name)) await rm(join(entry, other), { recursive: true, force: true });
    try {
      await rename(partial, set);
    } catch (error) {
      // Another process saved the same set first (renaming onto its directory fails): use that one.
      await rm(partial, { recursive: true, force: true });
      const theirs = await readMeta(set);
      if (!theirs) throw error;
      return theirs;
    }
    return meta;
  } catch {
    // A set that cannot be written only costs the next start its time.
    await rm(partial, { recursive: true, force: true }).catch(() => undefined);
    return null;
  }
}

/**
 * Rewrites the saved models of `kinds` in `dir` to read one data file holding each distinct blob (a weight as
 * stored, or as pre-packed) once, and deletes their own data files.
 */
async function mergeData(dir: string, kinds: readonly ServingGraph[]): Promise<void> {
  const out = await open(join(dir, DATA_FILE), 'w');
  const placed = new Map<string, number>();
  let end = 0;
  try {
    for (const kind of kinds) {
      const model = onnx.ModelProto.decode(await readFile(join(dir, modelFile(kind))));
      const source = await open(join(dir, savedDataFile(kind)), 'r');
      try {
        const place = async (offset: number, length: number): Promise<number> => {
          const bytes = Buffer.allocUnsafe(length);
          const { bytesRead } = await source.read(bytes, 0, length, offset);
          if (bytesRead !== length) throw new Error(`${savedDataFile(kind)}: ${length} bytes at ${offset} run past its end`);
          const key = `${length}:${createHash('sha256').update(bytes).digest('base64')}`;
          let at = placed.get(key);
          if (at === undefined) {
            at = Math.ceil(end / BLOB_ALIGNMENT) * BLOB_ALIGNMENT;
            await out.write(bytes, 0, length, at);
            end = at + length;
            placed.set(key, at);
          }
          return at;
        };
        for (const tensor of externalTensors(model.graph!)) tensor.externalData = await relocate(tensor.externalData!, place);
      } finally {
        await source.close();
      }
      await writeFile(join(dir, modelFile(kind)), onnx.ModelProto.encode(model).finish());
      await rm(join(dir, savedDataFile(kind)));
    }
  } finally {
    await out.close();
  }
}

type ExternalDataEntry = OnnxTypes.IStringStringEntryProto;

/**
 * A tensor's external-data entries pointed at the merged file: its own bytes (`offset`, `length`) and each of its
 * pre-packed blobs (`prepacked_N` = "kernel key|offset;length;checksum|…").
 */
async function relocate(entries: ExternalDataEntry[], place: (offset: number, length: number) => Promise<number>): Promise<ExternalDataEntry[]> {
  const value = (key: string) => entries.find((entry) => entry.key === key)?.value;
  const length = Number(value('length'));
  if (!Number.isSafeInteger(length)) throw new Error('saved model: an external tensor without its length');
  const offset = await place(Number(value('offset') ?? 0), length);
  const relocated: ExternalDataEntry[] = [];
  for (const { key, value: entryValue } of entries) {
    if (key === 'location') relocated.push(onnx.StringStringEntryProto.create({ key, value: DATA_FILE }));
    else if (key === 'offset') relocated.push(onnx.StringStringEntryProto.create({ key, value: String(offset) }));
    else if (key?.startsWith('prepacked_')) {
      const [kernel, ...blobs] = (entryValue ?? '').split('|');
      const moved: string[] = [];
      for (const blob of blobs) {
        const [blobOffset, blobLength, ...rest] = blob.split(';');
        moved.push([String(await place(Number(blobOffset), Number(blobLength))), blobLength, ...rest].join(';'));
      }
      relocated.push(onnx.StringStringEntryProto.create({ key, value: [kernel, ...moved].join('|') }));
    } else relocated.push(onnx.StringStringEntryProto.create({ key, value: entryValue }));
  }
  if (value('offset') === undefined) relocated.push(onnx.StringStringEntryProto.create({ key: 'offset', value: String(offset) }));
  return relocated;
}

/** Every tensor of a graph and its subgraphs (an `If`'s branches) whose data lies outside the model. */
function externalTensors(graph: OnnxTypes.IGraphProto): OnnxTypes.ITensorProto[] {
  const tensors = (graph.initializer ?? []).filter((tensor) => (tensor.externalData?.length ?? 0) > 0);
  for (const node of graph.node ?? []) {
    for (const attribute of node.attribute ?? []) {
      for (const subgraph of [attribute.g, ...(attribute.graphs ?? [])]) if (subgraph) tensors.push(...externalTensors(subgraph));
    }
  }
  return tensors;
}

/** Marks a set onnxruntime could not open, keeping only the reason (its data is of no further use). */
async function markUnusable(set: string, reason: string): Promise<void> {
  await rm(set, { recursive: true, force: true }).catch(() => undefined);
  await mkdir(set, { recursive: true }).catch(() => undefined);
  await writeFile(join(set, META_FILE), JSON.stringify({ unusable: reason } satisfies SetMeta)).catch(() => undefined);
}

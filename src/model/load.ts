/**
 * Loads a base model — a GGUF file or a Hugging Face directory (single or sharded safetensors) — into the
 * canonical layout of types.ts: Hugging Face names, float32, row-major, q/k rows in rotate-half order.
 * Projection and output weights stored quantized in a GGUF stay quantized (re-laid for MatMulNBits, see
 * formats/ggml-quants.ts); `quantize` quantizes float ones the same way on load.
 * Every expected tensor must be present with the expected shape and nothing that would change the
 * architecture may be left over, so a model that loads is a model the runtime computes correctly.
 */
import { stat } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { entryToFloat32, readSafetensors, type SafetensorsEntry } from '../formats/safetensors.ts';
import { ggufTensorBytes, ggufTensorToFloat32, isServedQuantizedType, readGguf } from '../formats/gguf.ts';
import { ggmlBlocksToQuantizedMatrix } from '../formats/ggml-quants.ts';
import { dequantizeMatrix, permuteQuantizedRows } from './quantized-matrix.ts';
import { quantizeMatrix } from './quantize.ts';
import { configFromGguf, configFromHuggingFace } from './config.ts';
import { weightsChecksum } from './checksum.ts';
import { llamaWeightShapes } from './weight-shapes.ts';
import { LORA_TARGET_MODULES, type BaseModel, type LlamaConfig, type LoadQuantization, type QuantizedMatrix, type WeightMap } from './types.ts';
import { isJsonObject, readJsonIfPresent } from '../storage/json-files.ts';

/** A tensor found in a file, under its canonical name, decoded only once it has passed the shape checks. */
interface TensorSource {
  shape: number[];
  read(): Float32Array;
  /** Present when the file stores the tensor quantized: its blocks, not expanded to float. */
  readQuantized?(): QuantizedMatrix;
}

export interface LoadOptions {
  /** Quantize float projection and output weights on load (llama.cpp's Q8_0 or Q4_0 numerics). */
  quantize?: LoadQuantization;
}

type LoadedWeights = Pick<BaseModel, 'weights' | 'quantized'>;

export async function loadBaseModel(path: string, options: LoadOptions = {}): Promise<BaseModel> {
  const location = resolve(path);
  const info = await stat(location).catch((error: NodeJS.ErrnoException) => {
    throw error.code === 'ENOENT' ? new Error(`model path ${location} does not exist`) : error;
  });
  const loaded = info.isDirectory()
    ? await loadHuggingFaceDirectory(location, options)
    : location.endsWith('.gguf')
      ? await loadGgufFile(location, options)
      : undefined;
  if (!loaded) {
    throw new Error(`model path ${location} is neither a .gguf file nor a Hugging Face directory with config.json`);
  }
  return { ...loaded, checksum: weightsChecksum(loaded.weights, loaded.quantized) };
}

async function loadGgufFile(path: string, options: LoadOptions): Promise<Omit<BaseModel, 'checksum'>> {
  const file = await readGguf(path);
  const config = configFromGguf(file.metadata, file.tensors);
  const sources = new Map<string, TensorSource>();
  for (const tensor of file.tensors.values()) {
    const name = canonicalNameFromGguf(tensor.name);
    if (sources.has(name)) throw new Error(`${path}: tensors "${tensor.name}" and another both map to "${name}"`);
    const heads = name.endsWith('self_attn.q_proj.weight')
      ? config.numHeads
      : name.endsWith('self_attn.k_proj.weight')
        ? config.numKvHeads
        : undefined;
    const rowOrder = heads === undefined ? undefined : rotateHalfRowOrder(heads, config.headDim);
    if (isServedQuantizedType(tensor)) {
      const [rows, columns] = tensor.shape.length === 2 ? tensor.shape : [1, tensor.shape[0]];
      const readQuantized = () => {
        const matrix = ggmlBlocksToQuantizedMatrix(tensor.typeName, rows, columns, ggufTensorBytes(file, tensor.name));
        return rowOrder ? permuteQuantizedRows(matrix, rowOrder) : matrix;
      };
      sources.set(name, { shape: tensor.shape, readQuantized, read: () => dequantizeMatrix(readQuantized()) });
    } else {
      const read = () => ggufTensorToFloat32(file, tensor.name);
      sources.set(name, { shape: tensor.shape, read: rowOrder ? () => permuteFloatRows(read(), rowOrder, tensor.shape[1]) : read });
    }
  }
  return { config, ...assembleWeights(config, sources, path, options), source: { format: 'gguf', path } };
}

const GGUF_BLOCK_TENSORS: Record<string, string> = {
  attn_norm: 'input_layernorm',
  attn_q: 'self_attn.q_proj',
  attn_k: 'self_attn.k_proj',
  attn_v: 'self_attn.v_proj',
  attn_output: 'self_attn.o_proj',
  ffn_norm: 'post_attention_layernorm',
  ffn_gate: 'mlp.gate_proj',
  ffn_up: 'mlp.up_proj',
  ffn_down: 'mlp.down_proj',
};
const GGUF_GLOBAL_TENSORS: Record<string, string> = {
  token_embd: 'model.embed_tokens',
  output_norm: 'model.norm',
  output: 'lm_head',
};

/** llama.cpp tensor names → Hugging Face names; unknown names pass through so the shape check reports them. */
function canonicalNameFromGguf(name: string): string {
  const block = /^blk\.(\d+)\.(\w+)\.(weight|bias)$/.exec(name);
  if (block && Object.hasOwn(GGUF_BLOCK_TENSORS, block[2])) {
    return `model.layers.${block[1]}.${GGUF_BLOCK_TENSORS[block[2]]}.${block[3]}`;
  }
  const global = /^(\w+)\.(weight|bias)$/.exec(name);
  if (global && Object.hasOwn(GGUF_GLOBAL_TENSORS, global[1])) return `${GGUF_GLOBAL_TENSORS[global[1]]}.${global[2]}`;
  return name;
}

/**
 * llama.cpp's llama architecture rotates adjacent pairs (2i, 2i+1) of each head; Hugging Face rotates
 * (i, i + headDim/2). Reordering the rows of q and k per head makes the two equivalent: Hugging Face row
 * j < headDim/2 of a head is GGUF row 2j, and row j + headDim/2 is GGUF row 2j+1. Returns, for each row of
 * the result, the GGUF row it comes from.
 */
function rotateHalfRowOrder(heads: number, headDim: number): number[] {
  const order: number[] = [];
  const half = headDim / 2;
  for (let head = 0; head < heads; head++) {
    const base = head * headDim;
    for (let j = 0; j < headDim; j++) order.push(base + (j < half ? 2 * j : 2 * (j - half) + 1));
  }
  return order;
}

function permuteFloatRows(weight: Float32Array, order: readonly number[], columns: number): Float32Array {
  const out = new Float32Array(weight.length);
  order.forEach((from, to) => out.set(weight.subarray(from * columns, (from + 1) * columns), to * columns));
  return out;
}

async function loadHuggingFaceDirectory(directory: string, options: LoadOptions): Promise<Omit<BaseModel, 'checksum'>> {
  const configJson = await readJsonIfPresent(join(directory, 'config.json'));
  if (configJson === undefined) {
    throw new Error(`${directory} has no config.json; a Hugging Face model directory needs one`);
  }
  const config = configFromHuggingFace(configJson, await readJsonIfPresent(join(directory, 'generation_config.json')));

  const sources = new Map<string, TensorSource>();
  for (const entry of await readSafetensorsEntries(directory)) {
    // Position tables some exporters save; they are recomputed from rope_theta.
    if (entry.name.endsWith('.rotary_emb.inv_freq')) continue;
    // transformers ignores a saved classifier when the config ties it to the embedding; so do we.
    if (entry.name === 'lm_head.weight' && config.tieWordEmbeddings) continue;
    sources.set(entry.name, { shape: entry.shape, read: () => entryToFloat32(entry) });
  }
  return { config, ...assembleWeights(config, sources, directory, options), source: { format: 'hf', path: directory } };
}

const SINGLE_FILE = 'model.safetensors';
const SHARD_INDEX = 'model.safetensors.index.json';

async function readSafetensorsEntries(directory: string): Promise<SafetensorsEntry[]> {
  if (await exists(join(directory, SINGLE_FILE))) {
    return [...(await readSafetensors(join(directory, SINGLE_FILE))).tensors.values()];
  }
  const indexPath = join(directory, SHARD_INDEX);
  const index = await readJsonIfPresent(indexPath);
  if (index === undefined) throw new Error(`${directory} has neither ${SINGLE_FILE} nor ${SHARD_INDEX}`);
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (!isJsonObject(weightMap)) {
    throw new Error(`${indexPath}: weight_map must be an object mapping tensor names to shard files`);
  }

  const namesByShard = new Map<string, string[]>();
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string') throw new Error(`${indexPath}: weight_map["${name}"] must be a file name`);
    const names = namesByShard.get(shard) ?? [];
    names.push(name);
    namesByShard.set(shard, names);
  }

  const entries: SafetensorsEntry[] = [];
  for (const [shard, names] of namesByShard) {
    const shardPath = resolve(directory, shard);
    const inside = relative(directory, shardPath);
    if (isAbsolute(shard) || inside === '' || inside === '..' || inside.startsWith(`..${sep}`) || isAbsolute(inside)) {
      throw new Error(`${indexPath}: shard path "${shard}" leaves the model directory; shard files must be inside it`);
    }
    const { tensors } = await readSafetensors(shardPath);
    for (const name of names) {
      if (!tensors.has(name)) throw new Error(`${indexPath}: lists "${name}" in ${shard}, but that shard does not contain it`);
    }
    for (const name of tensors.keys()) {
      if ((weightMap as Record<string, unknown>)[name] !== shard) {
        throw new Error(`${shardPath}: holds tensor "${name}", which ${SHARD_INDEX} does not assign to this shard`);
      }
    }
    entries.push(...tensors.values());
  }
  return entries;
}

const PROJECTION_SUFFIXES = LORA_TARGET_MODULES.map((module) => `.${module}.weight`);
const OUTPUT_PROJECTION = 'lm_head.weight';

/** Weights the graph multiplies by (the projections and the output projection): the ones served quantized. */
function isMatmulWeight(name: string): boolean {
  return name === OUTPUT_PROJECTION || PROJECTION_SUFFIXES.some((suffix) => name.endsWith(suffix));
}

/**
 * On-load quantization's type for one weight: the output projection always gets Q8_0 (llama.cpp, too, keeps it
 * above the file's type), and rows that are not whole 32-value blocks stay float, as llama.cpp falls back for them.
 */
function loadQuantizationFor(name: string, shape: readonly number[], quantize: LoadQuantization | undefined): LoadQuantization | undefined {
  if (!quantize || shape[1] % 32 !== 0) return undefined;
  return name === OUTPUT_PROJECTION ? 'q8' : quantize;
}

function assembleWeights(config: LlamaConfig, sources: Map<string, TensorSource>, where: string, options: LoadOptions): LoadedWeights {
  const expected = llamaWeightShapes(config);
  for (const name of sources.keys()) {
    if (!expected.has(name)) {
      throw new Error(
        `${where}: unexpected tensor "${name}"; it would change the architecture (a bias, an extra layer, ...), ` +
          'which this runtime does not implement',
      );
    }
  }
  const weights: WeightMap = new Map();
  const quantized = new Map<string, QuantizedMatrix>();
  /** Serves `source` under `name` quantized when the file or `options` say so; true if it did. */
  const serveQuantized = (name: string, shape: number[], source: TensorSource): boolean => {
    if (source.readQuantized) quantized.set(name, source.readQuantized());
    else {
      const kind = loadQuantizationFor(name, shape, options.quantize);
      if (!kind) return false;
      quantized.set(name, quantizeMatrix(source.read(), shape, kind));
    }
    return true;
  };
  for (const [name, shape] of expected) {
    const source = sources.get(name);
    if (!source) throw new Error(`${where}: missing tensor "${name}" (expected shape [${shape.join(', ')}])`);
    if (source.shape.length !== shape.length || source.shape.some((dim, i) => dim !== shape[i])) {
      throw new Error(`${where}: tensor "${name}" has shape [${source.shape.join(', ')}], expected [${shape.join(', ')}]`);
    }
    if (!(isMatmulWeight(name) && serveQuantized(name, shape, source))) weights.set(name, { shape, data: source.read() });
  }
  // A tied output projection reuses the embedding: the lookup keeps float32 rows, the projection its quantized form.
  if (config.tieWordEmbeddings) serveQuantized(OUTPUT_PROJECTION, [config.vocabSize, config.hiddenSize], sources.get('model.embed_tokens.weight')!);
  return { weights, quantized };
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}


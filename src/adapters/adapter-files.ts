/**
 * Reading an adapter directory, whatever its format: the directory listing (pickles refused on sight), the JSON
 * config and a safetensors weights file, and float tensors checked for dtype, shape and finite values, each
 * failure an AdapterError naming the file and tensor.
 */
import { readdir, readFile } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { entryAsFloat32, parseSafetensors, SafetensorsError, type SafetensorsEntry, type SafetensorsFile } from '../formats/safetensors.ts';
import { AdapterError, type AdapterErrorCode } from './adapter-error.ts';

/** Extensions of PyTorch pickle checkpoints: loading one runs arbitrary code, so their mere presence is refused. */
const PICKLE_EXTENSIONS = ['.bin', '.pt', '.pth', '.pkl', '.ckpt'];

/** The directory's file names; refuses a missing directory and any pickled checkpoint in it. */
export async function listAdapterFiles(dir: string, weightsFile: string): Promise<string[]> {
  let files: string[];
  try {
    files = await readdir(dir);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      throw new AdapterError('missing_file', `adapter directory ${dir} does not exist or is not a directory`, { cause: error });
    }
    throw error;
  }
  const pickles = files.filter((file) => PICKLE_EXTENSIONS.includes(extname(file).toLowerCase()));
  if (pickles.length > 0) {
    throw new AdapterError(
      'unsupported_format',
      `${pickles.join(', ')}: pickled PyTorch weights are refused because loading a pickle can execute arbitrary code; convert the adapter to safetensors (${weightsFile}) and remove ${pickles.length === 1 ? 'that file' : 'those files'}`,
    );
  }
  return files;
}

export const ADAPTER_CONFIG_FILE = 'adapter_config.json';

/** Files of an adapter directory already read (and verified), by name; the rest are read from the directory. */
export type ReadFiles = ReadonlyMap<string, Buffer>;

/**
 * Reads an adapter directory: `adapter_config.json`, then the weights file the config calls for
 * (`weightsFor` names it and what kind of adapter needs it, or throws for a config of no known format).
 */
export async function readAdapterDirectory(
  dir: string,
  weightsFor: (json: unknown) => { file: string; kind: string },
  anyWeightsFile: string,
  read: ReadFiles = new Map(),
): Promise<{ json: unknown; weights: SafetensorsFile }> {
  // The directory is listed (and refused if it holds a pickle) only when a file must come from it: files already
  // read need no directory at all (the loader thread's warm-up parses an adapter generated in memory).
  let listed: Promise<string[]> | undefined;
  const present = async (name: string) => read.has(name) || (await (listed ??= listAdapterFiles(dir, anyWeightsFile))).includes(name);
  if (!(await present(ADAPTER_CONFIG_FILE))) {
    throw new AdapterError('missing_file', `${ADAPTER_CONFIG_FILE} is missing; an adapter needs ${ADAPTER_CONFIG_FILE} and its weights (${anyWeightsFile})`);
  }
  const json = parseJsonFile(read.get(ADAPTER_CONFIG_FILE) ?? (await readFile(join(dir, ADAPTER_CONFIG_FILE))), ADAPTER_CONFIG_FILE);
  const { file, kind } = weightsFor(json);
  if (!(await present(file))) throw new AdapterError('missing_file', `${file} is missing; ${kind} needs ${ADAPTER_CONFIG_FILE} and ${file}`);
  return { json, weights: parseSafetensorsFile(read.get(file) ?? (await readFile(join(dir, file))), file) };
}

function parseJsonFile(bytes: Buffer, fileName: string): unknown {
  const text = bytes.toString('utf8');
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new AdapterError('invalid_config', `${fileName} is not valid JSON (${(error as Error).message})`, { cause: error });
  }
}

function parseSafetensorsFile(file: Buffer, fileName: string): SafetensorsFile {
  try {
    return parseSafetensors(new Uint8Array(file.buffer, file.byteOffset, file.byteLength), fileName);
  } catch (error) {
    if (!(error instanceof SafetensorsError)) throw error;
    throw new AdapterError('corrupt_file', `cannot read the adapter weights: ${error.message}`, { cause: error });
  }
}

type TensorErrorCode = Extract<AdapterErrorCode, 'invalid_tensor' | 'missing_tensor' | 'shape_mismatch' | 'non_finite' | 'incompatible_base'>;

/** Throws an AdapterError about the weights file `fileName`. */
export function tensorError(fileName: string, code: TensorErrorCode, message: string): never {
  throw new AdapterError(code, `${fileName}: ${message}`);
}

/**
 * A float tensor (F32, F16 or BF16) as float32 values, checked against `expectedShape` (the explanation says
 * where the expected sizes come from) and for NaN or infinity. F32 values may be a view of the file's buffer
 * (`entryAsFloat32`): read them, copy them, never write to them.
 */
export function readFloatTensor(fileName: string, entry: SafetensorsEntry, expectedShape: number[], explanation: string): Float32Array {
  if (entry.dtype !== 'F32' && entry.dtype !== 'F16' && entry.dtype !== 'BF16') {
    tensorError(fileName, 'invalid_tensor', `tensor "${entry.name}" has dtype ${entry.dtype}; adapter weights must be F32, F16 or BF16`);
  }
  if (entry.shape.length !== expectedShape.length || entry.shape.some((dim, axis) => dim !== expectedShape[axis])) {
    tensorError(fileName, 'shape_mismatch', `tensor "${entry.name}" has shape [${entry.shape.join(', ')}], expected [${expectedShape.join(', ')}] (${explanation})`);
  }
  const values = entryAsFloat32(entry);
  const bad = firstNonFinite(values);
  if (bad >= 0) {
    const columns = expectedShape.length > 1 ? expectedShape[expectedShape.length - 1] : 0;
    const where = columns > 0 ? ` (row ${Math.floor(bad / columns)})` : '';
    tensorError(fileName, 'non_finite', `tensor "${entry.name}" holds ${values[bad]} at element ${bad}${where}; the adapter is corrupt or diverged in training`);
  }
  return values;
}

/**
 * The index of the first NaN or infinity in `values`, or -1. A plain loop: an adapter holds millions of values,
 * and findIndex with a callback took about ten times as long (50 ms for an r=16 adapter of SmolLM2-135M's shape).
 */
function firstNonFinite(values: Float32Array): number {
  for (let i = 0; i < values.length; i++) {
    const value = values[i];
    // Infinity − Infinity and NaN − NaN are NaN; every finite value minus itself is 0.
    if (value - value !== 0) return i;
  }
  return -1;
}

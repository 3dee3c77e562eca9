/**
 * Safetensors reading and writing (https://github.com/huggingface/safetensors, format section).
 * The parser checks every header field against the file before any tensor bytes are touched, so a corrupt
 * or hostile file fails with a message naming the file and the tensor instead of yielding wrong weights.
 */
import { readFile } from 'node:fs/promises';
import { writeFileAtomically } from '../storage/durable-files.ts';
import { isJsonObject } from '../storage/json-files.ts';
import { decodeFloats, encodeFloats, type FloatEncoding } from './float16.ts';
import { elementCount } from './tensor-shape.ts';

export type SafetensorsDtype = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

export interface SafetensorsEntry {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** A view into the file buffer (not a copy). */
  bytes: Uint8Array;
}

export interface SafetensorsFile {
  metadata: Record<string, string>;
  tensors: Map<string, SafetensorsEntry>;
}

export class SafetensorsError extends Error {
  override name = 'SafetensorsError';
}

export interface SafetensorsTensorInput {
  dtype: FloatEncoding;
  shape: number[];
  /** Float values, or for F16/BF16 also the raw 16-bit patterns. */
  data: Float32Array | Uint16Array;
}

const DTYPE_BYTES: Record<SafetensorsDtype, number> = {
  F64: 8,
  I64: 8,
  F32: 4,
  I32: 4,
  F16: 2,
  BF16: 2,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

const METADATA_KEY = '__metadata__';
/** Real headers are kilobytes to a few megabytes; anything near this is corrupt, and refusing it bounds memory. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;
const HEADER_LENGTH_BYTES = 8;

interface PlacedEntry {
  entry: Omit<SafetensorsEntry, 'bytes'>;
  begin: number;
  end: number;
}

export function parseSafetensors(buffer: Uint8Array, source = '<buffer>'): SafetensorsFile {
  const fail = (message: string): never => {
    throw new SafetensorsError(`${source}: ${message}`);
  };
  if (buffer.byteLength < HEADER_LENGTH_BYTES) {
    fail(`file is ${buffer.byteLength} bytes, too short for the 8-byte header length (truncated?)`);
  }
  const view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  const declaredLength = view.getBigUint64(0, true);
  if (declaredLength > BigInt(MAX_HEADER_BYTES)) {
    fail(`header length ${declaredLength} exceeds the ${MAX_HEADER_BYTES}-byte limit (not a safetensors file, or corrupt)`);
  }
  const headerLength = Number(declaredLength);
  const dataStart = HEADER_LENGTH_BYTES + headerLength;
  if (dataStart > buffer.byteLength) {
    fail(`header length ${headerLength} runs past the end of the ${buffer.byteLength}-byte file (truncated?)`);
  }

  const header = parseHeaderJson(buffer.subarray(HEADER_LENGTH_BYTES, dataStart), fail);
  const dataLength = buffer.byteLength - dataStart;
  const metadata = parseMetadata(header[METADATA_KEY], fail);

  const placed: PlacedEntry[] = [];
  for (const [name, value] of Object.entries(header)) {
    if (name === METADATA_KEY) continue;
    placed.push(parseEntry(name, value, dataLength, fail));
  }
  checkDataCoverage(placed, dataLength, fail);

  const tensors = new Map<string, SafetensorsEntry>();
  for (const { entry, begin, end } of placed) {
    tensors.set(entry.name, { ...entry, bytes: buffer.subarray(dataStart + begin, dataStart + end) });
  }
  return { metadata, tensors };
}

function parseHeaderJson(bytes: Uint8Array, fail: (message: string) => never): Record<string, unknown> {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return fail('header is not valid UTF-8');
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (error) {
    return fail(`header is not valid JSON (${(error as Error).message})`);
  }
  if (!isJsonObject(header)) return fail('header is not a JSON object');
  return header;
}

function parseMetadata(value: unknown, fail: (message: string) => never): Record<string, string> {
  if (value === undefined) return {};
  if (!isJsonObject(value)) return fail(`${METADATA_KEY} must be an object of strings`);
  for (const [key, item] of Object.entries(value)) {
    if (typeof item !== 'string') fail(`${METADATA_KEY}["${key}"] must be a string, got ${JSON.stringify(item)}`);
  }
  return value as Record<string, string>;
}

function parseEntry(name: string, value: unknown, dataLength: number, fail: (message: string) => never): PlacedEntry {
  const where = `tensor "${name}"`;
  if (!isJsonObject(value)) return fail(`${where}: entry must be an object with dtype, shape and data_offsets`);
  const { dtype, shape, data_offsets: offsets } = value;
  if (typeof dtype !== 'string' || !Object.hasOwn(DTYPE_BYTES, dtype)) {
    return fail(`${where}: unknown dtype ${JSON.stringify(dtype)} (supported: ${Object.keys(DTYPE_BYTES).join(', ')})`);
  }
  if (!Array.isArray(shape) || !shape.every((dim) => Number.isSafeInteger(dim) && dim >= 0)) {
    return fail(`${where}: shape ${JSON.stringify(shape)} must be a list of non-negative integers`);
  }
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((offset) => Number.isSafeInteger(offset) && offset >= 0)
  ) {
    return fail(`${where}: data_offsets ${JSON.stringify(offsets)} must be two non-negative integers [begin, end]`);
  }
  const [begin, end] = offsets as [number, number];
  if (begin > end) fail(`${where}: data_offsets [${begin}, ${end}] begin after they end`);
  if (end > dataLength) {
    fail(`${where}: data_offsets [${begin}, ${end}] run past the end of the ${dataLength}-byte data section (truncated?)`);
  }
  const elementBytes = DTYPE_BYTES[dtype as SafetensorsDtype];
  const expectedBytes = elementCount(shape as number[]) * elementBytes;
  if (end - begin !== expectedBytes) {
    fail(
      `${where}: shape [${shape.join(', ')}] of ${dtype} needs ${expectedBytes} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`,
    );
  }
  return { entry: { name, dtype: dtype as SafetensorsDtype, shape: [...(shape as number[])] }, begin, end };
}

/** The spec requires tensors to tile the data section exactly: no overlaps (aliasing) and no gaps (hidden bytes). */
function checkDataCoverage(placed: PlacedEntry[], dataLength: number, fail: (message: string) => never): void {
  const ordered = [...placed].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let covered = 0;
  let previous: PlacedEntry | undefined;
  for (const item of ordered) {
    if (item.begin < covered && previous) {
      fail(
        `tensor "${item.entry.name}" [${item.begin}, ${item.end}] overlaps tensor "${previous.entry.name}" [${previous.begin}, ${previous.end}]`,
      );
    }
    if (item.begin > covered) {
      fail(`data bytes [${covered}, ${item.begin}) before tensor "${item.entry.name}" belong to no tensor (gap)`);
    }
    covered = item.end;
    previous = item;
  }
  if (covered !== dataLength) {
    fail(`data bytes [${covered}, ${dataLength}) at the end of the file belong to no tensor (trailing garbage)`);
  }
}

export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  const file = await readFile(path);
  // A plain Uint8Array, so callers never meet Buffer's different slice() semantics.
  return parseSafetensors(new Uint8Array(file.buffer, file.byteOffset, file.byteLength), path);
}

/** F32, F16 and BF16 tensors as float32; other dtypes are refused. The result is a fresh, aligned copy. */
export function entryToFloat32(entry: SafetensorsEntry): Float32Array {
  if (entry.dtype !== 'F32' && entry.dtype !== 'F16' && entry.dtype !== 'BF16') {
    throw new SafetensorsError(`tensor "${entry.name}" has dtype ${entry.dtype}; only F32, F16 and BF16 tensors can be read as floats`);
  }
  return decodeFloats(entry.bytes, entry.dtype);
}

/**
 * F32, F16 and BF16 tensors as float32, without a copy where the bytes allow it: aligned F32 data comes back as a
 * view of the file's own buffer (an adapter's weights are read once to lay them out elsewhere; copying them first
 * was a fifth of a load's time). The result may share memory with the file buffer: never write to it or transfer
 * its buffer.
 */
export function entryAsFloat32(entry: SafetensorsEntry): Float32Array {
  const { bytes } = entry;
  if (entry.dtype === 'F32' && bytes.byteOffset % Float32Array.BYTES_PER_ELEMENT === 0 && bytes.byteLength % Float32Array.BYTES_PER_ELEMENT === 0) {
    return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / Float32Array.BYTES_PER_ELEMENT);
  }
  return entryToFloat32(entry);
}

/** Tensors sorted by name with `__metadata__` first; the header is space-padded so the data starts 8-byte aligned. */
export function serializeSafetensors(
  tensors: Record<string, SafetensorsTensorInput>,
  metadata?: Record<string, string>,
): Uint8Array {
  // Built by hand: JSON.stringify would put integer-like tensor names ("0", "1") before __metadata__.
  const headerParts: string[] = [];
  if (metadata !== undefined) {
    for (const [key, value] of Object.entries(metadata)) {
      if (typeof value !== 'string') throw new SafetensorsError(`metadata "${key}" must be a string`);
    }
    headerParts.push(`${JSON.stringify(METADATA_KEY)}:${JSON.stringify(metadata)}`);
  }
  const names = Object.keys(tensors).sort();
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const name of names) {
    if (name === METADATA_KEY) throw new SafetensorsError(`"${METADATA_KEY}" is reserved and cannot name a tensor`);
    const bytes = tensorBytes(name, tensors[name]);
    const { dtype, shape } = tensors[name];
    headerParts.push(`${JSON.stringify(name)}:${JSON.stringify({ dtype, shape, data_offsets: [offset, offset + bytes.byteLength] })}`);
    chunks.push(bytes);
    offset += bytes.byteLength;
  }
  const headerJson = new TextEncoder().encode(`{${headerParts.join(',')}}`);
  const paddedLength = Math.ceil(headerJson.byteLength / 8) * 8;

  const out = new Uint8Array(HEADER_LENGTH_BYTES + paddedLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(paddedLength), true);
  out.set(headerJson, HEADER_LENGTH_BYTES);
  out.fill(0x20, HEADER_LENGTH_BYTES + headerJson.byteLength, HEADER_LENGTH_BYTES + paddedLength);
  let position = HEADER_LENGTH_BYTES + paddedLength;
  for (const chunk of chunks) {
    out.set(chunk, position);
    position += chunk.byteLength;
  }
  return out;
}

function tensorBytes(name: string, tensor: SafetensorsTensorInput): Uint8Array {
  const { dtype, shape, data } = tensor;
  if (dtype !== 'F32' && dtype !== 'F16' && dtype !== 'BF16') {
    throw new SafetensorsError(`tensor "${name}": cannot write dtype ${String(dtype)}; use F32, F16 or BF16`);
  }
  if (!shape.every((dim) => Number.isSafeInteger(dim) && dim >= 0)) {
    throw new SafetensorsError(`tensor "${name}": shape ${JSON.stringify(shape)} must be non-negative integers`);
  }
  const count = elementCount(shape);
  if (data.length !== count) {
    throw new SafetensorsError(`tensor "${name}": shape [${shape.join(', ')}] holds ${count} values but data has ${data.length}`);
  }
  if (data instanceof Float32Array) return encodeFloats(data, dtype);
  if (dtype === 'F32') {
    throw new SafetensorsError(`tensor "${name}": F32 data must be a Float32Array (a Uint16Array is only raw F16/BF16 bits)`);
  }
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/** Writes atomically: readers see either the old file or the complete new one, never a partial write. */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, SafetensorsTensorInput>,
  metadata?: Record<string, string>,
): Promise<void> {
  await writeFileAtomically(path, serializeSafetensors(tensors, metadata));
}


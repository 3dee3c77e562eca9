/**
 * GGUF reading (versions 2 and 3, little-endian), as specified in ggml's docs/gguf.md.
 * Every read is bounds-checked through one cursor, so a truncated or corrupt file fails with a GgufError
 * naming what was being read, never with a RangeError or a long loop over a bogus count.
 */
import { readFile } from 'node:fs/promises';
import { decodeFloats } from './float16.ts';
import { QUANTIZED_GGML_TYPES } from './ggml-quants.ts';
import { elementCount } from './tensor-shape.ts';

export interface GgufTensorInfo {
  name: string;
  /** Row-major, outermost first (GGUF stores dims innermost first; they are reversed here). */
  shape: number[];
  type: number;
  typeName: string;
  /** Byte offset relative to the start of the data section. */
  offset: number;
}

export interface GgufFile {
  version: number;
  metadata: Map<string, unknown>;
  tensors: Map<string, GgufTensorInfo>;
  /** Absolute byte offset of the (aligned) data section in `buffer`. */
  dataOffset: number;
  buffer: Uint8Array;
}

export class GgufError extends Error {
  override name = 'GgufError';
}

const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
const SUPPORTED_VERSIONS = [2, 3];
const DEFAULT_ALIGNMENT = 32;
/** ggml tensors have at most four dimensions. */
const MAX_DIMS = 4;
/** Real files nest arrays at most once; the cap keeps a hostile file from exhausting the stack. */
const MAX_ARRAY_NESTING = 8;

/** ggml tensor types: name, elements per block, bytes per block (ggml.c type_traits). Gaps are removed types. */
const GGML_TYPES: Record<number, { name: string; blockSize: number; blockBytes: number }> = {
  0: { name: 'F32', blockSize: 1, blockBytes: 4 },
  1: { name: 'F16', blockSize: 1, blockBytes: 2 },
  2: { name: 'Q4_0', blockSize: 32, blockBytes: 18 },
  3: { name: 'Q4_1', blockSize: 32, blockBytes: 20 },
  6: { name: 'Q5_0', blockSize: 32, blockBytes: 22 },
  7: { name: 'Q5_1', blockSize: 32, blockBytes: 24 },
  8: { name: 'Q8_0', blockSize: 32, blockBytes: 34 },
  9: { name: 'Q8_1', blockSize: 32, blockBytes: 40 },
  10: { name: 'Q2_K', blockSize: 256, blockBytes: 84 },
  11: { name: 'Q3_K', blockSize: 256, blockBytes: 110 },
  12: { name: 'Q4_K', blockSize: 256, blockBytes: 144 },
  13: { name: 'Q5_K', blockSize: 256, blockBytes: 176 },
  14: { name: 'Q6_K', blockSize: 256, blockBytes: 210 },
  15: { name: 'Q8_K', blockSize: 256, blockBytes: 292 },
  16: { name: 'IQ2_XXS', blockSize: 256, blockBytes: 66 },
  17: { name: 'IQ2_XS', blockSize: 256, blockBytes: 74 },
  18: { name: 'IQ3_XXS', blockSize: 256, blockBytes: 98 },
  19: { name: 'IQ1_S', blockSize: 256, blockBytes: 50 },
  20: { name: 'IQ4_NL', blockSize: 32, blockBytes: 18 },
  21: { name: 'IQ3_S', blockSize: 256, blockBytes: 110 },
  22: { name: 'IQ2_S', blockSize: 256, blockBytes: 82 },
  23: { name: 'IQ4_XS', blockSize: 256, blockBytes: 136 },
  24: { name: 'I8', blockSize: 1, blockBytes: 1 },
  25: { name: 'I16', blockSize: 1, blockBytes: 2 },
  26: { name: 'I32', blockSize: 1, blockBytes: 4 },
  27: { name: 'I64', blockSize: 1, blockBytes: 8 },
  28: { name: 'F64', blockSize: 1, blockBytes: 8 },
  29: { name: 'IQ1_M', blockSize: 256, blockBytes: 56 },
  30: { name: 'BF16', blockSize: 1, blockBytes: 2 },
  34: { name: 'TQ1_0', blockSize: 256, blockBytes: 54 },
  35: { name: 'TQ2_0', blockSize: 256, blockBytes: 66 },
  39: { name: 'MXFP4', blockSize: 32, blockBytes: 17 },
};

const GGML_TYPE_F32 = 0;
const GGML_TYPE_F16 = 1;

enum ValueType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

/** Smallest encoding of one value of each type, to reject impossible element counts before looping. */
function minimumValueBytes(type: ValueType): number {
  switch (type) {
    case ValueType.UINT8:
    case ValueType.INT8:
    case ValueType.BOOL:
      return 1;
    case ValueType.UINT16:
    case ValueType.INT16:
      return 2;
    case ValueType.UINT32:
    case ValueType.INT32:
    case ValueType.FLOAT32:
      return 4;
    case ValueType.UINT64:
    case ValueType.INT64:
    case ValueType.FLOAT64:
    case ValueType.STRING:
      return 8;
    case ValueType.ARRAY:
      return 12;
  }
}

class Cursor {
  private readonly view: DataView;
  private readonly decoder = new TextDecoder('utf-8', { fatal: true });
  position = 0;

  constructor(
    private readonly bytes: Uint8Array,
    private readonly fail: (message: string) => never,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  get remaining(): number {
    return this.bytes.byteLength - this.position;
  }

  private take(count: number, what: string): number {
    if (count > this.remaining) {
      this.fail(`file ends while reading ${what} at byte ${this.position} (needs ${count} bytes, ${this.remaining} left; truncated?)`);
    }
    const start = this.position;
    this.position += count;
    return start;
  }

  u8(what: string): number {
    return this.view.getUint8(this.take(1, what));
  }
  i8(what: string): number {
    return this.view.getInt8(this.take(1, what));
  }
  u16(what: string): number {
    return this.view.getUint16(this.take(2, what), true);
  }
  i16(what: string): number {
    return this.view.getInt16(this.take(2, what), true);
  }
  u32(what: string): number {
    return this.view.getUint32(this.take(4, what), true);
  }
  i32(what: string): number {
    return this.view.getInt32(this.take(4, what), true);
  }
  f32(what: string): number {
    return shortestFloat32Decimal(this.view.getFloat32(this.take(4, what), true));
  }
  f64(what: string): number {
    return this.view.getFloat64(this.take(8, what), true);
  }
  u64(what: string): number | bigint {
    return narrow(this.view.getBigUint64(this.take(8, what), true));
  }
  i64(what: string): number | bigint {
    return narrow(this.view.getBigInt64(this.take(8, what), true));
  }

  /** A u64 used as a size or count: must be a safe integer, else the file is corrupt. */
  size(what: string): number {
    const value = this.u64(what);
    if (typeof value !== 'number') this.fail(`${what} is ${value}, which no valid file can hold`);
    return value as number;
  }

  string(what: string): string {
    const length = this.size(`length of ${what}`);
    const start = this.take(length, what);
    try {
      return this.decoder.decode(this.bytes.subarray(start, start + length));
    } catch {
      return this.fail(`${what} is not valid UTF-8`);
    }
  }
}

/**
 * The shortest decimal that rounds to the same float32, so a stored 1e-5 reads back as 1e-5 rather than
 * 9.99999974737875e-6 and compares equal to the same value from a JSON config.
 */
function shortestFloat32Decimal(value: number): number {
  if (!Number.isFinite(value)) return value;
  for (let digits = 1; digits < 9; digits++) {
    const candidate = Number(value.toPrecision(digits));
    if (Math.fround(candidate) === value) return candidate;
  }
  return value;
}

/** 64-bit integers become plain numbers when exactly representable; larger ones stay bigint. */
function narrow(value: bigint): number | bigint {
  return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
}

export function parseGguf(buffer: Uint8Array, source = '<buffer>'): GgufFile {
  const fail = (message: string): never => {
    throw new GgufError(`${source}: ${message}`);
  };
  const cursor = new Cursor(buffer, fail);

  const magic = cursor.u32('magic');
  if (magic !== GGUF_MAGIC) fail('not a GGUF file (the first four bytes are not "GGUF")');
  const version = cursor.u32('version');
  if (!SUPPORTED_VERSIONS.includes(version)) {
    fail(
      `GGUF version ${version} is not supported (supported: ${SUPPORTED_VERSIONS.join(', ')}); ` +
        're-convert the model with a current llama.cpp',
    );
  }
  const tensorCount = cursor.size('tensor count');
  const metadataCount = cursor.size('metadata count');
  // Each metadata entry and tensor info takes at least this many bytes, so larger counts cannot be honest.
  if (metadataCount * 13 + tensorCount * 24 > cursor.remaining) {
    fail(`header claims ${metadataCount} metadata entries and ${tensorCount} tensors, more than the file can hold (corrupt or truncated)`);
  }

  const metadata = new Map<string, unknown>();
  for (let i = 0; i < metadataCount; i++) {
    const key = cursor.string(`metadata key #${i}`);
    if (metadata.has(key)) fail(`metadata key "${key}" appears twice`);
    const type = cursor.u32(`type of metadata "${key}"`);
    metadata.set(key, readValue(cursor, type, `metadata "${key}"`, 0, fail));
  }

  const alignment = metadata.get('general.alignment') ?? DEFAULT_ALIGNMENT;
  if (typeof alignment !== 'number' || !Number.isInteger(alignment) || alignment <= 0 || (alignment & (alignment - 1)) !== 0) {
    fail(`general.alignment ${String(alignment)} must be a positive power of two`);
  }
  const align = alignment as number;

  const tensors = new Map<string, GgufTensorInfo>();
  const extents: { name: string; offset: number; bytes: number }[] = [];
  for (let i = 0; i < tensorCount; i++) {
    const name = cursor.string(`name of tensor #${i}`);
    if (tensors.has(name)) fail(`tensor "${name}" appears twice`);
    const info = readTensorInfo(cursor, name, align, fail);
    tensors.set(name, info.tensor);
    extents.push({ name, offset: info.tensor.offset, bytes: info.bytes });
  }

  const dataOffset = Math.ceil(cursor.position / align) * align;
  const dataLength = buffer.byteLength - dataOffset;
  for (const { name, offset, bytes } of extents) {
    if (offset + bytes > dataLength) {
      fail(`tensor "${name}" needs bytes [${offset}, ${offset + bytes}) of a ${Math.max(dataLength, 0)}-byte data section (truncated?)`);
    }
  }
  return { version, metadata, tensors, dataOffset, buffer };
}

function readTensorInfo(
  cursor: Cursor,
  name: string,
  alignment: number,
  fail: (message: string) => never,
): { tensor: GgufTensorInfo; bytes: number } {
  const where = `tensor "${name}"`;
  const dimCount = cursor.u32(`dimension count of ${where}`);
  if (dimCount > MAX_DIMS) fail(`${where} has ${dimCount} dimensions; ggml allows at most ${MAX_DIMS}`);
  const innermostFirst: number[] = [];
  for (let d = 0; d < dimCount; d++) innermostFirst.push(cursor.size(`dimension ${d} of ${where}`));
  const type = cursor.u32(`type of ${where}`);
  const offset = cursor.size(`data offset of ${where}`);

  const traits = GGML_TYPES[type];
  if (!traits) fail(`${where} has unknown ggml type ${type} (a newer GGUF than this reader knows?)`);
  const elements = innermostFirst.reduce((product, dim) => product * dim, 1);
  if (!Number.isSafeInteger(elements)) fail(`${where} has dimensions [${innermostFirst.join(', ')}] too large to address`);
  if (innermostFirst.length > 0 && innermostFirst[0] % traits.blockSize !== 0) {
    fail(`${where} (${traits.name}) has a row length ${innermostFirst[0]} that is not a multiple of the block size ${traits.blockSize}`);
  }
  if (offset % alignment !== 0) fail(`${where} data offset ${offset} is not a multiple of the alignment ${alignment}`);
  return {
    tensor: { name, shape: innermostFirst.slice().reverse(), type, typeName: traits.name, offset },
    bytes: (elements / traits.blockSize) * traits.blockBytes,
  };
}

function readValue(cursor: Cursor, type: number, what: string, depth: number, fail: (message: string) => never): unknown {
  switch (type) {
    case ValueType.UINT8:
      return cursor.u8(what);
    case ValueType.INT8:
      return cursor.i8(what);
    case ValueType.UINT16:
      return cursor.u16(what);
    case ValueType.INT16:
      return cursor.i16(what);
    case ValueType.UINT32:
      return cursor.u32(what);
    case ValueType.INT32:
      return cursor.i32(what);
    case ValueType.FLOAT32:
      return cursor.f32(what);
    case ValueType.UINT64:
      return cursor.u64(what);
    case ValueType.INT64:
      return cursor.i64(what);
    case ValueType.FLOAT64:
      return cursor.f64(what);
    case ValueType.BOOL: {
      const value = cursor.u8(what);
      if (value > 1) fail(`${what} is a bool with value ${value}`);
      return value === 1;
    }
    case ValueType.STRING:
      return cursor.string(what);
    case ValueType.ARRAY: {
      if (depth >= MAX_ARRAY_NESTING) fail(`${what} nests arrays more than ${MAX_ARRAY_NESTING} deep`);
      const elementType = cursor.u32(`element type of ${what}`);
      if (!(elementType in ValueType)) fail(`${what} is an array of unknown value type ${elementType}`);
      const count = cursor.size(`length of ${what}`);
      if (count * minimumValueBytes(elementType) > cursor.remaining) {
        fail(`${what} claims ${count} elements, more than the rest of the file can hold (corrupt or truncated)`);
      }
      const values: unknown[] = [];
      for (let i = 0; i < count; i++) values.push(readValue(cursor, elementType, `${what}[${i}]`, depth + 1, fail));
      return values;
    }
    default:
      return fail(`${what} has unknown value type ${type}`);
  }
}

export async function readGguf(path: string): Promise<GgufFile> {
  const file = await readFile(path);
  return parseGguf(new Uint8Array(file.buffer, file.byteOffset, file.byteLength), path);
}

/** A tensor's bytes as stored (ggml blocks for quantized types): a view into the file buffer. */
export function ggufTensorBytes(file: GgufFile, name: string): Uint8Array {
  const tensor = file.tensors.get(name);
  if (!tensor) throw new GgufError(`GGUF has no tensor "${name}"`);
  const traits = GGML_TYPES[tensor.type];
  const start = file.dataOffset + tensor.offset;
  // parseGguf checked that every tensor's extent lies within the data section.
  return file.buffer.subarray(start, start + (elementCount(tensor.shape) / traits.blockSize) * traits.blockBytes);
}

/** Whether a tensor's type is one this runtime serves quantized (see ggml-quants.ts). */
export function isServedQuantizedType(tensor: GgufTensorInfo): boolean {
  return QUANTIZED_GGML_TYPES.includes(tensor.typeName);
}

/** F32 and F16 tensors as float32 (row-major, a fresh copy); other types are refused. */
export function ggufTensorToFloat32(file: GgufFile, name: string): Float32Array {
  const tensor = file.tensors.get(name);
  if (!tensor) throw new GgufError(`GGUF has no tensor "${name}"`);
  if (tensor.type !== GGML_TYPE_F32 && tensor.type !== GGML_TYPE_F16) {
    throw new GgufError(
      `tensor "${name}" has type ${tensor.typeName}; supported GGUF tensor types are F32, F16 and ` +
        `${QUANTIZED_GGML_TYPES.join(', ')} — re-quantize the model to one of them (Q4_K_M and Q5_K_M files use only these)`,
    );
  }
  return decodeFloats(ggufTensorBytes(file, name), tensor.type === GGML_TYPE_F32 ? 'F32' : 'F16');
}

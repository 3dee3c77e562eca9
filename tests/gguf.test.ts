import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { GgufError, ggufTensorToFloat32, parseGguf, readGguf } from '../src/formats/gguf.ts';
import { entryToFloat32, readSafetensors } from '../src/formats/safetensors.ts';
import { STORIES_GGUF, STORIES_HF_DIR } from './support/models.ts';

// GGUF metadata value types (ggml docs/gguf.md).
const T = { U8: 0, I8: 1, U16: 2, I16: 3, U32: 4, I32: 5, F32: 6, BOOL: 7, STRING: 8, ARRAY: 9, U64: 10, I64: 11, F64: 12 };
// ggml tensor types used below.
const GGML = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8, BF16: 30 };

interface ArrayValue {
  elementType: number;
  items: unknown[];
  /** Overrides the written element count, to fake a corrupt header. */
  count?: bigint;
}
interface TensorSpec {
  name: string;
  /** Innermost first, as GGUF stores them. */
  dims: number[];
  type: number;
  data: Uint8Array;
  /** Overrides the computed data offset. */
  offset?: number;
}

/** A minimal GGUF writer, enough to build valid and deliberately broken files for the reader. */
function buildGguf(spec: { version?: number; metadata?: [string, number, unknown][]; tensors?: TensorSpec[]; alignment?: number }): Uint8Array {
  const chunks: Uint8Array[] = [];
  const scalar = (bytes: number, write: (view: DataView) => void) => {
    const chunk = new Uint8Array(bytes);
    write(new DataView(chunk.buffer));
    chunks.push(chunk);
  };
  const u32 = (v: number) => scalar(4, (d) => d.setUint32(0, v, true));
  const u64 = (v: number | bigint) => scalar(8, (d) => d.setBigUint64(0, BigInt(v), true));
  const string = (v: string | Uint8Array) => {
    const bytes = typeof v === 'string' ? new TextEncoder().encode(v) : v;
    u64(bytes.byteLength);
    chunks.push(bytes);
  };
  const value = (type: number, v: unknown): void => {
    switch (type) {
      case T.U8: return scalar(1, (d) => d.setUint8(0, v as number));
      case T.I8: return scalar(1, (d) => d.setInt8(0, v as number));
      case T.U16: return scalar(2, (d) => d.setUint16(0, v as number, true));
      case T.I16: return scalar(2, (d) => d.setInt16(0, v as number, true));
      case T.U32: return u32(v as number);
      case T.I32: return scalar(4, (d) => d.setInt32(0, v as number, true));
      case T.F32: return scalar(4, (d) => d.setFloat32(0, v as number, true));
      case T.BOOL: return scalar(1, (d) => d.setUint8(0, Number(v)));
      case T.STRING: return string(v as string | Uint8Array);
      case T.U64: return u64(v as bigint);
      case T.I64: return scalar(8, (d) => d.setBigInt64(0, v as bigint, true));
      case T.F64: return scalar(8, (d) => d.setFloat64(0, v as number, true));
      case T.ARRAY: {
        const { elementType, items, count } = v as ArrayValue;
        u32(elementType);
        u64(count ?? BigInt(items.length));
        for (const item of items) value(elementType, item);
        return;
      }
      default:
        chunks.push(v as Uint8Array); // raw bytes for an unknown type
    }
  };

  const alignment = spec.alignment ?? 32;
  const metadata = spec.metadata ?? [];
  const tensors = spec.tensors ?? [];
  u32(0x46554747);
  u32(spec.version ?? 3);
  u64(tensors.length);
  u64(metadata.length);
  for (const [key, type, v] of metadata) {
    string(key);
    u32(type);
    value(type, v);
  }
  let dataSize = 0;
  const placed: { data: Uint8Array; offset: number }[] = [];
  for (const tensor of tensors) {
    const offset = tensor.offset ?? Math.ceil(dataSize / alignment) * alignment;
    string(tensor.name);
    u32(tensor.dims.length);
    for (const dim of tensor.dims) u64(dim);
    u32(tensor.type);
    u64(offset);
    placed.push({ data: tensor.data, offset });
    dataSize = Math.max(dataSize, offset + tensor.data.byteLength);
  }
  const headerSize = chunks.reduce((sum, chunk) => sum + chunk.byteLength, 0);
  const dataStart = Math.ceil(headerSize / alignment) * alignment;
  const out = new Uint8Array(dataStart + dataSize);
  let position = 0;
  for (const chunk of chunks) {
    out.set(chunk, position);
    position += chunk.byteLength;
  }
  for (const { data, offset } of placed) out.set(data, dataStart + offset);
  return out;
}

const f32Bytes = (values: number[]) => new Uint8Array(Float32Array.from(values).buffer);

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gguf-test-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('the real stories260K.gguf', () => {
  test('metadata and tensor infos match the model card', async () => {
    const file = await readGguf(STORIES_GGUF);
    assert.equal(file.version, 3);
    const m = file.metadata;
    assert.equal(m.get('general.architecture'), 'llama');
    assert.equal(m.get('llama.embedding_length'), 64);
    assert.equal(m.get('llama.feed_forward_length'), 172);
    assert.equal(m.get('llama.block_count'), 5);
    assert.equal(m.get('llama.attention.head_count'), 8);
    assert.equal(m.get('llama.attention.head_count_kv'), 4);
    assert.equal(m.get('llama.attention.layer_norm_rms_epsilon'), 1e-5);
    assert.equal(m.get('llama.context_length'), 128, 'the converter default the README warns about');
    assert.equal(m.has('llama.rope.freq_base'), false);
    const tokens = m.get('tokenizer.ggml.tokens') as string[];
    assert.equal(tokens.length, 512);
    assert.deepEqual(tokens.slice(0, 3), ['<unk>', '<s>', '</s>']);
    assert.equal((m.get('tokenizer.ggml.scores') as number[]).length, 512);
    assert.equal(m.get('tokenizer.ggml.bos_token_id'), 1);
    assert.equal(m.get('tokenizer.ggml.eos_token_id'), 2);

    assert.equal(file.tensors.size, 2 + 1 + 5 * 9, 'embedding, output norm, output, 9 per layer');
    const shape = (name: string) => file.tensors.get(name)!.shape;
    assert.deepEqual(shape('token_embd.weight'), [512, 64]);
    assert.deepEqual(shape('output.weight'), [512, 64]);
    assert.deepEqual(shape('output_norm.weight'), [64]);
    assert.deepEqual(shape('blk.4.attn_q.weight'), [64, 64]);
    assert.deepEqual(shape('blk.4.attn_k.weight'), [32, 64]);
    assert.deepEqual(shape('blk.4.ffn_gate.weight'), [172, 64]);
    assert.deepEqual(shape('blk.4.ffn_down.weight'), [64, 172]);
    for (const tensor of file.tensors.values()) {
      assert.equal(tensor.typeName, 'F32');
      assert.equal(tensor.offset % 32, 0);
    }
    assert.equal(file.dataOffset % 32, 0);
  });

  test('tensor data equals the same tensor from the Hugging Face safetensors export', async () => {
    const file = await readGguf(STORIES_GGUF);
    const hf = await readSafetensors(resolve(STORIES_HF_DIR, 'model.safetensors'));
    assert.deepEqual(ggufTensorToFloat32(file, 'token_embd.weight'), entryToFloat32(hf.tensors.get('model.embed_tokens.weight')!));
    assert.deepEqual(
      ggufTensorToFloat32(file, 'blk.2.ffn_down.weight'),
      entryToFloat32(hf.tensors.get('model.layers.2.mlp.down_proj.weight')!),
    );
  });

  test('a copy patched to a quantized type is refused when its tensor is read as floats', async () => {
    const original = await readFile(STORIES_GGUF);
    const patched = Buffer.from(original);
    // Tensor info layout: name, u32 n_dims (2), two u64 dims, then the u32 type.
    const name = Buffer.from('token_embd.weight');
    const typeAt = patched.indexOf(name) + name.byteLength + 4 + 2 * 8;
    assert.equal(patched.readUInt32LE(typeAt), GGML.F32);
    patched.writeUInt32LE(GGML.Q8_0, typeAt);
    const path = join(dir, 'patched-q8.gguf');
    await writeFile(path, patched);

    const file = await readGguf(path);
    assert.equal(file.tensors.get('token_embd.weight')!.typeName, 'Q8_0');
    assert.throws(() => ggufTensorToFloat32(file, 'token_embd.weight'), (error: unknown) => {
      assert.ok(error instanceof GgufError);
      assert.match(error.message, /tensor "token_embd\.weight" has type Q8_0; supported GGUF tensor types are F32, F16 and Q4_0/);
      return true;
    });
  });

  test('the file truncated anywhere gives a GgufError, never a RangeError', async () => {
    const original = new Uint8Array(await readFile(STORIES_GGUF));
    const { dataOffset } = parseGguf(original);
    const lengths = [0, 3, 4, 7, 8, 15, 16, 23, 24, original.byteLength - 1, dataOffset + 4];
    for (let length = 25; length < dataOffset; length += 97) lengths.push(length);
    for (const length of lengths) {
      assert.throws(
        () => parseGguf(original.subarray(0, length), 'cut.gguf'),
        (error: unknown) => error instanceof GgufError && error.message.startsWith('cut.gguf: '),
        `truncated to ${length} bytes`,
      );
    }
  });
});

describe('files built here', () => {
  test('every metadata value type, nested arrays and 64-bit integers read back', () => {
    for (const version of [2, 3]) {
      const file = parseGguf(
        buildGguf({
          version,
          metadata: [
            ['u8', T.U8, 255],
            ['i8', T.I8, -128],
            ['u16', T.U16, 65535],
            ['i16', T.I16, -32768],
            ['u32', T.U32, 4294967295],
            ['i32', T.I32, -2147483648],
            ['f32', T.F32, 0.1],
            ['f64', T.F64, 0.1],
            ['yes', T.BOOL, true],
            ['no', T.BOOL, false],
            ['text', T.STRING, 'héllo ▁wörld'],
            ['u64 small', T.U64, 2n ** 53n - 1n],
            ['u64 big', T.U64, 2n ** 64n - 1n],
            ['i64 negative', T.I64, -5n],
            ['i64 big', T.I64, -(2n ** 62n)],
            ['strings', T.ARRAY, { elementType: T.STRING, items: ['a', '', 'ü'] }],
            ['floats', T.ARRAY, { elementType: T.F32, items: [1.5, -0.25] }],
            [
              'nested',
              T.ARRAY,
              { elementType: T.ARRAY, items: [{ elementType: T.I32, items: [1, 2] }, { elementType: T.STRING, items: ['x'] }] },
            ],
            ['empty', T.ARRAY, { elementType: T.U8, items: [] }],
          ],
        }),
      );
      assert.equal(file.version, version);
      assert.deepEqual(Object.fromEntries(file.metadata), {
        u8: 255,
        i8: -128,
        u16: 65535,
        i16: -32768,
        u32: 4294967295,
        i32: -2147483648,
        f32: 0.1,
        f64: 0.1,
        yes: true,
        no: false,
        text: 'héllo ▁wörld',
        'u64 small': Number.MAX_SAFE_INTEGER,
        'u64 big': 2n ** 64n - 1n,
        'i64 negative': -5,
        'i64 big': -(2n ** 62n),
        strings: ['a', '', 'ü'],
        floats: [1.5, -0.25],
        nested: [[1, 2], ['x']],
        empty: [],
      });
      assert.equal(file.tensors.size, 0);
    }
  });

  test('F32 and F16 tensors decode with dims reversed to row-major, honouring general.alignment', () => {
    const half = new Uint8Array(new Uint16Array([0x3c00, 0xc000, 0x3800, 0x7bff, 0x0001, 0x8000]).buffer);
    const file = parseGguf(
      buildGguf({
        alignment: 64,
        metadata: [['general.alignment', T.U32, 64]],
        tensors: [
          { name: 'a', dims: [3, 2], type: GGML.F32, data: f32Bytes([1, 2, 3, 4, 5, 6]) },
          { name: 'b', dims: [2, 3], type: GGML.F16, data: half },
        ],
      }),
    );
    assert.equal(file.dataOffset % 64, 0);
    assert.equal(file.tensors.get('b')!.offset, 64);
    assert.deepEqual(file.tensors.get('a')!.shape, [2, 3]);
    assert.deepEqual([...ggufTensorToFloat32(file, 'a')], [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(file.tensors.get('b')!.shape, [3, 2]);
    assert.deepEqual([...ggufTensorToFloat32(file, 'b')], [1, -2, 0.5, 65504, 2 ** -24, -0]);
  });

  test('quantized and BF16 tensors are refused as floats naming the tensor and its type', () => {
    const file = parseGguf(
      buildGguf({
        tensors: [
          { name: 'blk.0.attn_q.weight', dims: [32, 2], type: GGML.Q4_0, data: new Uint8Array(2 * 18) },
          { name: 'bf', dims: [4], type: GGML.BF16, data: new Uint8Array(8) },
        ],
      }),
    );
    assert.equal(file.tensors.get('blk.0.attn_q.weight')!.typeName, 'Q4_0');
    assert.throws(
      () => ggufTensorToFloat32(file, 'blk.0.attn_q.weight'),
      /tensor "blk\.0\.attn_q\.weight" has type Q4_0; supported GGUF tensor types are F32, F16 and Q4_0, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K/,
    );
    assert.throws(() => ggufTensorToFloat32(file, 'bf'), /tensor "bf" has type BF16; supported GGUF tensor types/);
    assert.throws(() => ggufTensorToFloat32(file, 'missing'), /GGUF has no tensor "missing"/);
  });

  const nested = (depth: number): ArrayValue =>
    depth === 0 ? { elementType: T.U8, items: [1] } : { elementType: T.ARRAY, items: [nested(depth - 1)] };
  const oneF32 = (extra: Partial<TensorSpec>): TensorSpec => ({ name: 'w', dims: [4], type: GGML.F32, data: f32Bytes([1, 2, 3, 4]), ...extra });
  const corrupt: { problem: string; bytes: () => Uint8Array; message: RegExp }[] = [
    {
      problem: 'wrong magic',
      bytes: () => Uint8Array.from(buildGguf({}), (b, i) => (i === 0 ? 0x46 : b)),
      message: /not a GGUF file/,
    },
    { problem: 'version 1', bytes: () => buildGguf({ version: 1 }), message: /GGUF version 1 is not supported/ },
    {
      problem: 'an array count larger than the file',
      bytes: () => buildGguf({ metadata: [['big', T.ARRAY, { elementType: T.U32, items: [1], count: 2n ** 40n }]] }),
      message: /metadata "big" claims 1099511627776 elements, more than the rest of the file can hold/,
    },
    {
      problem: 'a count beyond 2^53',
      bytes: () => buildGguf({ metadata: [['big', T.ARRAY, { elementType: T.U8, items: [], count: 2n ** 63n }]] }),
      message: /length of metadata "big" is 9223372036854775808/,
    },
    {
      problem: 'arrays nested too deep',
      bytes: () => buildGguf({ metadata: [['deep', T.ARRAY, nested(20)]] }),
      message: /nests arrays more than 8 deep/,
    },
    {
      problem: 'unknown value type',
      bytes: () => buildGguf({ metadata: [['odd', 13, new Uint8Array(4)]] }),
      message: /metadata "odd" has unknown value type 13/,
    },
    {
      problem: 'invalid UTF-8 in a string',
      bytes: () => buildGguf({ metadata: [['name', T.STRING, Uint8Array.of(0x61, 0xff)]] }),
      message: /metadata "name" is not valid UTF-8/,
    },
    { problem: 'a bool that is not 0 or 1', bytes: () => buildGguf({ metadata: [['flag', T.BOOL, 2]] }), message: /"flag" is a bool with value 2/ },
    {
      problem: 'duplicate metadata key',
      bytes: () => buildGguf({ metadata: [['k', T.U8, 1], ['k', T.U8, 2]] }),
      message: /metadata key "k" appears twice/,
    },
    {
      problem: 'alignment that is not a power of two',
      bytes: () => buildGguf({ metadata: [['general.alignment', T.U32, 24]] }),
      message: /general\.alignment 24 must be a positive power of two/,
    },
    {
      problem: 'more than four dimensions',
      bytes: () => buildGguf({ tensors: [oneF32({ dims: [1, 1, 1, 2, 2] })] }),
      message: /tensor "w" has 5 dimensions; ggml allows at most 4/,
    },
    {
      problem: 'an unaligned tensor offset',
      bytes: () => buildGguf({ tensors: [oneF32({ offset: 4 })] }),
      message: /tensor "w" data offset 4 is not a multiple of the alignment 32/,
    },
    {
      problem: 'tensor data past the end of the file',
      bytes: () => buildGguf({ tensors: [oneF32({ dims: [8] })] }),
      message: /tensor "w" needs bytes \[0, 32\) of a 16-byte data section/,
    },
    {
      problem: 'duplicate tensor names',
      bytes: () => buildGguf({ tensors: [oneF32({}), oneF32({ offset: 32 })] }),
      message: /tensor "w" appears twice/,
    },
    {
      problem: 'an unknown ggml type',
      bytes: () => buildGguf({ tensors: [oneF32({ type: 99 })] }),
      message: /tensor "w" has unknown ggml type 99/,
    },
    {
      problem: 'a quantized row length that is not a whole number of blocks',
      bytes: () => buildGguf({ tensors: [oneF32({ dims: [30], type: GGML.Q4_0 })] }),
      message: /tensor "w" \(Q4_0\) has a row length 30 that is not a multiple of the block size 32/,
    },
    {
      problem: 'counts the file cannot hold',
      bytes: () => {
        const bytes = buildGguf({});
        new DataView(bytes.buffer).setBigUint64(8, 10n ** 9n, true);
        return bytes;
      },
      message: /header claims 0 metadata entries and 1000000000 tensors, more than the file can hold/,
    },
  ];
  for (const { problem, bytes, message } of corrupt) {
    test(`refuses ${problem}`, () => {
      assert.throws(
        () => parseGguf(bytes(), 'bad.gguf'),
        (error: unknown) => {
          assert.ok(error instanceof GgufError, `expected a GgufError, got ${String(error)}`);
          assert.match(error.message, /^bad\.gguf: /);
          assert.match(error.message, message);
          return true;
        },
      );
    });
  }
});

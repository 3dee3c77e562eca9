import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import {
  SafetensorsError,
  entryAsFloat32,
  entryToFloat32,
  parseSafetensors,
  readSafetensors,
  serializeSafetensors,
  writeSafetensors,
} from '../src/formats/safetensors.ts';
import { STORIES_HF_DIR } from './support/models.ts';

const REAL_FILE = resolve(STORIES_HF_DIR, 'model.safetensors');

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'safetensors-test-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A file with a hand-written header, for the corruption cases. */
function rawFile(header: string | Uint8Array | object, dataBytes: number, declaredLength?: bigint): Uint8Array {
  const json =
    header instanceof Uint8Array ? header : new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.byteLength + dataBytes);
  new DataView(out.buffer).setBigUint64(0, declaredLength ?? BigInt(json.byteLength), true);
  out.set(json, 8);
  return out;
}

function bitsOf(bytes: Uint8Array): number[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Array.from({ length: bytes.byteLength / 2 }, (_, i) => view.getUint16(2 * i, true));
}

describe('writing and reading back', () => {
  test('F32, F16 and BF16 tensors round-trip through a real file with metadata', async () => {
    const path = join(dir, 'roundtrip.safetensors');
    const f32 = Float32Array.from([1.5, -2.25, 3.1415927, 1e-30, -0, 65504, 0.1]);
    const exactInHalf = Float32Array.from([1, -2, 0.5, 65504, 2 ** -24, -0.099975586]);
    const exactInBfloat = Float32Array.from([1, -2, 3.140625, 2 ** 100, -0.5]);
    await writeSafetensors(
      path,
      {
        'layer.weight': { dtype: 'F32', shape: [7], data: f32 },
        half: { dtype: 'F16', shape: [2, 3], data: exactInHalf },
        brain: { dtype: 'BF16', shape: [5, 1], data: exactInBfloat },
      },
      { format: 'pt', note: 'round trip' },
    );
    const file = await readSafetensors(path);
    assert.deepEqual(file.metadata, { format: 'pt', note: 'round trip' });
    assert.deepEqual([...file.tensors.keys()].sort(), ['brain', 'half', 'layer.weight']);
    assert.deepEqual(file.tensors.get('half')!.shape, [2, 3]);
    assert.equal(file.tensors.get('half')!.dtype, 'F16');
    assert.deepEqual(entryToFloat32(file.tensors.get('layer.weight')!), f32);
    assert.deepEqual(entryToFloat32(file.tensors.get('half')!), exactInHalf);
    assert.deepEqual(entryToFloat32(file.tensors.get('brain')!), exactInBfloat);
    assert.deepEqual(await readdir(dir).then((names) => names.filter((n) => n.endsWith('.tmp'))), [], 'no temp file left');
  });

  test('16-bit encodings round to nearest even with the IEEE bit patterns', () => {
    const values = Float32Array.from([1, -2, 65504, 2 ** -24, 70000, 0.1, 1 / 3, NaN, 2 ** -26]);
    const bytes = serializeSafetensors({
      h: { dtype: 'F16', shape: [values.length], data: values },
      b: { dtype: 'BF16', shape: [values.length], data: values },
    });
    const file = parseSafetensors(bytes);
    const half = bitsOf(file.tensors.get('h')!.bytes);
    assert.deepEqual(half.slice(0, 7), [0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0x2e66, 0x3555]);
    assert.ok((half[7] & 0x7c00) === 0x7c00 && (half[7] & 0x3ff) !== 0, 'NaN stays NaN');
    assert.equal(half[8], 0, 'below half the smallest subnormal rounds to zero');
    const bfloat = bitsOf(file.tensors.get('b')!.bytes);
    assert.deepEqual(bfloat.slice(0, 7), [0x3f80, 0xc000, 0x4780, 0x3380, 0x4789, 0x3dcd, 0x3eab]);
    assert.ok(Number.isNaN(entryToFloat32(file.tensors.get('b')!)[7]));
  });

  test('raw 16-bit patterns in a Uint16Array are written unchanged', () => {
    const bits = Uint16Array.from([0x3c00, 0x7bff, 0x8001]);
    const file = parseSafetensors(serializeSafetensors({ t: { dtype: 'F16', shape: [3], data: bits } }));
    assert.deepEqual(bitsOf(file.tensors.get('t')!.bytes), [...bits]);
    assert.deepEqual([...entryToFloat32(file.tensors.get('t')!)], [1, 65504, -(2 ** -24)]);
  });

  test('the header is 8-byte aligned, space-padded, __metadata__ first and tensors sorted by name', () => {
    const bytes = serializeSafetensors(
      {
        zeta: { dtype: 'F32', shape: [1], data: Float32Array.of(1) },
        '10': { dtype: 'F32', shape: [1], data: Float32Array.of(2) },
        alpha: { dtype: 'F32', shape: [2], data: Float32Array.of(3, 4) },
      },
      { format: 'pt' },
    );
    const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal(headerLength % 8, 0);
    const header = new TextDecoder().decode(bytes.subarray(8, 8 + headerLength));
    assert.match(header, /^\{"__metadata__":\{"format":"pt"\},"10":.*,"alpha":.*,"zeta":.*\} *$/);
    assert.deepEqual(JSON.parse(header).alpha, { dtype: 'F32', shape: [2], data_offsets: [4, 12] });
  });

  test('re-serializing the real stories260K checkpoint reproduces the file byte for byte', async () => {
    const original = new Uint8Array(await readFile(REAL_FILE));
    const file = parseSafetensors(original, REAL_FILE);
    assert.equal(file.tensors.size, 1 + 5 * 9 + 1, "embedding, 9 per layer, final norm (classifier tied)");
    assert.deepEqual(file.tensors.get('model.layers.0.mlp.down_proj.weight')!.shape, [64, 172]);
    const tensors = Object.fromEntries(
      [...file.tensors].map(([name, entry]) => [name, { dtype: 'F32' as const, shape: entry.shape, data: entryToFloat32(entry) }]),
    );
    assert.ok(Buffer.from(serializeSafetensors(tensors, file.metadata)).equals(original));
  });

  test('writing over an existing file replaces it atomically', async () => {
    const path = join(dir, 'replace.safetensors');
    await writeSafetensors(path, { a: { dtype: 'F32', shape: [1], data: Float32Array.of(1) } });
    await writeSafetensors(path, { b: { dtype: 'F32', shape: [2], data: Float32Array.of(2, 3) } });
    assert.deepEqual([...(await readSafetensors(path)).tensors.keys()], ['b']);
  });

  test('writer refuses data that does not match its shape, and the reserved name', () => {
    assert.throws(
      () => serializeSafetensors({ t: { dtype: 'F32', shape: [2, 2], data: new Float32Array(3) } }),
      /tensor "t": shape \[2, 2\] holds 4 values but data has 3/,
    );
    assert.throws(
      () => serializeSafetensors({ __metadata__: { dtype: 'F32', shape: [1], data: new Float32Array(1) } }),
      /reserved/,
    );
  });
});

describe('refusing corrupt files', () => {
  const entry = (dtype: string, shape: unknown, offsets: unknown) => ({ dtype, shape, data_offsets: offsets });
  const cases: { problem: string; file: () => Uint8Array; message: RegExp }[] = [
    { problem: 'file shorter than the length prefix', file: () => new Uint8Array(5), message: /too short for the 8-byte header length/ },
    {
      problem: 'header length beyond the file',
      file: () => rawFile({}, 0, 1000n),
      message: /header length 1000 runs past the end of the 10-byte file/,
    },
    { problem: 'huge header length', file: () => rawFile({}, 0, 2n ** 40n), message: /exceeds the 104857600-byte limit/ },
    { problem: 'bad JSON', file: () => rawFile('{"a": ', 0), message: /header is not valid JSON/ },
    { problem: 'invalid UTF-8', file: () => rawFile(Uint8Array.of(0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d), 0), message: /not valid UTF-8/ },
    { problem: 'header not an object', file: () => rawFile('[1, 2]', 0), message: /header is not a JSON object/ },
    {
      problem: 'non-string metadata',
      file: () => rawFile({ __metadata__: { epoch: 3 } }, 0),
      message: /__metadata__\["epoch"\] must be a string/,
    },
    {
      problem: 'offsets past the end of the data',
      file: () => rawFile({ w: entry('F32', [4], [0, 16]) }, 8),
      message: /tensor "w": data_offsets \[0, 16\] run past the end of the 8-byte data section/,
    },
    {
      problem: 'overlapping tensors',
      file: () => rawFile({ a: entry('F32', [2], [0, 8]), b: entry('F32', [2], [4, 12]) }, 12),
      message: /tensor "b" \[4, 12\] overlaps tensor "a" \[0, 8\]/,
    },
    {
      problem: 'a gap between tensors',
      file: () => rawFile({ a: entry('F32', [1], [0, 4]), b: entry('F32', [1], [8, 12]) }, 12),
      message: /data bytes \[4, 8\) before tensor "b" belong to no tensor/,
    },
    {
      problem: 'bytes after the last tensor',
      file: () => rawFile({ a: entry('F32', [1], [0, 4]) }, 6),
      message: /data bytes \[4, 6\) at the end of the file belong to no tensor/,
    },
    {
      problem: 'shape and size mismatch',
      file: () => rawFile({ w: entry('F16', [3, 3], [0, 16]) }, 16),
      message: /tensor "w": shape \[3, 3\] of F16 needs 18 bytes but data_offsets \[0, 16\] hold 16/,
    },
    {
      problem: 'unknown dtype',
      file: () => rawFile({ w: entry('F8_E4M3', [2], [0, 2]) }, 2),
      message: /tensor "w": unknown dtype "F8_E4M3"/,
    },
    {
      problem: 'negative dimension',
      file: () => rawFile({ w: entry('F32', [-1, 2], [0, 0]) }, 0),
      message: /tensor "w": shape \[-1,2\] must be a list of non-negative integers/,
    },
    {
      problem: 'fractional dimension',
      file: () => rawFile({ w: entry('F32', [1.5], [0, 6]) }, 6),
      message: /tensor "w": shape \[1.5\] must be a list of non-negative integers/,
    },
    {
      problem: 'offsets that begin after they end',
      file: () => rawFile({ w: entry('F32', [0], [4, 0]) }, 4),
      message: /tensor "w": data_offsets \[4, 0\] begin after they end/,
    },
    {
      problem: 'malformed offsets',
      file: () => rawFile({ w: entry('F32', [1], [0]) }, 4),
      message: /tensor "w": data_offsets \[0\] must be two non-negative integers/,
    },
    {
      problem: 'an entry that is not an object',
      file: () => rawFile({ w: 'F32' }, 0),
      message: /tensor "w": entry must be an object/,
    },
  ];
  for (const { problem, file, message } of cases) {
    test(problem, () => {
      assert.throws(
        () => parseSafetensors(file(), 'corrupt.safetensors'),
        (error: unknown) => {
          assert.ok(error instanceof SafetensorsError, `expected a SafetensorsError, got ${String(error)}`);
          assert.match(error.message, /^corrupt\.safetensors: /);
          assert.match(error.message, message);
          return true;
        },
      );
    });
  }

  test('the real file truncated anywhere is refused with a message naming the path', async () => {
    const original = await readFile(REAL_FILE);
    const headerEnd = 8 + Number(original.readBigUInt64LE(0));
    for (const length of [0, 7, 8, 100, headerEnd - 1, headerEnd, headerEnd + 1000, original.byteLength - 1]) {
      const path = join(dir, `truncated-${length}.safetensors`);
      await writeFile(path, original.subarray(0, length));
      await assert.rejects(readSafetensors(path), (error: unknown) => {
        assert.ok(error instanceof SafetensorsError);
        assert.ok(error.message.startsWith(`${path}: `), error.message);
        return true;
      });
    }
  });
});

test('entryToFloat32 refuses non-float dtypes, naming tensor and dtype', () => {
  const file = parseSafetensors(rawFile({ ids: { dtype: 'I32', shape: [2], data_offsets: [0, 8] } }, 8));
  assert.throws(() => entryToFloat32(file.tensors.get('ids')!), /tensor "ids" has dtype I32; only F32, F16 and BF16/);
});

/** An F32 tensor `w` holding 2.5 whose data starts at an odd byte of the file buffer. */
function unalignedTensor() {
  const file = parseSafetensors(
    rawFile({ pad: { dtype: 'U8', shape: [1], data_offsets: [0, 1] }, w: { dtype: 'F32', shape: [1], data_offsets: [1, 5] } }, 5),
  );
  const w = file.tensors.get('w')!;
  new DataView(w.bytes.buffer, w.bytes.byteOffset).setFloat32(0, 2.5, true);
  return w;
}

test('entryToFloat32 returns an aligned copy even when the tensor starts at an odd byte', () => {
  const w = unalignedTensor();
  const values = entryToFloat32(w);
  assert.deepEqual([...values], [2.5]);
  w.bytes.fill(0);
  assert.deepEqual([...values], [2.5], 'the result does not alias the file buffer');
});

test('entryAsFloat32 reads aligned F32 data in place, and decodes unaligned or 16-bit data into its own array', () => {
  const bytes = serializeSafetensors({
    w: { dtype: 'F32', shape: [3], data: Float32Array.of(1.5, -2, 0.25) },
    h: { dtype: 'F16', shape: [2], data: Float32Array.of(0.5, -4) },
  });
  const file = parseSafetensors(bytes);
  const w = file.tensors.get('w')!;
  const view = entryAsFloat32(w);
  assert.deepEqual([...view], [1.5, -2, 0.25]);
  assert.equal(view.buffer, bytes.buffer, 'aligned F32 values are a view of the file buffer');
  assert.deepEqual([...entryAsFloat32(file.tensors.get('h')!)], [0.5, -4]);

  const unaligned = unalignedTensor();
  const copy = entryAsFloat32(unaligned);
  assert.deepEqual([...copy], [2.5]);
  assert.notEqual(copy.buffer, unaligned.bytes.buffer, 'unaligned data is copied into an aligned array');
});

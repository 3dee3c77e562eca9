import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { configFromHuggingFace } from '../src/model/config.ts';
import type { LlamaConfig, LoraTargetModule } from '../src/model/types.ts';
import { entryToFloat32, readSafetensors, writeSafetensors, type SafetensorsTensorInput } from '../src/formats/safetensors.ts';
import { elementCount } from '../src/formats/tensor-shape.ts';
import { AdapterError, type AdapterErrorCode } from '../src/adapters/adapter-error.ts';
import { loadLoraAdapter, loraTensorKey, projectionDims, type LoraAdapter } from '../src/adapters/lora.ts';
import { parsePeftConfig, planLoraModules } from '../src/adapters/peft-config.ts';
import { randomLoraAdapter, writeLoraAdapter, type LoraAdapterSpec } from '../src/adapters/lora-writer.ts';
import { STORIES_HF_DIR } from './support/models.ts';

let base: LlamaConfig;
let root: string;
let dirCount = 0;

before(async () => {
  base = configFromHuggingFace(JSON.parse(await readFile(join(STORIES_HF_DIR, 'config.json'), 'utf8')));
  root = await mkdtemp(join(tmpdir(), 'lora-adapter-test-'));
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

async function writeAdapter(spec: LoraAdapterSpec): Promise<string> {
  const dir = join(root, `adapter-${dirCount++}`);
  await writeLoraAdapter(dir, spec);
  return dir;
}

function smallAdapter(targetModules: LoraTargetModule[] = ['q_proj', 'v_proj'], rank = 4): LoraAdapterSpec {
  return randomLoraAdapter(base, { rank, targetModules, seed: 7, std: 0.1, alpha: 8 });
}

async function editConfig(dir: string, edit: (json: Record<string, unknown>) => void): Promise<void> {
  const path = join(dir, 'adapter_config.json');
  const json = JSON.parse(await readFile(path, 'utf8'));
  edit(json);
  await writeFile(path, JSON.stringify(json));
}

/** Rewrites the weights file through the real safetensors reader and writer, letting a test add, drop or alter tensors. */
async function editWeights(dir: string, edit: (tensors: Record<string, SafetensorsTensorInput>) => void): Promise<void> {
  const path = join(dir, 'adapter_model.safetensors');
  const file = await readSafetensors(path);
  const tensors: Record<string, SafetensorsTensorInput> = {};
  for (const [name, entry] of file.tensors) tensors[name] = { dtype: 'F32', shape: entry.shape, data: entryToFloat32(entry) };
  edit(tensors);
  await writeSafetensors(path, tensors, file.metadata);
}

/** Relabels one tensor's dtype and shape in the header, keeping its bytes: the writer only produces float dtypes. */
async function relabelTensor(dir: string, key: string, dtype: string, shape: number[]): Promise<void> {
  const path = join(dir, 'adapter_model.safetensors');
  const bytes = await readFile(path);
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8'));
  header[key] = { ...header[key], dtype, shape };
  const text = JSON.stringify(header);
  assert.ok(text.length <= headerLength, 'relabelled header must fit in the original');
  bytes.write(text.padEnd(headerLength, ' '), 8, 'utf8');
  await writeFile(path, bytes);
}

async function assertRefused(dir: string, code: AdapterErrorCode, ...messageParts: (string | RegExp)[]): Promise<void> {
  await assert.rejects(loadLoraAdapter(dir, base), (error: unknown) => {
    assert.ok(error instanceof AdapterError, `expected an AdapterError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    for (const part of messageParts) {
      if (typeof part === 'string') assert.ok(error.message.includes(part), `message "${error.message}" lacks "${part}"`);
      else assert.match(error.message, part);
    }
    return true;
  });
}

function moduleOf(adapter: LoraAdapter, layer: number, module: LoraTargetModule) {
  const found = adapter.modules.find((m) => m.layer === layer && m.module === module);
  assert.ok(found, `module ${module} of layer ${layer} not loaded`);
  return found;
}

test('a written adapter loads back with exact values, shapes from the base and scale alpha/r', async () => {
  const spec = randomLoraAdapter(base, { rank: 4, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], seed: 1, alpha: 8 });
  spec.baseModel = 'stories260K';
  const dir = await writeAdapter(spec);
  const adapter = await loadLoraAdapter(dir, base);

  assert.equal(adapter.rank, 4);
  assert.deepEqual(adapter.targetModules, ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']);
  assert.equal(adapter.modules.length, base.numLayers * 7);
  assert.equal(adapter.config.baseModelNameOrPath, 'stories260K');
  for (const written of spec.modules) {
    const loaded = moduleOf(adapter, written.layer, written.module);
    assert.deepEqual(loaded.A, written.A);
    assert.deepEqual(loaded.B, written.B);
    assert.equal(loaded.rank, 4);
    assert.equal(loaded.scale, 2);
  }
  // The stories260K shapes: hidden 64, 8 heads and 4 kv heads of 8, intermediate 172.
  assert.equal(moduleOf(adapter, 0, 'q_proj').B.length, 64 * 4);
  assert.equal(moduleOf(adapter, 0, 'k_proj').B.length, 32 * 4);
  assert.equal(moduleOf(adapter, 0, 'down_proj').A.length, 4 * 172);
  assert.ok(moduleOf(adapter, 0, 'q_proj').B.some((value) => value !== 0), 'random adapters must have a non-zero B');
  const floats = spec.modules.reduce((total, m) => total + m.A.length + m.B.length, 0);
  assert.equal(adapter.byteSize, floats * 4);
});

test('the same seed gives the same random adapter and another seed a different one', () => {
  const first = randomLoraAdapter(base, { rank: 2, targetModules: ['v_proj'], seed: 42 });
  const again = randomLoraAdapter(base, { rank: 2, targetModules: ['v_proj'], seed: 42 });
  const other = randomLoraAdapter(base, { rank: 2, targetModules: ['v_proj'], seed: 43 });
  assert.deepEqual(again.modules[0].B, first.modules[0].B);
  assert.notDeepEqual(other.modules[0].B, first.modules[0].B);
});

test('rsLoRA scales by alpha/sqrt(r)', async () => {
  const spec = { ...smallAdapter(['q_proj'], 4), alpha: 16, useRslora: true };
  const adapter = await loadLoraAdapter(await writeAdapter(spec), base);
  assert.ok(adapter.modules.every((module) => module.scale === 8));
});

test('rank_pattern and alpha_pattern give per-module rank and scale, first matching key winning', async () => {
  const rankPattern = { 'layers\\.1\\.self_attn\\.q_proj': 8, q_proj: 6 };
  const alphaPattern = { v_proj: 32 };
  const rankOf = (layer: number, module: LoraTargetModule) => (module === 'q_proj' ? (layer === 1 ? 8 : 6) : 4);
  const modules = [];
  for (let layer = 0; layer < base.numLayers; layer++) {
    for (const module of ['q_proj', 'v_proj'] as const) {
      const { inFeatures, outFeatures } = projectionDims(base, module);
      const rank = rankOf(layer, module);
      modules.push({
        layer,
        module,
        A: Float32Array.from({ length: rank * inFeatures }, (_, i) => (i % 7) - 3),
        B: Float32Array.from({ length: outFeatures * rank }, (_, i) => (i % 5) - 2),
      });
    }
  }
  const dir = await writeAdapter({ r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'], modules, rankPattern, alphaPattern });
  const adapter = await loadLoraAdapter(dir, base);

  assert.equal(adapter.rank, 8);
  assert.deepEqual(
    adapter.modules.filter((m) => m.layer <= 1).map(({ layer, module, rank, scale }) => ({ layer, module, rank, scale })),
    [
      { layer: 0, module: 'q_proj', rank: 6, scale: 8 / 6 },
      { layer: 0, module: 'v_proj', rank: 4, scale: 32 / 4 },
      { layer: 1, module: 'q_proj', rank: 8, scale: 8 / 8 },
      { layer: 1, module: 'v_proj', rank: 4, scale: 32 / 4 },
    ],
  );
  assert.deepEqual(moduleOf(adapter, 1, 'q_proj').A, modules[2].A);
});

test('keys with the ".default" adapter name are accepted', async () => {
  const spec = smallAdapter();
  const dir = await writeAdapter(spec);
  await editWeights(dir, (tensors) => {
    for (const key of Object.keys(tensors)) {
      tensors[key.replace(/\.weight$/, '.default.weight')] = tensors[key];
      delete tensors[key];
    }
  });
  const adapter = await loadLoraAdapter(dir, base);
  assert.deepEqual(moduleOf(adapter, 2, 'v_proj').B, spec.modules.find((m) => m.layer === 2 && m.module === 'v_proj')?.B);
});

test('BF16 weights load as their float32 values', async () => {
  const dir = await writeAdapter(smallAdapter(['o_proj']));
  const key = loraTensorKey(3, 'o_proj', 'A');
  const values = Float32Array.from({ length: 4 * 64 }, (_, i) => (i - 128) / 64);
  await editWeights(dir, (tensors) => {
    tensors[key] = { dtype: 'BF16', shape: [4, 64], data: values };
  });
  const adapter = await loadLoraAdapter(dir, base);
  // Multiples of 1/64 in [-2, 2) are exact in bfloat16.
  assert.deepEqual(moduleOf(adapter, 3, 'o_proj').A, values);
});

test('an adapter on a subset of modules and layers loads only those', async () => {
  const full = smallAdapter(['k_proj', 'down_proj']);
  const spec = { ...full, layersToTransform: [1, 3], modules: full.modules.filter((m) => m.layer === 1 || m.layer === 3) };
  const adapter = await loadLoraAdapter(await writeAdapter(spec), base);
  assert.deepEqual(
    adapter.modules.map(({ layer, module }) => `${layer}.${module}`),
    ['1.k_proj', '1.down_proj', '3.k_proj', '3.down_proj'],
  );
  assert.deepEqual(adapter.targetModules, ['k_proj', 'down_proj']);
});

test('a pickled .bin file is refused, asking for safetensors', async () => {
  const dir = await writeAdapter(smallAdapter());
  await writeFile(join(dir, 'adapter_model.bin'), 'not loaded');
  await assertRefused(dir, 'unsupported_format', 'adapter_model.bin', /convert the adapter to safetensors/);
});

test('a directory without adapter_config.json is refused', async () => {
  const dir = await writeAdapter(smallAdapter());
  await unlink(join(dir, 'adapter_config.json'));
  await assertRefused(dir, 'missing_file', 'adapter_config.json is missing');
});

const configRefusals: { title: string; edit: (json: Record<string, unknown>) => void; code: AdapterErrorCode; parts: (string | RegExp)[] }[] = [
  { title: 'peft_type IA3 read as LoRA', edit: (j) => (j.peft_type = 'IA3'), code: 'invalid_config', parts: ['"peft_type" must be "LORA" for a LoRA adapter, got "IA3"'] },
  { title: 'a use_dora that is not a boolean', edit: (j) => (j.use_dora = 'yes'), code: 'invalid_config', parts: ['"use_dora" must be true or false'] },
  { title: 'PiSSA init', edit: (j) => (j.init_lora_weights = 'pissa_niter_4'), code: 'unsupported_feature', parts: ['"init_lora_weights": "pissa_niter_4"', 'rewrites the base weights'] },
  { title: 'layer_replication', edit: (j) => (j.layer_replication = [[0, 3], [1, 5]]), code: 'unsupported_feature', parts: ['"layer_replication"'] },
  { title: 'modules_to_save', edit: (j) => (j.modules_to_save = ['lm_head']), code: 'unsupported_feature', parts: ['"modules_to_save": ["lm_head"]'] },
  { title: 'an embed_tokens target', edit: (j) => (j.target_modules = ['q_proj', 'v_proj', 'embed_tokens']), code: 'unsupported_feature', parts: ['embed_tokens'] },
  { title: 'bias training', edit: (j) => (j.bias = 'lora_only'), code: 'unsupported_feature', parts: ['"bias": "lora_only"'] },
  { title: 'a non-integer r', edit: (j) => (j.r = 2.5), code: 'invalid_config', parts: ['"r" must be a positive integer, got 2.5'] },
];

for (const { title, edit, code, parts } of configRefusals) {
  test(`adapter_config.json with ${title} is refused`, async () => {
    const dir = await writeAdapter(smallAdapter());
    await editConfig(dir, edit);
    await assertRefused(dir, code, 'adapter_config.json', ...parts);
  });
}

const zeros = (...shape: number[]): SafetensorsTensorInput => ({ dtype: 'F32', shape, data: new Float32Array(elementCount(shape)) });

const weightRefusals: { title: string; key: string; edit: (tensors: Record<string, SafetensorsTensorInput>, key: string) => void; code: AdapterErrorCode; parts: string[] }[] = [
  { title: 'a tensor of the wrong shape', key: loraTensorKey(2, 'v_proj', 'B'), edit: (t, key) => (t[key] = zeros(31, 4)), code: 'shape_mismatch', parts: ['has shape [31, 4], expected [32, 4]'] },
  { title: 'a NaN value', key: loraTensorKey(4, 'q_proj', 'B'), edit: (t, key) => ((t[key].data as Float32Array)[9] = NaN), code: 'non_finite', parts: ['holds NaN at element 9'] },
  { title: 'an infinite value', key: loraTensorKey(1, 'q_proj', 'A'), edit: (t, key) => ((t[key].data as Float32Array)[130] = Infinity), code: 'non_finite', parts: ['holds Infinity at element 130 (row 2)'] },
  { title: 'a negative infinite value', key: loraTensorKey(2, 'v_proj', 'B'), edit: (t, key) => ((t[key].data as Float32Array)[0] = -Infinity), code: 'non_finite', parts: ['holds -Infinity at element 0'] },
  { title: 'an embedding adapter key', key: 'base_model.model.model.embed_tokens.lora_embedding_A', edit: (t, key) => (t[key] = zeros(4, 512)), code: 'invalid_tensor', parts: ['unexpected tensor'] },
  { title: 'a DoRA magnitude vector without use_dora', key: 'base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector', edit: (t, key) => (t[key] = zeros(64)), code: 'invalid_tensor', parts: ['does not set "use_dora": true'] },
  { title: 'a layer index beyond the base model', key: loraTensorKey(5, 'q_proj', 'A'), edit: (t, key) => (t[key] = zeros(4, 64)), code: 'incompatible_base', parts: ['is for layer 5', 'has 5 layers'] },
  { title: 'a module the config does not target', key: loraTensorKey(0, 'k_proj', 'A'), edit: (t, key) => (t[key] = zeros(4, 64)), code: 'invalid_tensor', parts: ['does not target'] },
  { title: 'a missing lora_B', key: loraTensorKey(3, 'v_proj', 'B'), edit: (t, key) => delete t[key], code: 'missing_tensor', parts: ['is missing'] },
];

for (const { title, key, edit, code, parts } of weightRefusals) {
  test(`adapter_model.safetensors with ${title} is refused naming the tensor`, async () => {
    const dir = await writeAdapter(smallAdapter());
    await editWeights(dir, (tensors) => edit(tensors, key));
    await assertRefused(dir, code, 'adapter_model.safetensors', `"${key}"`, ...parts);
  });
}

test('F64 and I32 tensors are refused naming the tensor and dtype', async () => {
  const key = loraTensorKey(0, 'q_proj', 'A');
  const f64 = await writeAdapter(smallAdapter());
  // 4x64 float32 bytes are exactly 2x64 float64 values.
  await relabelTensor(f64, key, 'F64', [2, 64]);
  await assertRefused(f64, 'invalid_tensor', `"${key}" has dtype F64`);
  const i32 = await writeAdapter(smallAdapter());
  await relabelTensor(i32, key, 'I32', [4, 64]);
  await assertRefused(i32, 'invalid_tensor', `"${key}" has dtype I32`);
});

test('tensors whose rank disagrees with rank_pattern are refused', async () => {
  const dir = await writeAdapter(smallAdapter());
  await editConfig(dir, (json) => (json.rank_pattern = { q_proj: 8 }));
  await assertRefused(dir, 'shape_mismatch', `"${loraTensorKey(0, 'q_proj', 'A')}" has shape [4, 64], expected [8, 64]`, 'rank_pattern');
});

test('a corrupt safetensors header is reported as a corrupt adapter_model.safetensors', async () => {
  const dir = await writeAdapter(smallAdapter());
  const path = join(dir, 'adapter_model.safetensors');
  const bytes = await readFile(path);
  bytes.write('[', 8);
  await writeFile(path, bytes);
  await assertRefused(dir, 'corrupt_file', 'adapter_model.safetensors', 'header is not valid JSON');
});

function plan(config: Record<string, unknown>): string[] {
  const json = { peft_type: 'LORA', r: 2, lora_alpha: 4, ...config };
  return planLoraModules(parsePeftConfig(json), base).map(({ name }) => name);
}

test('target_modules follows PEFT: all-linear, regexes, exclusions and layer restrictions', () => {
  assert.equal(plan({ target_modules: 'all-linear', init_lora_weights: 'eva' }).length, base.numLayers * 7);
  assert.deepEqual(plan({ target_modules: String.raw`.*\.[24]\.self_attn\.(q|v)_proj` }), [
    'model.layers.2.self_attn.q_proj',
    'model.layers.2.self_attn.v_proj',
    'model.layers.4.self_attn.q_proj',
    'model.layers.4.self_attn.v_proj',
  ]);
  assert.deepEqual(plan({ target_modules: ['up_proj'], exclude_modules: String.raw`.*\.[0-3]\..*` }), ['model.layers.4.mlp.up_proj']);
  // A full module name bypasses layers_to_transform, as in PEFT; a suffix is restricted by it.
  assert.deepEqual(plan({ target_modules: ['model.layers.0.self_attn.o_proj', 'o_proj'], layers_to_transform: 3, layers_pattern: 'layers' }), [
    'model.layers.0.self_attn.o_proj',
    'model.layers.3.self_attn.o_proj',
  ]);
});

test('targets the base model does not have are refused', () => {
  assert.throws(() => plan({ target_modules: ['q_proj'], layers_to_transform: [7] }), { code: 'incompatible_base', message: /"layers_to_transform" names layer 7/ });
  assert.throws(() => plan({ target_modules: ['c_attn'] }), { code: 'incompatible_base', message: /"c_attn" is not a projection of a Llama model/ });
  assert.throws(() => plan({ target_modules: '.*lm_head' }), { code: 'unsupported_feature', message: /lm_head/ });
  assert.throws(() => plan({ target_modules: '.*nothing' }), { code: 'incompatible_base', message: /targets no projection/ });
});

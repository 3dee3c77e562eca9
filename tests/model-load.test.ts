import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { loadBaseModel } from '../src/model/load.ts';
import { configFromGguf, configFromHuggingFace } from '../src/model/config.ts';
import { weightsChecksum } from '../src/model/checksum.ts';
import { ggufTensorToFloat32, readGguf } from '../src/formats/gguf.ts';
import { entryToFloat32, readSafetensors, writeSafetensors, type SafetensorsTensorInput } from '../src/formats/safetensors.ts';
import type { BaseModel, WeightMap } from '../src/model/types.ts';
import { STORIES_GGUF, STORIES_HF_DIR } from './support/models.ts';

const HF_CONFIG_PATH = resolve(STORIES_HF_DIR, 'config.json');
const HF_WEIGHTS_PATH = resolve(STORIES_HF_DIR, 'model.safetensors');

let dir: string;
let fromGguf: BaseModel;
let fromHf: BaseModel;
let hfConfigJson: Record<string, unknown>;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'model-load-test-'));
  [fromGguf, fromHf] = await Promise.all([loadBaseModel(STORIES_GGUF), loadBaseModel(STORIES_HF_DIR)]);
  hfConfigJson = JSON.parse(await readFile(HF_CONFIG_PATH, 'utf8'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The real HF tensors as writer input, so test directories hold the real weights. */
async function realTensors(): Promise<Record<string, SafetensorsTensorInput>> {
  const file = await readSafetensors(HF_WEIGHTS_PATH);
  return Object.fromEntries(
    [...file.tensors].map(([name, entry]) => [name, { dtype: 'F32' as const, shape: entry.shape, data: entryToFloat32(entry) }]),
  );
}

/** A Hugging Face directory in the temp dir with the given config and tensors. */
async function hfDirectory(name: string, config: object, tensors: Record<string, SafetensorsTensorInput>): Promise<string> {
  const path = join(dir, name);
  await mkdir(path);
  await writeFile(join(path, 'config.json'), JSON.stringify(config));
  await writeSafetensors(join(path, 'model.safetensors'), tensors, { format: 'pt' });
  return path;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

function assertSameWeights(actual: WeightMap, expected: WeightMap): void {
  assert.deepEqual([...actual.keys()].sort(), [...expected.keys()].sort());
  for (const [name, tensor] of expected) {
    assert.deepEqual(actual.get(name)!.shape, tensor.shape, name);
    assert.equal(maxAbsDiff(actual.get(name)!.data, tensor.data), 0, name);
  }
}

describe('stories260K in both formats', () => {
  test('configs match the model card', () => {
    for (const { config } of [fromGguf, fromHf]) {
      assert.equal(config.hiddenSize, 64);
      assert.equal(config.intermediateSize, 172);
      assert.equal(config.numLayers, 5);
      assert.equal(config.numHeads, 8);
      assert.equal(config.numKvHeads, 4);
      assert.equal(config.headDim, 8);
      assert.equal(config.vocabSize, 512);
      assert.equal(config.rmsNormEps, 1e-5);
      assert.equal(config.ropeTheta, 10000);
      assert.equal(config.ropeScaling, null);
      assert.equal(config.bosTokenId, 1);
    }
    assert.equal(fromHf.config.maxPositions, 512);
    assert.equal(fromGguf.config.maxPositions, 128, 'the GGUF says 128 and is taken at its word');
    assert.equal(fromHf.config.tieWordEmbeddings, true);
    assert.equal(fromGguf.config.tieWordEmbeddings, false, 'the GGUF carries a separate output.weight');
    assert.deepEqual(fromHf.config.eosTokenIds, [2, 1], 'from generation_config.json');
    assert.deepEqual(fromGguf.config.eosTokenIds, [2]);
    assert.deepEqual(fromGguf.source, { format: 'gguf', path: STORIES_GGUF });
    assert.deepEqual(fromHf.source, { format: 'hf', path: STORIES_HF_DIR });
  });

  test('every canonical weight from the GGUF equals the Hugging Face weight once q/k rows are permuted', () => {
    assert.equal(fromHf.weights.has('lm_head.weight'), false);
    const ggufWithoutHead = new Map(fromGguf.weights);
    ggufWithoutHead.delete('lm_head.weight');
    assertSameWeights(ggufWithoutHead, fromHf.weights);
    assert.deepEqual(fromGguf.weights.get('lm_head.weight')!.shape, [512, 64]);
    assert.equal(maxAbsDiff(fromGguf.weights.get('lm_head.weight')!.data, fromHf.weights.get('model.embed_tokens.weight')!.data), 0);
  });

  test('the permutation matters: raw GGUF q/k rows differ from the Hugging Face rows', async () => {
    const gguf = await readGguf(STORIES_GGUF);
    for (const [raw, canonical] of [
      ['blk.0.attn_q.weight', 'model.layers.0.self_attn.q_proj.weight'],
      ['blk.0.attn_k.weight', 'model.layers.0.self_attn.k_proj.weight'],
    ]) {
      assert.ok(maxAbsDiff(ggufTensorToFloat32(gguf, raw), fromHf.weights.get(canonical)!.data) > 0.01, raw);
    }
  });

  test('the checksum is stable across loads and changes with any weight', async () => {
    const again = await loadBaseModel(STORIES_HF_DIR);
    assert.match(fromHf.checksum, /^[0-9a-f]{64}$/);
    assert.equal(again.checksum, fromHf.checksum);
    assert.equal(weightsChecksum(fromHf.weights), fromHf.checksum);
    assert.notEqual(fromGguf.checksum, fromHf.checksum, 'the GGUF has an extra lm_head');

    const changed = new Map(again.weights);
    const norm = changed.get('model.norm.weight')!;
    const data = norm.data.slice();
    data[7] = Math.fround(data[7] + 1e-3);
    changed.set('model.norm.weight', { shape: norm.shape, data });
    assert.notEqual(weightsChecksum(changed), fromHf.checksum);

    const renamed = new Map([...again.weights].map(([name, t]) => [name === 'model.norm.weight' ? 'model.norm2.weight' : name, t]));
    assert.notEqual(weightsChecksum(renamed), fromHf.checksum, 'names are part of the checksum');
  });
});

describe('sharded Hugging Face directories', () => {
  async function shardedDirectory(name: string, shardNames: [string, string]): Promise<string> {
    const path = join(dir, name);
    await mkdir(path);
    for (const file of ['config.json', 'generation_config.json']) await copyFile(join(STORIES_HF_DIR, file), join(path, file));
    const tensors = await realTensors();
    const names = Object.keys(tensors).sort();
    const halves = [names.slice(0, 20), names.slice(20)];
    const weightMap: Record<string, string> = {};
    for (const [i, half] of halves.entries()) {
      await writeSafetensors(join(path, `model-0000${i + 1}-of-00002.safetensors`), Object.fromEntries(half.map((n) => [n, tensors[n]])));
      for (const n of half) weightMap[n] = shardNames[i];
    }
    await writeFile(join(path, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    return path;
  }

  test('two shards with an index load the same weights and checksum as the single file', async () => {
    const path = await shardedDirectory('sharded', ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
    const model = await loadBaseModel(path);
    assertSameWeights(model.weights, fromHf.weights);
    assert.equal(model.checksum, fromHf.checksum);
    assert.deepEqual(model.config, fromHf.config);
  });

  test('a shard path leaving the directory is refused', async () => {
    const path = await shardedDirectory('escaping', ['model-00001-of-00002.safetensors', '../sharded/model-00002-of-00002.safetensors']);
    await assert.rejects(loadBaseModel(path), /shard path "\.\.\/sharded\/model-00002-of-00002\.safetensors" leaves the model directory/);
  });

  test('an index that names a tensor its shard lacks is refused', async () => {
    const path = await shardedDirectory('mislabelled', ['model-00002-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
    await assert.rejects(
      loadBaseModel(path),
      /lists "model\.embed_tokens\.weight" in model-00002-of-00002\.safetensors, but that shard does not contain it/,
    );
  });
});

describe('refusals', () => {
  test('a gpt2 config is refused naming the model type', async () => {
    const gpt2 = { ...hfConfigJson, model_type: 'gpt2', architectures: ['GPT2LMHeadModel'] };
    const path = await hfDirectory('gpt2', gpt2, await realTensors());
    await assert.rejects(loadBaseModel(path), /model_type "gpt2" is not supported; only Llama-family models \(llama, mistral\)/);
  });

  test('an extra bias tensor is refused as changing the architecture', async () => {
    const tensors = await realTensors();
    tensors['model.layers.0.self_attn.q_proj.bias'] = { dtype: 'F32', shape: [64], data: new Float32Array(64) };
    const path = await hfDirectory('bias', hfConfigJson, tensors);
    await assert.rejects(
      loadBaseModel(path),
      /unexpected tensor "model\.layers\.0\.self_attn\.q_proj\.bias"; it would change the architecture/,
    );
  });

  test('a rotary inv_freq buffer is ignored and an F16 checkpoint loads as float32', async () => {
    const tensors = await realTensors();
    for (const input of Object.values(tensors)) input.dtype = 'F16';
    tensors['model.layers.0.self_attn.rotary_emb.inv_freq'] = { dtype: 'F32', shape: [4], data: new Float32Array(4) };
    const model = await loadBaseModel(await hfDirectory('half', hfConfigJson, tensors));
    const embedding = model.weights.get('model.embed_tokens.weight')!;
    const reference = fromHf.weights.get('model.embed_tokens.weight')!.data;
    assert.ok(maxAbsDiff(embedding.data, reference) < 1e-3, 'within half precision');
    assert.equal(model.weights.size, fromHf.weights.size);
  });

  test('a shape that disagrees with the config names the tensor and both shapes', async () => {
    const path = await hfDirectory('shape', { ...hfConfigJson, intermediate_size: 170 }, await realTensors());
    await assert.rejects(
      loadBaseModel(path),
      /tensor "model\.layers\.0\.mlp\.gate_proj\.weight" has shape \[172, 64\], expected \[170, 64\]/,
    );
  });

  test('a missing tensor is named', async () => {
    const tensors = await realTensors();
    delete tensors['model.layers.3.mlp.up_proj.weight'];
    await assert.rejects(
      loadBaseModel(await hfDirectory('missing', hfConfigJson, tensors)),
      /missing tensor "model\.layers\.3\.mlp\.up_proj\.weight" \(expected shape \[172, 64\]\)/,
    );
  });

  test('an untied config requires lm_head.weight', async () => {
    const path = await hfDirectory('untied', { ...hfConfigJson, tie_word_embeddings: false }, await realTensors());
    await assert.rejects(loadBaseModel(path), /missing tensor "lm_head\.weight"/);
  });

  test('a path that is neither GGUF nor a model directory is refused', async () => {
    await assert.rejects(loadBaseModel(HF_CONFIG_PATH), /neither a \.gguf file nor a Hugging Face directory/);
    await assert.rejects(loadBaseModel(join(dir, 'nowhere')), /does not exist/);
    const empty = join(dir, 'empty');
    await mkdir(empty);
    await assert.rejects(loadBaseModel(empty), /has no config\.json/);
  });

  test('unsupported Hugging Face config variants are refused saying what is unsupported', () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ attention_bias: true }, /attention_bias is true/],
      [{ mlp_bias: true }, /mlp_bias is true/],
      [{ hidden_act: 'gelu' }, /hidden_act "gelu" is not supported; only silu/],
      [{ architectures: ['Qwen2ForCausalLM'] }, /architectures \["Qwen2ForCausalLM"\] are not supported/],
      [
        { model_type: 'mistral', max_position_embeddings: 32768, sliding_window: 4096 },
        /sliding_window 4096 is smaller than max_position_embeddings 32768/,
      ],
      [{ rope_scaling: { rope_type: 'yarn', factor: 4 } }, /rope_scaling type "yarn" is not supported/],
      [{ rope_scaling: { type: 'dynamic', factor: 2 } }, /rope_scaling type "dynamic" is not supported/],
      [{ num_key_value_heads: 3 }, /8 attention heads are not a multiple of 3 key\/value heads/],
      [{ hidden_size: undefined }, /hidden_size is missing; expected a positive integer/],
      [{ eos_token_id: 600 }, /special token id 600 is outside the vocabulary of 512/],
    ];
    for (const [change, message] of cases) {
      assert.throws(() => configFromHuggingFace({ ...hfConfigJson, ...change }), message, JSON.stringify(change));
    }
  });

  test('supported Hugging Face config variants map onto LlamaConfig', () => {
    const mistral = configFromHuggingFace({
      ...hfConfigJson,
      model_type: 'mistral',
      architectures: ['MistralForCausalLM'],
      sliding_window: null,
      head_dim: undefined,
      eos_token_id: [2, 0],
    });
    assert.equal(mistral.headDim, 8, 'hidden size / heads when head_dim is absent');
    assert.deepEqual(mistral.eosTokenIds, [2, 0], 'config eos list when there is no generation config');
    assert.equal(configFromHuggingFace({ ...hfConfigJson, rope_theta: undefined }).ropeTheta, 10000);
    assert.deepEqual(configFromHuggingFace({ ...hfConfigJson, rope_scaling: { type: 'linear', factor: 2 } }).ropeScaling, {
      type: 'linear',
      factor: 2,
    });
    assert.deepEqual(
      configFromHuggingFace({
        ...hfConfigJson,
        rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 256 },
      }).ropeScaling,
      { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 256 },
    );
    assert.deepEqual(configFromHuggingFace(hfConfigJson, { eos_token_id: 1 }).eosTokenIds, [1]);
  });

  test('GGUF metadata for another architecture or unsupported RoPE is refused', async () => {
    const { metadata, tensors } = await readGguf(STORIES_GGUF);
    assert.throws(
      () => configFromGguf(new Map(metadata).set('general.architecture', 'qwen2'), tensors),
      /general\.architecture is "qwen2"; only "llama" is supported/,
    );
    assert.throws(
      () => configFromGguf(new Map(metadata).set('llama.rope.scaling.type', 'yarn'), tensors),
      /llama\.rope\.scaling\.type "yarn" is not supported/,
    );
    const withoutOutput = new Map(tensors);
    withoutOutput.delete('output.weight');
    assert.equal(configFromGguf(metadata, withoutOutput).tieWordEmbeddings, true, 'no output.weight means tied');
    assert.equal(configFromGguf(new Map(metadata).set('llama.rope.freq_base', 500000), tensors).ropeTheta, 500000);
  });

  test('a GGUF with a tensor type this runtime does not serve is refused at load naming the tensor and type', async () => {
    const patched = Buffer.from(await readFile(STORIES_GGUF));
    const name = Buffer.from('blk.1.ffn_up.weight');
    // Tensor info layout: name, u32 n_dims (2), two u64 dims, then the u32 type (3 = Q4_1; 64 is a multiple of its block).
    patched.writeUInt32LE(3, patched.indexOf(name) + name.byteLength + 4 + 2 * 8);
    const path = join(dir, 'quantized.gguf');
    await writeFile(path, patched);
    await assert.rejects(loadBaseModel(path), /tensor "blk\.1\.ffn_up\.weight" has type Q4_1; supported GGUF tensor types are F32, F16 and Q4_0/);
  });
});

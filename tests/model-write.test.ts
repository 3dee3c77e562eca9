import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadBaseModel } from '../src/model/load.ts';
import { randomBaseModel, SMOLLM2_135M_SHAPE } from '../src/model/random-model.ts';
import { writeHuggingFaceModel } from '../src/model/write-model.ts';

test('a generated model written as a Hugging Face directory loads back with identical weights', async () => {
  const shape = { ...SMOLLM2_135M_SHAPE, hiddenSize: 32, intermediateSize: 48, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 8, vocabSize: 64, tieWordEmbeddings: false };
  const model = randomBaseModel(shape, 7);
  const dir = await mkdtemp(join(tmpdir(), 'model-write-'));
  try {
    await writeHuggingFaceModel(dir, model);
    const loaded = await loadBaseModel(dir);
    assert.deepEqual(loaded.config, model.config);
    assert.equal(loaded.checksum, model.checksum);
    assert.notEqual(randomBaseModel(shape, 8).checksum, model.checksum);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

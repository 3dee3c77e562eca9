import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_MODEL, defaultModelPath } from '../src/gateway/default-model.ts';
import { STORIES_GGUF } from './support/models.ts';

async function withServer(body: Buffer, run: (url: string) => Promise<void>): Promise<void> {
  const server = createServer((_req, res) => res.end(body));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    await run(`http://127.0.0.1:${(server.address() as AddressInfo).port}/stories260K.gguf`);
  } finally {
    server.close();
  }
}

test('without MODEL_PATH the default model is fetched once, checked against its sha256 and kept', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'default-model-'));
  try {
    await withServer(await readFile(STORIES_GGUF), async (url) => {
      const model = { ...DEFAULT_MODEL, sharedPath: join(dir, 'absent'), localPath: join(dir, 'models/stories260K.gguf'), url };
      const path = await defaultModelPath(() => {}, model);
      assert.equal(path, model.localPath);
      assert.deepEqual(await readFile(path), await readFile(STORIES_GGUF));
      // Present now: no second download (the address is gone).
      assert.equal(await defaultModelPath(() => {}, { ...model, url: 'http://127.0.0.1:1/none' }), model.localPath);
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a download with the wrong checksum is refused and nothing is kept', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'default-model-'));
  try {
    await withServer(Buffer.from('not the model'), async (url) => {
      const model = { ...DEFAULT_MODEL, sharedPath: join(dir, 'absent'), localPath: join(dir, 'm.gguf'), url };
      await assert.rejects(defaultModelPath(() => {}, model), /sha256 .* expected 047bf464/);
      await assert.rejects(readFile(model.localPath));
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('offline and absent, the error says exactly what to do', async () => {
  const model = { ...DEFAULT_MODEL, sharedPath: '/nonexistent/a', localPath: '/nonexistent/b.gguf', url: 'http://127.0.0.1:1/stories260K.gguf' };
  await assert.rejects(defaultModelPath(() => {}, model), (error: Error) => {
    assert.match(error.message, /set MODEL_PATH/);
    assert.match(error.message, /\/nonexistent\/b\.gguf/);
    assert.match(error.message, /047bf46455a5/);
    return true;
  });
});

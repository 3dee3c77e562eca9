import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SMOLLM2_135M_SHAPE } from '../src/model/random-model.ts';
import { syntheticTokenizer, writeSyntheticTokenizer } from '../src/model/synthetic-tokenizer.ts';
import { createChatFormatter } from '../src/tokenizer/chat-template.ts';
import { readTokenizerConfig } from '../src/tokenizer/huggingface.ts';
import { loadTokenizer } from '../src/tokenizer/load.ts';
import type { Tokenizer } from '../src/tokenizer/tokenizer.ts';

const SPEC = { ...SMOLLM2_135M_SHAPE, vocabSize: 1500 };

describe('synthetic byte-level tokenizer', () => {
  let dir: string;
  let tokenizer: Tokenizer;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'synthetic-tokenizer-'));
    await writeSyntheticTokenizer(dir, SPEC);
    tokenizer = await loadTokenizer(dir, SPEC.eosTokenIds);
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it('has exactly the requested vocabulary size, for small and unusual sizes too', async () => {
    assert.equal(tokenizer.vocabSize, 1500);
    const minimal = await mkdtemp(join(tmpdir(), 'synthetic-tokenizer-'));
    try {
      await writeSyntheticTokenizer(minimal, { ...SPEC, vocabSize: 259 });
      assert.equal((await loadTokenizer(minimal, [2])).vocabSize, 259);
    } finally {
      await rm(minimal, { recursive: true, force: true });
    }
  });

  it('round-trips varied text exactly', () => {
    const texts = [
      'Once upon a time, there was a little girl named Lily.',
      'naïve café — 日本語のテキスト 🎉🙂',
      '  leading spaces,\ttabs\nand\r\nnewlines  ',
      'numbers 3.14159 and 1,000,000; code: if (x != y) { return x**2; }',
      "it's they're we'll I'd",
      '<|im_start|> typed by a user stays text',
    ];
    for (const text of texts) {
      const ids = tokenizer.encode(text, { addBos: false });
      assert.equal(tokenizer.decode(ids), text);
      for (const id of ids) assert.ok(id >= 3 && id < 1500, `id ${id} of ${JSON.stringify(text)} is a text token`);
    }
  });

  it('merges common words into single tokens', () => {
    assert.equal(tokenizer.encode(' the', { addBos: false }).length, 1);
    assert.ok(tokenizer.encode(' the little girl', { addBos: false }).length <= 3);
  });

  it("uses the model config's BOS and EOS ids as ChatML special tokens", async () => {
    assert.equal(tokenizer.bosTokenId, SPEC.bosTokenId);
    assert.deepEqual(tokenizer.eosTokenIds, SPEC.eosTokenIds);
    const ids = tokenizer.encode('<|im_start|>user\nhi<|im_end|>', { addBos: false, parseSpecialTokens: true });
    assert.equal(ids[0], 1);
    assert.equal(ids.at(-1), 2);

    const chat = createChatFormatter(await readTokenizerConfig(dir))([{ role: 'user', content: 'hi' }]);
    assert.equal(`${chat.addBos ? '<|im_start|>' : ''}${chat.text}`, '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n');
    // The template's leading <|im_start|> is this tokenizer's BOS, which it never adds by itself: encoding the
    // formatted chat must still start with it.
    const promptIds = tokenizer.encode(chat.text, { addBos: chat.addBos, parseSpecialTokens: true });
    assert.equal(promptIds[0], 1);
    assert.ok(tokenizer.decode(promptIds.slice(1)).startsWith('user\nhi'));
    assert.notEqual(tokenizer.encode('hi')[0], 1, 'plain text gets no BOS from this tokenizer');
  });

  it('is deterministic', async () => {
    const written = JSON.parse(await readFile(join(dir, 'tokenizer.json'), 'utf8'));
    assert.deepEqual(written, JSON.parse(JSON.stringify(syntheticTokenizer(SPEC).tokenizerJson)));
  });

  it('refuses vocabularies too small for the byte alphabet and ids that are not special tokens', () => {
    assert.throws(() => syntheticTokenizer({ ...SPEC, vocabSize: 258 }), /at least 259/);
    assert.throws(() => syntheticTokenizer({ ...SPEC, bosTokenId: 7 }), /bos token id 7/);
  });
});

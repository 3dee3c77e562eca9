import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as hfTokenizers from '@huggingface/tokenizers';
import { readGguf } from '../src/formats/gguf.ts';
import { loadTokenizer } from '../src/tokenizer/load.ts';
import { sentencePieceFromGgufMetadata } from '../src/tokenizer/sentencepiece.ts';
import { StreamDecoder } from '../src/tokenizer/stream-decoder.ts';
import type { Tokenizer } from '../src/tokenizer/tokenizer.ts';
import { REFERENCE, STORIES_GGUF, STORIES_HF_DIR } from './support/models.ts';

const generationConfig = JSON.parse(await readFile(join(STORIES_HF_DIR, 'generation_config.json'), 'utf8'));
const modelEosIds: number[] = generationConfig.eos_token_id;
const ggufMetadata = (await readGguf(STORIES_GGUF)).metadata;
const tokenizers: Record<string, Tokenizer> = {
  'Hugging Face tokenizer.json': await loadTokenizer(STORIES_HF_DIR, modelEosIds),
  'GGUF SentencePiece': await loadTokenizer(STORIES_GGUF, modelEosIds),
};
const [huggingFace, sentencePiece] = Object.values(tokenizers);

const MIXED_SCRIPT = 'héllo wörld 日本 🙂';
const VARIED_STRINGS = [
  REFERENCE.prompt,
  REFERENCE.text,
  MIXED_SCRIPT,
  'Hello, world! How are you? (fine); "quoted" — dash… ellipsis',
  'Numbers: 0 1 42 3.14159 -7 1,000,000 2024-06-01',
  'Emoji 🙂🎉👍🏽 and flags 🇫🇷, ZWJ 👩‍👩‍👧',
  'Ünïcödé: ß ø å æ ç ñ — Ελληνικά Русский العربية हिन्दी 한국어',
  '  two leading spaces',
  'trailing spaces   ',
  'multiple   inner    spaces',
  ' ',
  '',
  'line one\nline two\n\n\ttabbed line\r\nwindows line',
  'here there where',
  'x',
  '<0x41> looks like a byte token',
  '$%^&*()[]{}<>|\\/~`@#',
];

/** SentencePiece writes spaces as `▁`, so a literal `▁` decodes to a space: equal ids, but no round trip. */
const SPACE_MARKER_TEXT = '▁already has the space marker';

/** Deterministic id sequences covering the whole vocabulary, specials and lone byte tokens included. */
function randomIdSequences(vocabSize: number, count: number): number[][] {
  let state = 0x9e3779b9;
  const next = () => {
    state = (Math.imul(state ^ (state >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    return state / 2 ** 32;
  };
  return Array.from({ length: count }, () =>
    Array.from({ length: 1 + Math.floor(next() * 40) }, () => Math.floor(next() * vocabSize)),
  );
}

function streamDecode(tokenizer: Tokenizer, ids: number[]): string[] {
  const decoder = new StreamDecoder(tokenizer);
  return [...ids.map((id) => decoder.push(id)), decoder.flush()];
}

for (const [name, tokenizer] of Object.entries(tokenizers)) {
  test(`${name}: encodes the reference prompt with BOS to the published ids`, () => {
    assert.deepEqual(tokenizer.encode(REFERENCE.prompt), REFERENCE.promptIds);
    assert.deepEqual(tokenizer.encode(REFERENCE.prompt, { addBos: false }), REFERENCE.promptIds.slice(1));
  });

  test(`${name}: BOS, EOS and vocabulary size come from the model files`, () => {
    assert.equal(tokenizer.vocabSize, 512);
    assert.equal(tokenizer.bosTokenId, 1);
    assert.deepEqual(tokenizer.eosTokenIds, [2, 1]);
    assert.equal(tokenizer.stripsLeadingSpace, true);
  });

  test(`${name}: decodes the reference greedy generation to the reference text`, () => {
    assert.equal(tokenizer.decode([...REFERENCE.promptIds, ...REFERENCE.greedyIds]), REFERENCE.text);
  });

  test(`${name}: decode(encode(text)) gives the text back`, () => {
    for (const text of VARIED_STRINGS) assert.equal(tokenizer.decode(tokenizer.encode(text)), text, JSON.stringify(text));
  });

  test(`${name}: "<s>" typed by a user is text, not the BOS token`, () => {
    const ids = tokenizer.encode('<s>Once upon a time</s>');
    assert.equal(ids.filter((id) => id === 1).length, 1, 'only the BOS the tokenizer adds');
    assert.ok(!ids.includes(2));
    assert.equal(tokenizer.decode(ids), '<s>Once upon a time</s>');
    assert.deepEqual(tokenizer.encode('<s>Once upon a time', { addBos: false, parseSpecialTokens: true }), REFERENCE.promptIds);
  });

  test(`${name}: token bytes and display text`, () => {
    const [, once, upon] = REFERENCE.promptIds;
    assert.deepEqual(tokenizer.tokenBytes(once), new TextEncoder().encode(' Once'));
    assert.equal(tokenizer.tokenText(upon), ' upon');
    assert.deepEqual(tokenizer.tokenBytes(1), new Uint8Array(0), 'special tokens stand for no text');
    assert.equal(tokenizer.tokenText(1), '<s>');
    const newline = tokenizer.encode('\n', { addBos: false }).at(-1)!;
    assert.deepEqual(tokenizer.tokenBytes(newline), Uint8Array.of(0x0a));
    const firstByteOfNihon = tokenizer.encode('日', { addBos: false })[1];
    assert.deepEqual(tokenizer.tokenBytes(firstByteOfNihon), Uint8Array.of(0xe6));
    assert.equal(tokenizer.tokenText(firstByteOfNihon), '\\xe6');
    assert.throws(() => tokenizer.tokenBytes(512), RangeError);
    assert.throws(() => tokenizer.decode([0, -1]), RangeError);
  });

  test(`${name}: streamed text equals decode for generated, encoded and random id sequences`, () => {
    const sequences = [
      [...REFERENCE.promptIds, ...REFERENCE.greedyIds],
      REFERENCE.greedyIds,
      ...VARIED_STRINGS.flatMap((text) => {
        const ids = tokenizer.encode(text);
        return [ids, ids.slice(1), [...ids, 2], ids.slice(0, -1), ids.slice(2)];
      }),
      ...randomIdSequences(tokenizer.vocabSize, 300),
    ];
    for (const ids of sequences) {
      assert.equal(streamDecode(tokenizer, ids).join(''), tokenizer.decode(ids), JSON.stringify(ids));
    }
  });

  test(`${name}: the stream never emits part of a character split across byte tokens`, () => {
    const chunks = streamDecode(tokenizer, tokenizer.encode(MIXED_SCRIPT));
    assert.ok(chunks.every((chunk) => !chunk.includes('\uFFFD')));
    assert.ok(chunks.includes('日') && chunks.includes('🙂'), 'multi-byte characters arrive whole');
    assert.equal(chunks.join(''), MIXED_SCRIPT);
    const truncated = streamDecode(tokenizer, tokenizer.encode('日本', { addBos: false }).slice(0, -1));
    assert.equal(truncated.join(''), '日\uFFFD', 'a character left incomplete becomes U+FFFD at flush');
  });
}

test('both tokenizers give the same ids for varied text', () => {
  for (const text of [...VARIED_STRINGS, SPACE_MARKER_TEXT]) {
    assert.deepEqual(sentencePiece.encode(text), huggingFace.encode(text), JSON.stringify(text));
  }
});

test('both tokenizers decode random id sequences alike', () => {
  for (const ids of randomIdSequences(512, 200)) assert.equal(sentencePiece.decode(ids), huggingFace.decode(ids));
});

test('GGUF add_bos_token false leaves BOS off', () => {
  const metadata = new Map(ggufMetadata).set('tokenizer.ggml.add_bos_token', false);
  assert.deepEqual(sentencePieceFromGgufMetadata(metadata).encode(REFERENCE.prompt), REFERENCE.promptIds.slice(1));
});

test('a GGUF with a non-SentencePiece vocabulary is refused with the reason', () => {
  const metadata = new Map(ggufMetadata).set('tokenizer.ggml.model', 'gpt2');
  assert.throws(() => sentencePieceFromGgufMetadata(metadata), /"gpt2".*only SentencePiece/);
  const withoutScores = new Map(ggufMetadata);
  withoutScores.delete('tokenizer.ggml.scores');
  assert.throws(() => sentencePieceFromGgufMetadata(withoutScores), /tokenizer\.ggml\.scores/);
});

test('loadTokenizer names the path it cannot use', async () => {
  await assert.rejects(loadTokenizer('/nonexistent/model', []), /\/nonexistent\/model.*ENOENT/);
  await assert.rejects(loadTokenizer(join(STORIES_HF_DIR, 'config.json'), []), /neither a Hugging Face model directory nor a \.gguf file/);
});

test('byte-level (GPT-2 style) tokenizer.json: bytes, round trips and streaming', async () => {
  // The package's own byte-level table (kept out of its typings) is the reference for ours.
  const byteDecoder = new (hfTokenizers as unknown as Record<string, new (config: object) => { byte_decoder: Record<string, number> }>)
    .ByteLevelDecoder({ type: 'ByteLevel' }).byte_decoder;
  const vocab = Object.fromEntries(Object.entries(byteDecoder).map(([char, byte]) => [char, Number(byte)]));
  const dir = await mkdtemp(join(tmpdir(), 'byte-level-tokenizer-'));
  try {
    const endOfText = { id: 256, content: '<|endoftext|>', special: true, single_word: false, lstrip: false, rstrip: false, normalized: false };
    await writeFile(
      join(dir, 'tokenizer.json'),
      JSON.stringify({
        version: '1.0',
        added_tokens: [endOfText],
        normalizer: null,
        pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
        post_processor: null,
        decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
        model: { type: 'BPE', vocab, merges: [], byte_fallback: false, ignore_merges: false },
      }),
    );
    await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify({ eos_token: '<|endoftext|>', bos_token: null }));
    const tokenizer = await loadTokenizer(dir, []);
    assert.equal(tokenizer.vocabSize, 257);
    assert.equal(tokenizer.bosTokenId, null);
    assert.deepEqual(tokenizer.eosTokenIds, [256]);
    assert.equal(tokenizer.stripsLeadingSpace, false);
    const text = ` ${MIXED_SCRIPT}\n`;
    const ids = tokenizer.encode(text);
    assert.deepEqual(Buffer.concat(ids.map((id) => tokenizer.tokenBytes(id))), Buffer.from(text, 'utf8'));
    assert.equal(tokenizer.decode([...ids, 256]), text);
    assert.equal(tokenizer.tokenText(256), '<|endoftext|>');
    assert.deepEqual(tokenizer.encode('<|endoftext|>', { parseSpecialTokens: true }), [256]);
    assert.ok(!tokenizer.encode('<|endoftext|>').includes(256));
    for (const sequence of [ids, ids.slice(0, -3), ...randomIdSequences(257, 100)]) {
      assert.equal(streamDecode(tokenizer, sequence).join(''), tokenizer.decode(sequence));
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

/**
 * A byte-level BPE tokenizer of any vocabulary size, written as Hugging Face `tokenizer.json` and
 * `tokenizer_config.json`. Random-weight benchmark models need a tokenizer for the gateway to serve them; what
 * it learned does not matter, only that it is valid, round-trips any text and fills the model's vocabulary.
 * The layout follows SmolLM2's: ChatML special tokens first, then the 256 byte symbols, then merges.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as huggingFaceTokenizers from '@huggingface/tokenizers';
import type { LlamaConfig } from './types.ts';

/**
 * The package exports its ByteLevel pre-tokenizer at run time, but its typings re-export it through an
 * extensionless path that NodeNext resolution cannot follow; this is the part of its declared type used here.
 */
const { ByteLevelPreTokenizer } = huggingFaceTokenizers as unknown as {
  ByteLevelPreTokenizer: new (config: { type: 'ByteLevel'; add_prefix_space: boolean; use_regex: boolean }) => {
    /** Byte value → the printable character that stands for it. */
    byte_encoder: Record<number, string>;
    pre_tokenize_text(text: string): string[];
  };
};

/** Ids 0, 1, 2, as in SmolLM2: end of text, then the ChatML turn delimiters. */
const SPECIAL_TOKENS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>'] as const;

/** ChatML, the chat format of SmolLM2's instruct models. */
const CHATML_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/**
 * Frequent English words and a few from children's stories. BPE training on them (with and without a leading
 * space) gives the first merges, so ordinary text encodes to plausibly few tokens; byte-pair extensions fill the rest.
 */
const COMMON_WORDS = `the of and to a in is you that it he was for on are as with his they I at be this have from
or one had by word but not what all were we when your can said there use an each which she do how their if will up
other about out many then them these so some her would make like him into time has look two more write go see number
no way could people my than first water been call who oil its now find long down day did get come made may part
once upon little girl boy named Lily Tom loved play outside park saw big red ball wanted happy friend mom dad
story hello world model token adapter tenant request response server client data text new good very after just
where most know through back much before also around another came three work must because does even here why ask
went men read need land different home us move try kind hand picture again change off spell air away animal house
point page letter mother answer found study still learn should America high every near add food between own
below country plant last school father keep tree never start city earth eye light thought head under`.split(/\s+/);

export type SyntheticTokenizerSpec = Pick<LlamaConfig, 'vocabSize' | 'bosTokenId' | 'eosTokenIds' | 'maxPositions'>;

export interface SyntheticTokenizerFiles {
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
}

/** Builds the two files for a model config; the same config always gives the same files. */
export function syntheticTokenizer(spec: SyntheticTokenizerSpec): SyntheticTokenizerFiles {
  const bosToken = specialTokenFor(spec.bosTokenId, 'bos');
  const eosToken = specialTokenFor(spec.eosTokenIds[0], 'eos');
  const minimum = SPECIAL_TOKENS.length + 256;
  if (!Number.isInteger(spec.vocabSize) || spec.vocabSize < minimum) {
    throw new RangeError(
      `a byte-level tokenizer needs a vocabulary of at least ${minimum} tokens (${SPECIAL_TOKENS.length} special + 256 bytes), got ${spec.vocabSize}`,
    );
  }
  const { vocab, merges } = buildVocabulary(spec.vocabSize);
  const addedTokens = SPECIAL_TOKENS.map((content, id) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  // trim_offsets/add_prefix_space only affect offsets and prefixing; no prefix space keeps decode(encode(t)) === t.
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: { ...byteLevel, trim_offsets: false },
    decoder: byteLevel,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab),
      merges,
    },
  };
  const tokenizerConfig = {
    tokenizer_class: 'GPT2Tokenizer',
    add_prefix_space: false,
    clean_up_tokenization_spaces: false,
    model_max_length: spec.maxPositions,
    bos_token: bosToken,
    eos_token: eosToken,
    unk_token: SPECIAL_TOKENS[0],
    pad_token: eosToken,
    added_tokens_decoder: Object.fromEntries(addedTokens.map(({ id, ...token }) => [String(id), token])),
    chat_template: CHATML_TEMPLATE,
  };
  return { tokenizerJson, tokenizerConfig };
}

/** Writes `tokenizer.json` and `tokenizer_config.json` into `dir`, creating it if needed. */
export async function writeSyntheticTokenizer(dir: string, spec: SyntheticTokenizerSpec): Promise<void> {
  const { tokenizerJson, tokenizerConfig } = syntheticTokenizer(spec);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(tokenizerJson));
  await writeFile(join(dir, 'tokenizer_config.json'), `${JSON.stringify(tokenizerConfig, null, 2)}\n`);
}

function specialTokenFor(id: number | undefined, role: string): string {
  const token = id === undefined ? undefined : SPECIAL_TOKENS[id];
  if (token === undefined) {
    throw new RangeError(
      `the model's ${role} token id ${id} is not one of the synthetic tokenizer's special tokens (${SPECIAL_TOKENS.map((t, i) => `${i} ${t}`).join(', ')})`,
    );
  }
  return token;
}

/**
 * Specials, then the byte alphabet (id 3 + byte), then merges until `vocabSize` is reached: first those that BPE
 * training on the common words learns, then every existing piece extended by one byte symbol, printable ASCII first.
 */
function buildVocabulary(vocabSize: number): { vocab: Map<string, number>; merges: [string, string][] } {
  const vocab = new Map<string, number>(SPECIAL_TOKENS.map((token, id) => [token, id]));
  // The library's own byte encoder, so the symbols are exactly those its ByteLevel steps produce and read.
  const byteLevel = new ByteLevelPreTokenizer({ type: 'ByteLevel', add_prefix_space: false, use_regex: true });
  const byteSymbols = Array.from({ length: 256 }, (_, byte) => byteLevel.byte_encoder[byte]);
  for (const symbol of byteSymbols) vocab.set(symbol, vocab.size);

  const isPrintableAscii = (byte: number) => byte >= 0x20 && byte < 0x7f;
  const extensionOrder = [
    ...byteSymbols.filter((_, byte) => isPrintableAscii(byte)),
    ...byteSymbols.filter((_, byte) => !isPrintableAscii(byte)),
  ];
  const merges: [string, string][] = [];
  /** Every non-special piece in the order it is extended: the bytes, then each merged piece as it is made. */
  const pieces = [...extensionOrder];
  const full = () => vocab.size >= vocabSize;
  const addMerge = (left: string, right: string) => {
    merges.push([left, right]);
    const joined = left + right;
    // Training may reach a piece by a second split (a+bc after ab+c); the merge is needed, the token exists.
    if (vocab.has(joined)) return;
    vocab.set(joined, vocab.size);
    pieces.push(joined);
  };

  for (const [left, right] of trainMerges(COMMON_WORDS.flatMap((word) => byteLevel.pre_tokenize_text(` ${word} ${word}`)))) {
    if (full()) break;
    addMerge(left, right);
  }
  // Extending each piece appends longer ones, so `pieces` outruns `i` until the vocabulary is full.
  for (let i = 0; !full(); i++) {
    for (const symbol of extensionOrder) if (!full() && !vocab.has(pieces[i] + symbol)) addMerge(pieces[i], symbol);
  }
  return { vocab, merges };
}

/**
 * Plain BPE training: merge the most frequent adjacent pair (the first seen on a tie) until every word is one
 * piece. Encoding applies merges in this order, so each training word then encodes to a single token.
 */
function* trainMerges(words: string[]): Generator<[string, string]> {
  const spelled = words.map((word) => Array.from(word));
  for (;;) {
    const pairCounts = new Map<string, { pair: [string, string]; count: number }>();
    for (const symbols of spelled) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        // Byte-level symbols never contain a space, so it separates the two halves unambiguously.
        const key = `${symbols[i]} ${symbols[i + 1]}`;
        const entry = pairCounts.get(key);
        if (entry) entry.count++;
        else pairCounts.set(key, { pair: [symbols[i], symbols[i + 1]], count: 1 });
      }
    }
    let best: { pair: [string, string]; count: number } | undefined;
    for (const entry of pairCounts.values()) if (!best || entry.count > best.count) best = entry;
    if (!best) return;
    const [left, right] = best.pair;
    yield best.pair;
    for (const symbols of spelled) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        if (symbols[i] === left && symbols[i + 1] === right) symbols.splice(i, 2, left + right);
      }
    }
  }
}

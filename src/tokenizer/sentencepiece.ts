/**
 * A SentencePiece (BPE with byte fallback) tokenizer built from a GGUF file's vocabulary, encoding the way
 * llama.cpp's SPM tokenizer does: spaces become `▁`, the text is split into characters, and adjacent symbols
 * are merged greedily by the score of the piece they form; characters left outside the vocabulary fall back
 * to their UTF-8 bytes.
 */
import {
  assertTokenId,
  byteFallbackValue,
  displayTokenBytes,
  sentencePieceBytes,
  type EncodeOptions,
  type Tokenizer,
} from './tokenizer.ts';

/** `tokenizer.ggml.token_type` values (llama.cpp's llama_token_type). */
const TokenType = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;

/** GGUF writers store "no such token" as -1 in an unsigned field. */
const ABSENT_TOKEN_ID = 0xffffffff;
const SPACE = 0x20;
const WORD_BOUNDARY = '\u2581';

interface VocabularyEntry {
  piece: string;
  score: number;
  type: number;
}

/** A token matched by its exact text before merging: control tokens on request, user-defined tokens always. */
interface LiteralToken {
  text: string;
  id: number;
  control: boolean;
}

export function sentencePieceFromGgufMetadata(metadata: Map<string, unknown>, eosTokenIds: number[] = []): Tokenizer {
  const model = metadata.get('tokenizer.ggml.model');
  if (model !== 'llama') {
    throw new Error(
      `tokenizer.ggml.model is ${JSON.stringify(model)}, but only SentencePiece vocabularies ("llama") are supported; ` +
        'use the Hugging Face directory of this model instead',
    );
  }
  const pieces = metadataArray(metadata, 'tokenizer.ggml.tokens', (value) => typeof value === 'string') as string[];
  const scores = metadataArray(metadata, 'tokenizer.ggml.scores', (value) => typeof value === 'number') as number[];
  const types = metadataArray(metadata, 'tokenizer.ggml.token_type', Number.isInteger) as number[];
  if (scores.length !== pieces.length || types.length !== pieces.length) {
    throw new Error(
      `GGUF vocabulary is inconsistent: ${pieces.length} tokens, ${scores.length} scores, ${types.length} token types`,
    );
  }
  const vocabulary = pieces.map((piece, id) => ({ piece, score: scores[id], type: types[id] }));
  const tokenId = (key: string) => optionalTokenId(metadata, key, pieces.length);
  const eosTokenId = tokenId('tokenizer.ggml.eos_token_id');
  return new SentencePieceTokenizer(vocabulary, {
    bosTokenId: tokenId('tokenizer.ggml.bos_token_id'),
    unknownTokenId: tokenId('tokenizer.ggml.unknown_token_id'),
    eosTokenIds: unique([...eosTokenIds, ...(eosTokenId === null ? [] : [eosTokenId])]),
    addsBos: optionalBoolean(metadata, 'tokenizer.ggml.add_bos_token', true),
    addsSpacePrefix: optionalBoolean(metadata, 'tokenizer.ggml.add_space_prefix', true),
  });
}

interface SentencePieceOptions {
  bosTokenId: number | null;
  unknownTokenId: number | null;
  eosTokenIds: number[];
  addsBos: boolean;
  addsSpacePrefix: boolean;
}

class SentencePieceTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: number[];
  readonly stripsLeadingSpace: boolean;
  private readonly vocabulary: VocabularyEntry[];
  private readonly unknownTokenId: number | null;
  private readonly addsBos: boolean;
  private readonly addsSpacePrefix: boolean;
  /** Pieces that merging may produce: normal tokens only, so no text can merge into a control or byte token. */
  private readonly mergeablePieces = new Map<string, number>();
  private readonly byteTokenIds = new Map<number, number>();
  private readonly literalTokens: LiteralToken[];
  private readonly bytesById: Uint8Array[];
  private readonly utf8 = new TextDecoder('utf-8', { ignoreBOM: true });

  constructor(vocabulary: VocabularyEntry[], options: SentencePieceOptions) {
    this.vocabulary = vocabulary;
    this.vocabSize = vocabulary.length;
    this.bosTokenId = options.bosTokenId;
    this.eosTokenIds = options.eosTokenIds;
    this.unknownTokenId = options.unknownTokenId;
    this.addsBos = options.addsBos;
    this.addsSpacePrefix = options.addsSpacePrefix;
    // decode removes the space that encoding prepended.
    this.stripsLeadingSpace = options.addsSpacePrefix;
    const literals: LiteralToken[] = [];
    vocabulary.forEach(({ piece, type }, id) => {
      if (type === TokenType.normal && !this.mergeablePieces.has(piece)) this.mergeablePieces.set(piece, id);
      const byte = type === TokenType.byte ? byteFallbackValue(piece) : null;
      if (byte !== null) this.byteTokenIds.set(byte, id);
      if ((type === TokenType.control || type === TokenType.userDefined) && piece.length > 0) {
        literals.push({ text: piece, id, control: type === TokenType.control });
      }
    });
    // Longest first, so `<|im_start|>` wins over a shorter token that is its prefix.
    this.literalTokens = literals.sort((a, b) => b.text.length - a.text.length);
    this.bytesById = vocabulary.map(({ piece, type }) => tokenBytesOf(piece, type));
  }

  encode(text: string, { addBos = this.addsBos, parseSpecialTokens = false }: EncodeOptions = {}): number[] {
    const ids: number[] = [];
    if (addBos && this.bosTokenId !== null) ids.push(this.bosTokenId);
    for (const fragment of this.splitLiteralTokens(text, parseSpecialTokens)) {
      if (typeof fragment === 'number') ids.push(fragment);
      // Every text fragment starts a new "sentence" for SentencePiece, as in llama.cpp and Hugging Face.
      else this.encodeFragment(this.addsSpacePrefix ? ` ${fragment}` : fragment, ids);
    }
    return ids;
  }

  decode(ids: number[]): string {
    const parts = ids.map((id) => this.tokenBytes(id));
    let bytes = Buffer.concat(parts);
    if (this.stripsLeadingSpace && bytes[0] === SPACE) bytes = bytes.subarray(1);
    return this.utf8.decode(bytes);
  }

  tokenBytes(id: number): Uint8Array {
    assertTokenId(id, this.vocabSize);
    return this.bytesById[id];
  }

  tokenText(id: number): string {
    assertTokenId(id, this.vocabSize);
    const { piece, type } = this.vocabulary[id];
    return isTextToken(type) ? displayTokenBytes(this.bytesById[id]) : piece;
  }

  /** Text with literal tokens cut out: strings to encode, numbers for the matched token ids. */
  private splitLiteralTokens(text: string, parseSpecialTokens: boolean): (string | number)[] {
    const candidates = this.literalTokens.filter((token) => parseSpecialTokens || !token.control);
    const fragments: (string | number)[] = [];
    let textStart = 0;
    for (let position = 0; position < text.length; ) {
      const match = candidates.find((token) => text.startsWith(token.text, position));
      if (match === undefined) {
        position++;
        continue;
      }
      if (position > textStart) fragments.push(text.slice(textStart, position));
      fragments.push(match.id);
      position += match.text.length;
      textStart = position;
    }
    if (text.length > textStart) fragments.push(text.slice(textStart));
    return fragments;
  }

  private encodeFragment(text: string, ids: number[]): void {
    const symbols = Array.from(text.replaceAll(' ', WORD_BOUNDARY));
    const next = symbols.map((_, i) => (i + 1 < symbols.length ? i + 1 : -1));
    const previous = symbols.map((_, i) => i - 1);
    const queue = new BigramQueue();
    const considerPair = (left: number, right: number) => {
      if (left < 0 || right < 0) return;
      const merged = symbols[left] + symbols[right];
      const id = this.mergeablePieces.get(merged);
      if (id !== undefined) queue.push({ left, right, merged, score: this.vocabulary[id].score });
    };
    for (let i = 1; i < symbols.length; i++) considerPair(i - 1, i);

    for (let pair = queue.pop(); pair !== undefined; pair = queue.pop()) {
      const { left, right, merged } = pair;
      // A queued pair is stale once either side has merged with something else since it was queued: a symbol
      // merged into its left neighbour is empty, and one that absorbed its right neighbour has grown.
      const stale =
        symbols[left] === '' ||
        symbols[right] === '' ||
        next[left] !== right ||
        symbols[left].length + symbols[right].length !== merged.length;
      if (stale) continue;
      symbols[left] = merged;
      symbols[right] = '';
      next[left] = next[right];
      if (next[right] >= 0) previous[next[right]] = left;
      considerPair(previous[left], left);
      considerPair(left, next[left]);
    }

    for (let i = 0; i >= 0 && i < symbols.length; i = next[i]) {
      const id = this.mergeablePieces.get(symbols[i]);
      if (id !== undefined) ids.push(id);
      else this.pushByteFallback(symbols[i], ids);
    }
  }

  private pushByteFallback(symbol: string, ids: number[]): void {
    for (const byte of Buffer.from(symbol, 'utf8')) {
      const id = this.byteTokenIds.get(byte) ?? this.unknownTokenId;
      if (id === null) {
        throw new Error(
          `cannot encode ${JSON.stringify(symbol)}: the vocabulary has neither a <0x${byte.toString(16).toUpperCase()}> byte token nor an unknown token`,
        );
      }
      ids.push(id);
    }
  }
}

function isTextToken(type: number): boolean {
  return type === TokenType.normal || type === TokenType.byte || type === TokenType.userDefined;
}

function tokenBytesOf(piece: string, type: number): Uint8Array {
  switch (type) {
    case TokenType.normal:
    case TokenType.byte:
      return sentencePieceBytes(piece);
    case TokenType.userDefined:
      // Added by the model's authors as literal text, so `▁` in them is not an escaped space.
      return Buffer.from(piece, 'utf8');
    default:
      return new Uint8Array(0);
  }
}

interface Bigram {
  left: number;
  right: number;
  merged: string;
  score: number;
}

/** Max-heap of candidate merges: highest score first, then the leftmost pair. */
class BigramQueue {
  private readonly heap: Bigram[] = [];

  push(bigram: Bigram): void {
    const heap = this.heap;
    heap.push(bigram);
    for (let i = heap.length - 1; i > 0; ) {
      const parent = (i - 1) >> 1;
      if (!comesFirst(heap[i], heap[parent])) break;
      [heap[i], heap[parent]] = [heap[parent], heap[i]];
      i = parent;
    }
  }

  pop(): Bigram | undefined {
    const heap = this.heap;
    const top = heap[0];
    const last = heap.pop();
    if (heap.length === 0 || last === undefined) return top;
    heap[0] = last;
    for (let i = 0; ; ) {
      const left = 2 * i + 1;
      const right = left + 1;
      let best = i;
      if (left < heap.length && comesFirst(heap[left], heap[best])) best = left;
      if (right < heap.length && comesFirst(heap[right], heap[best])) best = right;
      if (best === i) break;
      [heap[i], heap[best]] = [heap[best], heap[i]];
      i = best;
    }
    return top;
  }
}

function comesFirst(a: Bigram, b: Bigram): boolean {
  return a.score > b.score || (a.score === b.score && a.left < b.left);
}

function metadataArray(metadata: Map<string, unknown>, key: string, isElement: (value: unknown) => boolean): unknown[] {
  const value = metadata.get(key);
  if (!Array.isArray(value) || !value.every(isElement)) {
    throw new Error(`GGUF metadata "${key}" is missing or malformed; the file does not carry a usable vocabulary`);
  }
  return value;
}

function optionalTokenId(metadata: Map<string, unknown>, key: string, vocabSize: number): number | null {
  const value = metadata.get(key);
  if (value === undefined || value === ABSENT_TOKEN_ID) return null;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value >= vocabSize) {
    throw new Error(`GGUF metadata "${key}" is ${String(value)}, not a token id in the ${vocabSize}-token vocabulary`);
  }
  return value;
}

function optionalBoolean(metadata: Map<string, unknown>, key: string, fallback: boolean): boolean {
  const value = metadata.get(key);
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw new Error(`GGUF metadata "${key}" is ${String(value)}, expected true or false`);
  return value;
}

function unique(ids: number[]): number[] {
  return [...new Set(ids)];
}

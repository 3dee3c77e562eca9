/**
 * The one tokenizer shape the runtime uses, whatever file the vocabulary came from, plus the byte-level
 * helpers both implementations share.
 */

export interface EncodeOptions {
  /**
   * Whether to prepend BOS: absent follows the tokenizer's own config (`add_bos_token`); true and false override
   * it, for prompts whose chat template decides (it wrote a BOS, or deliberately none).
   */
  addBos?: boolean;
  /**
   * Match special-token text (e.g. `<s>`, `<|im_start|>`) as those tokens (default false). Only for text the
   * server produced itself, such as a rendered chat template: user text must never smuggle in control tokens.
   */
  parseSpecialTokens?: boolean;
}

export interface Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: number[];
  /**
   * Whether `decode` drops one space from the start of the text: SentencePiece normalization prepends it
   * when encoding. Streaming decoders must drop it too so that streamed text equals `decode`.
   */
  readonly stripsLeadingSpace: boolean;
  /** Text to ids (BOS as `addBos` says). Special-token text like "<s>" in user input is NOT parsed as a special token unless `parseSpecialTokens` is set. */
  encode(text: string, options?: EncodeOptions): number[];
  /** Ids to text, skipping special tokens (BOS/EOS/UNK control tokens). */
  decode(ids: number[]): string;
  /**
   * Raw bytes a single token stands for (byte-fallback tokens `<0xNN>` give that byte; `▁` becomes a space),
   * used for streaming and logprobs. Special tokens give no bytes, because `decode` skips them.
   */
  tokenBytes(id: number): Uint8Array;
  /**
   * The token's display string (as in OpenAI logprobs `token`): its text, the token itself for special tokens,
   * and `\xNN` escapes for tokens whose bytes are only part of a UTF-8 character.
   */
  tokenText(id: number): string;
}

const BYTE_TOKEN = /^<0x([0-9A-Fa-f]{2})>$/;

/** The byte a byte-fallback piece such as `<0xE6>` stands for, or null for any other piece. */
export function byteFallbackValue(piece: string): number | null {
  const match = BYTE_TOKEN.exec(piece);
  return match ? Number.parseInt(match[1], 16) : null;
}

const utf8Encoder = new TextEncoder();
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** SentencePiece pieces mark spaces with `▁`; their bytes are the text with real spaces. */
export function sentencePieceBytes(piece: string): Uint8Array {
  const byte = byteFallbackValue(piece);
  return byte === null ? utf8Encoder.encode(piece.replaceAll('\u2581', ' ')) : Uint8Array.of(byte);
}

/** Display text for a token's bytes: the text when they are whole UTF-8 characters, else `\xNN` escapes. */
export function displayTokenBytes(bytes: Uint8Array): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return Array.from(bytes, (byte) => `\\x${byte.toString(16).padStart(2, '0')}`).join('');
  }
}

/** The text of an added-token entry as configs write it: a plain string or `{ content: "..." }`. */
export function tokenContent(value: unknown): string | null {
  if (typeof value === 'string') return value;
  if (typeof value === 'object' && value !== null && typeof (value as { content?: unknown }).content === 'string') {
    return (value as { content: string }).content;
  }
  return null;
}

export function assertTokenId(id: number, vocabSize: number): void {
  if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
    throw new RangeError(`token id ${id} is outside the vocabulary (0..${vocabSize - 1})`);
  }
}

/**
 * Turns generated token ids into text one id at a time, for streaming responses. Byte-fallback and
 * byte-level tokens can split a character across tokens, so bytes are decoded in streaming mode: an
 * incomplete trailing sequence is held back until the token that completes it arrives, and only bytes that
 * can no longer become a valid character turn into U+FFFD. Concatenating every `push` and the final `flush`
 * gives exactly `tokenizer.decode(ids)`.
 */
import type { Tokenizer } from './tokenizer.ts';

const SPACE = 0x20;

export class StreamDecoder {
  private readonly tokenizer: Tokenizer;
  private readonly utf8 = new TextDecoder('utf-8', { ignoreBOM: true });
  /** True until the first token with any bytes, which may carry the space that `decode` drops. */
  private atTextStart: boolean;
  private readonly continuesPrompt: boolean;

  /**
   * With `continuesPrompt`, the ids continue a prompt (generated text), so the leading space is text that
   * belongs between prompt and completion and is kept, as when the whole sequence is decoded together.
   */
  constructor(tokenizer: Tokenizer, options: { continuesPrompt?: boolean } = {}) {
    this.tokenizer = tokenizer;
    this.continuesPrompt = options.continuesPrompt ?? false;
    this.atTextStart = !this.continuesPrompt;
  }

  /** Text completed by this token (often empty while a character is still partial). */
  push(id: number): string {
    let bytes = this.tokenizer.tokenBytes(id);
    if (this.atTextStart && bytes.length > 0) {
      this.atTextStart = false;
      if (this.tokenizer.stripsLeadingSpace && bytes[0] === SPACE) bytes = bytes.subarray(1);
    }
    return this.utf8.decode(bytes, { stream: true });
  }

  /** Ends the sequence: whatever is still held back becomes U+FFFD. The decoder is then ready for a new sequence. */
  flush(): string {
    this.atTextStart = !this.continuesPrompt;
    return this.utf8.decode();
  }
}

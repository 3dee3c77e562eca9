/**
 * A Tokenizer over a Hugging Face model directory's `tokenizer.json`, through @huggingface/tokenizers.
 * BOS/EOS come from `tokenizer_config.json`; the caller adds the EOS ids of `generation_config.json`.
 */
import { join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import {
  assertTokenId,
  displayTokenBytes,
  sentencePieceBytes,
  tokenContent,
  type EncodeOptions,
  type Tokenizer,
} from './tokenizer.ts';
import { isJsonObject, readJsonIfPresent, readTextIfPresent } from '../storage/json-files.ts';

interface AddedTokenJson {
  id: number;
  content: string;
  special?: boolean;
}

interface DecoderJson {
  type: string;
  decoders?: DecoderJson[];
  content?: string;
  start?: number;
}

interface TokenizerJson {
  added_tokens?: AddedTokenJson[];
  decoder?: DecoderJson | null;
}

export async function loadHuggingFaceTokenizer(dir: string, eosTokenIds: number[]): Promise<Tokenizer> {
  const tokenizerJson = await readJsonIfPresent(join(dir, 'tokenizer.json'));
  if (tokenizerJson === undefined) {
    throw new Error(
      `${dir} has no tokenizer.json; export the model's fast tokenizer (tokenizer.save_pretrained) into that directory`,
    );
  }
  const tokenizerConfig = (await readTokenizerConfig(dir)) ?? {};
  if (!isJsonObject(tokenizerJson)) throw new Error(`${join(dir, 'tokenizer.json')} must hold a JSON object; re-export the tokenizer`);
  checkTokenIds(tokenizerJson, join(dir, 'tokenizer.json'));
  try {
    return new HuggingFaceTokenizer(tokenizerJson as TokenizerJson, tokenizerConfig, eosTokenIds);
  } catch (error) {
    // The tokenizers library reports a malformed file with whatever failed inside it (often a TypeError).
    throw new Error(`${join(dir, 'tokenizer.json')} cannot be used as a tokenizer (${(error as Error).message}); re-export the tokenizer`, { cause: error });
  }
}

/**
 * Tables indexed by token id are sized by the largest id (here and inside the tokenizers library): a stray huge
 * id must be refused before it allocates gigabytes.
 */
function checkTokenIds(json: Record<string, unknown>, path: string): void {
  const model = isJsonObject(json.model) ? json.model : {};
  const vocab = isJsonObject(model.vocab) ? Object.values(model.vocab) : [];
  const added = Array.isArray(json.added_tokens) ? json.added_tokens.map((token) => (isJsonObject(token) ? token.id : undefined)) : [];
  const ids = [...vocab, ...added];
  const bound = Math.max(2 * ids.length, 1024);
  const stray = ids.find((id) => id !== undefined && !(Number.isInteger(id) && (id as number) >= 0 && (id as number) < bound));
  if (stray !== undefined) {
    throw new Error(`${path} holds token id ${JSON.stringify(stray)}, not a number below ${bound} for its ${ids.length} tokens; ids must number the tokens from 0`);
  }
}

/**
 * A model directory's `tokenizer_config.json` (null when absent). Newer exports keep the chat template in
 * `chat_template.jinja` instead; it is folded in as `chat_template` so callers see one shape.
 */
export async function readTokenizerConfig(dir: string): Promise<Record<string, unknown> | null> {
  const configPath = join(dir, 'tokenizer_config.json');
  const config = (await readJsonIfPresent(configPath)) ?? null;
  if (config !== null && !isJsonObject(config)) throw new Error(`${configPath} must hold a JSON object; re-export the tokenizer`);
  const templateFile = await readTextIfPresent(join(dir, 'chat_template.jinja'));
  if (templateFile === null) return config;
  return { ...config, chat_template: templateFile };
}

class HuggingFaceTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: number[];
  readonly stripsLeadingSpace: boolean;
  /** The whole tokenizer: decoding, and encoding text whose special tokens should be matched. */
  private readonly complete: HfTokenizer;
  /** The same tokenizer without its special added tokens, so `<s>` typed by a user stays text. */
  private readonly specialsAsText: HfTokenizer;
  private readonly specialTokenIds: Set<number>;
  private readonly addsBos: boolean;
  private readonly bytesById: Uint8Array[];

  constructor(json: TokenizerJson, config: Record<string, unknown>, eosTokenIds: number[]) {
    const addedTokens = json.added_tokens ?? [];
    this.complete = new HfTokenizer(json, config);
    this.specialsAsText = new HfTokenizer({ ...json, added_tokens: addedTokens.filter((t) => !t.special) }, config);
    this.specialTokenIds = new Set(addedTokens.filter((t) => t.special).map((t) => t.id));

    const vocabulary = this.complete.get_vocab(true);
    let largestId = -1;
    for (const id of vocabulary.values()) largestId = Math.max(largestId, id);
    this.vocabSize = largestId + 1;

    this.bosTokenId = this.configuredTokenId(config, 'bos_token');
    const configuredEos = this.configuredTokenId(config, 'eos_token');
    this.eosTokenIds = [...new Set([...eosTokenIds, ...(configuredEos === null ? [] : [configuredEos])])];
    this.addsBos = typeof config.add_bos_token === 'boolean' ? config.add_bos_token : this.postProcessorAddsBos();

    const steps = decoderSteps(json.decoder ?? null);
    this.stripsLeadingSpace = steps.some(
      (step) => step.type === 'Metaspace' || (step.type === 'Strip' && step.content === ' ' && (step.start ?? 0) > 0),
    );
    const byteLevel = steps.some((step) => step.type === 'ByteLevel');
    const nonSpecialAdded = new Set(addedTokens.filter((t) => !t.special).map((t) => t.id));
    this.bytesById = Array.from({ length: this.vocabSize }, (_, id) => {
      const piece = this.complete.id_to_token(id);
      if (piece === undefined || this.specialTokenIds.has(id)) return new Uint8Array(0);
      // Byte-level decoders pass added tokens through verbatim; only vocabulary pieces are byte-mapped.
      if (byteLevel) return nonSpecialAdded.has(id) ? Buffer.from(piece, 'utf8') : byteLevelBytes(piece);
      return sentencePieceBytes(piece);
    });
  }

  encode(text: string, { addBos = this.addsBos, parseSpecialTokens = false }: EncodeOptions = {}): number[] {
    const engine = parseSpecialTokens ? this.complete : this.specialsAsText;
    const { ids } = engine.encode(text, { add_special_tokens: false });
    return addBos && this.bosTokenId !== null ? [this.bosTokenId, ...ids] : ids;
  }

  decode(ids: number[]): string {
    for (const id of ids) assertTokenId(id, this.vocabSize);
    const textIds = ids.filter((id) => !this.specialTokenIds.has(id));
    if (textIds.length === 0) return '';
    // Clean-up (e.g. " ." → ".") is off: it would make streamed text differ from decoded text.
    return this.complete.decode(textIds, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }

  tokenBytes(id: number): Uint8Array {
    assertTokenId(id, this.vocabSize);
    return this.bytesById[id];
  }

  tokenText(id: number): string {
    assertTokenId(id, this.vocabSize);
    if (this.specialTokenIds.has(id)) return this.complete.id_to_token(id) ?? '';
    return displayTokenBytes(this.bytesById[id]);
  }

  private configuredTokenId(config: Record<string, unknown>, key: string): number | null {
    const content = tokenContent(config[key]);
    if (content === null) return null;
    const id = this.complete.token_to_id(content);
    if (id === undefined) {
      throw new Error(`tokenizer_config.json names ${key} ${JSON.stringify(content)}, which is not in tokenizer.json`);
    }
    return id;
  }

  /** Configs without `add_bos_token` (e.g. Llama 3) leave BOS to tokenizer.json's post-processor. */
  private postProcessorAddsBos(): boolean {
    if (this.bosTokenId === null) return false;
    return this.complete.encode('', { add_special_tokens: true }).ids[0] === this.bosTokenId;
  }
}

function decoderSteps(decoder: DecoderJson | null): DecoderJson[] {
  if (decoder === null) return [];
  return decoder.type === 'Sequence' ? (decoder.decoders ?? []).flatMap(decoderSteps) : [decoder];
}

/**
 * GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves and the other 68 bytes take the
 * characters from U+0100 on, in byte order. (The package keeps its copy of this table out of its typings.)
 */
const byteLevelAlphabet: Map<string, number> = (() => {
  const isPrintable = (byte: number) =>
    (byte >= 0x21 && byte <= 0x7e) || (byte >= 0xa1 && byte <= 0xac) || (byte >= 0xae && byte <= 0xff);
  const alphabet = new Map<string, number>();
  let nextStandIn = 0x100;
  for (let byte = 0; byte < 256; byte++) {
    alphabet.set(String.fromCodePoint(isPrintable(byte) ? byte : nextStandIn++), byte);
  }
  return alphabet;
})();

/**
 * GPT-2 style pieces spell each byte as one printable character; map them back. A character outside that
 * alphabet (hand-edited vocabularies have them) stands for its own UTF-8 bytes rather than failing the load.
 */
function byteLevelBytes(piece: string): Uint8Array {
  return Uint8Array.from(
    Array.from(piece).flatMap((char) => {
      const byte = byteLevelAlphabet.get(char);
      return byte === undefined ? [...Buffer.from(char, 'utf8')] : [byte];
    }),
  );
}


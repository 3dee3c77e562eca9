/**
 * Validated examples to token sequences with loss masks, rendered exactly as serving renders requests:
 *
 * - chat: each trained assistant message is learned in the context serving would give it, the chat template's
 *   prompt for the messages before it (`encodeChatPrompt`, the serving path), followed by the message as the
 *   template writes it and EOS, so the adapter learns to stop where serving stops. Turns whose sequence is a
 *   token prefix of a later turn's sequence share that sequence; otherwise each trained turn is its own sequence.
 * - prompt/completion: the prompt encoded as the completions API encodes it, loss on the completion and EOS.
 * - text: loss on every token and on the final EOS.
 *
 * Longer than `maxLength`: the sequence is cut to its first `maxLength` tokens when a target token survives the
 * cut; when none would (the prompt alone fills `maxLength`), the example is refused with its line number.
 */
import { encodeChatPrompt, type ChatFormatter, type ChatMessage } from '../../tokenizer/chat-template.ts';
import type { Tokenizer } from '../../tokenizer/tokenizer.ts';
import { DatasetError, type DatasetProblem, type TrainingExample, type TrainingMessage } from './jsonl-examples.ts';

/** One tokenised example (the engine's TrainingSequence): `lossMask[i] = 1` when tokens[i] is a target. */
export interface TokenizedSequence {
  tokens: Int32Array;
  lossMask: Uint8Array;
}

export interface TokenizedDataset {
  sequences: TokenizedSequence[];
  /** Examples cut to maxLength. */
  truncated: number;
  /** Target tokens over all sequences: what one epoch trains on. */
  targetTokens: number;
}

export interface TokenizeOptions {
  tokenizer: Tokenizer;
  formatChat: ChatFormatter;
  maxLength: number;
}

interface Draft {
  tokens: number[];
  /** [start, end) ranges of target tokens. */
  targets: Array<[number, number]>;
}

export function tokenizeExamples(examples: TrainingExample[], options: TokenizeOptions): TokenizedDataset {
  const problems: DatasetProblem[] = [];
  const sequences: TokenizedSequence[] = [];
  let truncated = 0;
  for (const example of examples) {
    let drafts: Draft[];
    try {
      drafts = draftsFor(example, options);
    } catch (error) {
      problems.push({ line: example.line, message: `cannot be rendered: ${(error as Error).message}` });
      continue;
    }
    for (const draft of drafts) {
      const sequence = finish(draft, options.maxLength);
      if (sequence === null) {
        const promptLength = draft.targets[0][0];
        problems.push({
          line: example.line,
          message: `its prompt alone is ${promptLength} tokens, which leaves nothing to learn within max_length ${options.maxLength}; shorten it or raise max_length`,
        });
        continue;
      }
      if (sequence.tokens.length < draft.tokens.length) truncated++;
      sequences.push(sequence);
    }
  }
  if (problems.length > 0) throw new DatasetError(problems);
  const targetTokens = sequences.reduce((sum, s) => sum + s.lossMask.reduce((a, b) => a + b, 0), 0);
  return { sequences, truncated, targetTokens };
}

function draftsFor(example: TrainingExample, options: TokenizeOptions): Draft[] {
  const { tokenizer } = options;
  const eos = tokenizer.eosTokenIds.length > 0 ? [tokenizer.eosTokenIds[0]] : [];
  switch (example.format) {
    case 'text': {
      const tokens = [...tokenizer.encode(example.text), ...eos];
      // Position 0 has no preceding logits to predict it from.
      return [{ tokens, targets: [[1, tokens.length]] }];
    }
    case 'prompt_completion': {
      const prompt = tokenizer.encode(example.prompt);
      return [withTarget(prompt, continuation(tokenizer, prompt, example.prompt, example.completion, {}), eos)];
    }
    case 'chat':
      return chatDrafts(example.messages, options, eos);
  }
}

function chatDrafts(messages: TrainingMessage[], { tokenizer, formatChat }: TokenizeOptions, eos: number[]): Draft[] {
  const drafts: Draft[] = [];
  const plain: ChatMessage[] = messages.map(({ role, content }) => ({ role, content }));
  messages.forEach((message, index) => {
    if (!message.trained) return;
    const prompt = formatChat(plain.slice(0, index));
    const promptIds = encodeChatPrompt(tokenizer, prompt);
    const written = assistantText(prompt.text, formatChat(plain.slice(0, index + 1)).text, message.content);
    const options = { addBos: prompt.addBos, parseSpecialTokens: true };
    drafts.push(withTarget(promptIds, continuation(tokenizer, promptIds, prompt.text, written, options), eos));
  });
  return mergePrefixes(drafts);
}

/**
 * The assistant message as the template writes it after the prompt: rendering the conversation with and without
 * the message shows what the template puts before the content (a separator such as " " or "\n").
 */
function assistantText(promptText: string, withMessage: string, content: string): string {
  if (!withMessage.startsWith(promptText)) return content;
  const rest = withMessage.slice(promptText.length);
  for (const needle of [content, content.trim()]) {
    const at = rest.indexOf(needle);
    if (at >= 0) return rest.slice(0, at + needle.length);
  }
  return content;
}

/**
 * The ids `text` adds after `prompt`: encoding prompt and continuation together keeps the tokenizer's merges at
 * the boundary, as the model would have seen the text; when the joint encoding does not start with the prompt's
 * ids, the continuation is encoded on its own.
 */
function continuation(
  tokenizer: Tokenizer,
  promptIds: number[],
  promptText: string,
  text: string,
  options: { addBos?: boolean; parseSpecialTokens?: boolean },
): number[] {
  const joint = tokenizer.encode(promptText + text, options);
  if (joint.length > promptIds.length && promptIds.every((id, i) => joint[i] === id)) return joint.slice(promptIds.length);
  return tokenizer.encode(text, { addBos: false, parseSpecialTokens: options.parseSpecialTokens });
}

function withTarget(prompt: number[], target: number[], eos: number[]): Draft {
  const tokens = [...prompt, ...target, ...eos];
  // An empty prompt (no BOS) leaves the first target token without a predecessor.
  return { tokens, targets: [[Math.max(1, prompt.length), tokens.length]] };
}

/** A turn whose whole sequence begins a later turn's sequence is trained inside the later one. */
function mergePrefixes(drafts: Draft[]): Draft[] {
  const merged: Draft[] = [];
  for (let i = drafts.length - 1; i >= 0; i--) {
    const draft = drafts[i];
    const host = merged.find((later) => later.tokens.length > draft.tokens.length && draft.tokens.every((id, k) => later.tokens[k] === id));
    if (host) host.targets.unshift(...draft.targets);
    else merged.unshift(draft);
  }
  return merged;
}

function finish(draft: Draft, maxLength: number): TokenizedSequence | null {
  const length = Math.min(draft.tokens.length, maxLength);
  const lossMask = new Uint8Array(length);
  let targets = 0;
  for (const [start, end] of draft.targets) {
    for (let i = start; i < Math.min(end, length); i++) {
      lossMask[i] = 1;
      targets++;
    }
  }
  if (targets === 0) return null;
  return { tokens: Int32Array.from(draft.tokens.slice(0, length)), lossMask };
}

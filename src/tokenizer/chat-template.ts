/**
 * Chat messages to prompt text: the model's own Jinja chat template (rendered with @huggingface/jinja, with
 * the variables transformers' apply_chat_template provides), or a plain fallback for models without one.
 */
import { Template } from '@huggingface/jinja';
import { tokenContent, type Tokenizer } from './tokenizer.ts';

export interface ChatMessage {
  role: string;
  content: string;
}

export interface ChatPrompt {
  /** The prompt, without a leading BOS token even where the template wrote one. */
  text: string;
  /**
   * Whether to put BOS before `text` (the `addBos` encode option): true when the template wrote one (it was
   * taken off `text` so that it is not added twice), false when the template deliberately starts without BOS,
   * absent for the fallback format (the tokenizer's own rule applies).
   */
  addBos?: boolean;
}

export type ChatFormatter = (messages: ChatMessage[]) => ChatPrompt;

/**
 * A rendered chat prompt's token ids, as serving feeds them to the model (and training, so an adapter learns on
 * exactly what it will be served). Special tokens are parsed: the template writes them itself.
 */
export function encodeChatPrompt(tokenizer: Tokenizer, prompt: ChatPrompt): number[] {
  return tokenizer.encode(prompt.text, { addBos: prompt.addBos, parseSpecialTokens: true });
}

/** A chat template that does not parse, or that refuses the messages (e.g. roles that do not alternate). */
export class ChatTemplateError extends Error {
  override name = 'ChatTemplateError';
}

/**
 * `tokenizerConfig` is a model's tokenizer_config.json (`chat_template`, `bos_token`, `eos_token`), or for a
 * GGUF model what `chatTemplateConfigFromGguf` builds from its metadata; null or no template selects the fallback.
 * Template syntax errors throw here, at load, rather than on the first request.
 */
export function createChatFormatter(tokenizerConfig: Record<string, unknown> | null): ChatFormatter {
  const source = chatTemplateSource(tokenizerConfig?.chat_template);
  if (source === null) return formatWithoutTemplate;
  let template: Template;
  try {
    template = new Template(source);
  } catch (error) {
    throw new ChatTemplateError(
      `the model's chat_template does not parse (${(error as Error).message}); fix the template in the model's tokenizer config`,
    );
  }
  const bosToken = tokenContent(tokenizerConfig?.bos_token) ?? '';
  const eosToken = tokenContent(tokenizerConfig?.eos_token) ?? '';
  return (messages) => {
    let text: string;
    try {
      text = template.render({ messages, bos_token: bosToken, eos_token: eosToken, add_generation_prompt: true });
    } catch (error) {
      throw new ChatTemplateError(`the model's chat template failed on these messages: ${(error as Error).message}`);
    }
    if (bosToken !== '' && text.startsWith(bosToken)) return { text: text.slice(bosToken.length), addBos: true };
    return { text, addBos: false };
  };
}

/** The chat template a GGUF file carries, shaped like tokenizer_config.json; null when it has none. */
export function chatTemplateConfigFromGguf(metadata: Map<string, unknown>): Record<string, unknown> | null {
  const template = metadata.get('tokenizer.chat_template');
  if (typeof template !== 'string') return null;
  const tokens = metadata.get('tokenizer.ggml.tokens');
  const tokenText = (key: string) => {
    const id = metadata.get(key);
    return Array.isArray(tokens) && typeof id === 'number' ? tokens[id] : undefined;
  };
  return {
    chat_template: template,
    bos_token: tokenText('tokenizer.ggml.bos_token_id'),
    eos_token: tokenText('tokenizer.ggml.eos_token_id'),
  };
}

/** Configs hold one template, or named variants of which `default` is the chat one. */
function chatTemplateSource(value: unknown): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) {
    const named = value.find((entry) => entry?.name === 'default');
    if (typeof named?.template === 'string') return named.template;
  }
  throw new ChatTemplateError(
    'chat_template in the tokenizer config is neither a template string nor a list with a "default" entry',
  );
}

/**
 * The fallback for models without a chat template (base models such as stories260K): one `role: content`
 * line per message, then `assistant:` for the model to continue, e.g.
 *
 *     system: Be brief.
 *     user: Hello
 *     assistant:
 */
function formatWithoutTemplate(messages: ChatMessage[]): ChatPrompt {
  const lines = messages.map(({ role, content }) => `${role}: ${content}`);
  return { text: [...lines, 'assistant:'].join('\n') };
}

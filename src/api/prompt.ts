/** Prompt fields to token ids, the same for every protocol (HTTP completions, WebSocket responses). */
import { invalidRequest } from '../gateway/errors.ts';
import { ChatTemplateError, encodeChatPrompt, type ChatFormatter } from '../tokenizer/chat-template.ts';
import type { Tokenizer } from '../tokenizer/tokenizer.ts';
import { parseChatMessages, parseCompletionPrompt } from './request-fields.ts';

export function chatPromptIds(formatChat: ChatFormatter, tokenizer: Tokenizer, messages: unknown): number[] {
  let prompt;
  try {
    prompt = formatChat(parseChatMessages(messages));
  } catch (error) {
    if (error instanceof ChatTemplateError) throw invalidRequest(error.message, 'messages');
    throw error;
  }
  return encodeChatPrompt(tokenizer, prompt);
}

/** A raw prompt (text or token ids) continued as is; `param` names the field in errors. */
export function rawPromptIds(tokenizer: Tokenizer, value: unknown, param: string): number[] {
  const prompt = parseCompletionPrompt(value, tokenizer.vocabSize, param);
  const ids = typeof prompt === 'string' ? tokenizer.encode(prompt) : prompt;
  if (ids.length === 0) throw invalidRequest(`The ${param} is empty and this model adds no BOS token; send some text.`, param);
  return ids;
}

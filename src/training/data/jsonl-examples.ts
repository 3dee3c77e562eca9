/**
 * Training files in OpenAI's fine-tuning formats, one JSON object per line, checked line by line:
 *
 *   chat               {"messages":[{"role":"system"|"developer"|"user"|"assistant","content":"…","weight":0|1}, …]}
 *   prompt/completion  {"prompt":"…","completion":"…"}
 *   text               {"text":"…"}
 *
 * A file holds one format. Every problem is reported with its line number, and nothing is accepted unless every
 * line is valid: a file either yields all of its examples or none.
 */
import { isJsonObject, type JsonObject } from '../../storage/json-files.ts';

export type ChatRole = 'system' | 'user' | 'assistant';

export interface TrainingMessage {
  role: ChatRole;
  content: string;
  /** false for an assistant message with `weight: 0`: it is context, not a target. */
  trained: boolean;
}

export type TrainingExample =
  | { format: 'chat'; line: number; messages: TrainingMessage[] }
  | { format: 'prompt_completion'; line: number; prompt: string; completion: string }
  | { format: 'text'; line: number; text: string };

export type TrainingFormat = TrainingExample['format'];

export interface DatasetProblem {
  /** 1-based line number in the file; 0 for a problem with the file as a whole. */
  line: number;
  message: string;
}

/** How many problems an error lists; the rest are counted, so a broken file gives a readable message. */
const MAX_REPORTED_PROBLEMS = 5;

export class DatasetError extends Error {
  override name = 'DatasetError';
  constructor(readonly problems: DatasetProblem[]) {
    const shown = problems.slice(0, MAX_REPORTED_PROBLEMS).map(({ line, message }) => (line > 0 ? `line ${line}: ${message}` : message));
    const more = problems.length - shown.length;
    super(shown.join('; ') + (more > 0 ? `; and ${more} more problem${more === 1 ? '' : 's'}` : ''));
  }
}

/** OpenAI's floor: fewer examples than this cannot teach anything a prompt could not. */
export const MIN_TRAINING_EXAMPLES = 10;

const ROLES: Readonly<Record<string, ChatRole>> = { system: 'system', developer: 'system', user: 'user', assistant: 'assistant' };
const MESSAGE_KEYS = new Set(['role', 'content', 'weight', 'name']);
const FORMAT_KEYS: Record<TrainingFormat, readonly string[]> = {
  chat: ['messages'],
  prompt_completion: ['prompt', 'completion'],
  text: ['text'],
};
const FORMAT_NAMES: Record<TrainingFormat, string> = {
  chat: 'chat ({"messages": [...]})',
  prompt_completion: 'prompt/completion ({"prompt", "completion"})',
  text: 'text ({"text"})',
};

/**
 * Parses and validates a whole JSONL file. `minExamples` is MIN_TRAINING_EXAMPLES for a training file and 1 for a
 * validation file. Blank lines are skipped. Throws a DatasetError listing the problems found.
 */
export function parseTrainingJsonl(text: string, minExamples = MIN_TRAINING_EXAMPLES): TrainingExample[] {
  const problems: DatasetProblem[] = [];
  const examples: TrainingExample[] = [];
  let fileFormat: { format: TrainingFormat; line: number } | undefined;
  const lines = text.split('\n');
  for (let index = 0; index < lines.length; index++) {
    const raw = lines[index].trim();
    if (raw === '') continue;
    const line = index + 1;
    try {
      const example = parseExample(raw, line);
      if (fileFormat === undefined) fileFormat = { format: example.format, line };
      else if (example.format !== fileFormat.format) {
        throw new LineProblem(
          `is a ${FORMAT_NAMES[example.format]} example, but line ${fileFormat.line} is ${FORMAT_NAMES[fileFormat.format]}; a file holds one format`,
        );
      }
      examples.push(example);
    } catch (error) {
      if (!(error instanceof LineProblem)) throw error;
      problems.push({ line, message: error.message });
    }
  }
  if (problems.length > 0) throw new DatasetError(problems);
  if (examples.length < minExamples) {
    throw new DatasetError([
      { line: 0, message: `the file has ${examples.length} example${examples.length === 1 ? '' : 's'}; at least ${minExamples} are needed` },
    ]);
  }
  return examples;
}

class LineProblem extends Error {}

function parseExample(raw: string, line: number): TrainingExample {
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    // The parser's message quotes the text around the error: training data stays out of error messages.
    throw new LineProblem('is not valid JSON');
  }
  if (!isJsonObject(value)) throw new LineProblem(`is not a JSON object (got ${Array.isArray(value) ? 'an array' : typeof value})`);
  const format = detectFormat(value);
  const unknownKey = Object.keys(value).find((key) => !FORMAT_KEYS[format].includes(key));
  if (unknownKey !== undefined) {
    throw new LineProblem(`unknown key ${JSON.stringify(unknownKey)}; a ${FORMAT_NAMES[format]} example has only ${FORMAT_KEYS[format].join(', ')}`);
  }
  switch (format) {
    case 'chat':
      return { format, line, messages: parseMessages(value.messages) };
    case 'prompt_completion':
      if (typeof value.prompt !== 'string') throw new LineProblem('"prompt" must be a string');
      return { format, line, prompt: value.prompt, completion: nonEmptyString(value.completion, '"completion"') };
    case 'text':
      return { format, line, text: nonEmptyString(value.text, '"text"') };
  }
}

function detectFormat(value: JsonObject): TrainingFormat {
  if ('messages' in value) return 'chat';
  if ('prompt' in value || 'completion' in value) {
    if (!('prompt' in value)) throw new LineProblem('has "completion" but no "prompt"');
    if (!('completion' in value)) throw new LineProblem('has "prompt" but no "completion"');
    return 'prompt_completion';
  }
  if ('text' in value) return 'text';
  throw new LineProblem('has no "messages", "prompt"/"completion" or "text"; see the fine-tuning formats in the README');
}

function nonEmptyString(value: unknown, what: string): string {
  if (typeof value !== 'string') throw new LineProblem(`${what} must be a string`);
  if (value.trim() === '') throw new LineProblem(`${what} is empty`);
  return value;
}

function parseMessages(value: unknown): TrainingMessage[] {
  if (!Array.isArray(value)) throw new LineProblem('"messages" must be an array of messages');
  if (value.length === 0) throw new LineProblem('"messages" is empty');
  const messages = value.map((message, index): TrainingMessage => {
    const where = `messages[${index}]`;
    if (!isJsonObject(message)) throw new LineProblem(`${where} is not a JSON object`);
    const unknownKey = Object.keys(message).find((key) => !MESSAGE_KEYS.has(key));
    if (unknownKey !== undefined) {
      throw new LineProblem(`${where} has the unknown key ${JSON.stringify(unknownKey)}; a message has role, content and (assistant only) weight`);
    }
    if (typeof message.role !== 'string' || !(message.role in ROLES)) {
      // The role is not quoted: a misplaced field could put training text there.
      const problem = message.role === undefined ? 'has no role' : 'has an unknown role';
      throw new LineProblem(`${where} ${problem}; expected one of ${Object.keys(ROLES).join(', ')}`);
    }
    const role = ROLES[message.role];
    if (message.name !== undefined && typeof message.name !== 'string') throw new LineProblem(`${where}.name must be a string`);
    const content = nonEmptyString(message.content, `${where}.content`);
    let trained = role === 'assistant';
    if (message.weight !== undefined) {
      if (role !== 'assistant') throw new LineProblem(`${where} has a weight, which only assistant messages may have`);
      if (message.weight !== 0 && message.weight !== 1) throw new LineProblem(`${where}.weight must be 0 or 1`);
      trained = message.weight === 1;
    }
    return { role, content, trained };
  });
  if (!messages.some((message) => message.role === 'assistant')) throw new LineProblem('has no assistant message');
  if (!messages.some((message) => message.trained)) throw new LineProblem('every assistant message has weight 0: nothing to learn');
  return messages;
}

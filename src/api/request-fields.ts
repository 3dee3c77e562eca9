/**
 * The request fields of OpenAI's chat completions and (legacy) completions APIs, checked as OpenAI checks them:
 * every wrong type or out-of-range value is refused with a 400 naming the exact parameter, and fields OpenAI defines
 * but this server does not implement are refused by name rather than silently ignored, since ignoring e.g. `tools`
 * or `response_format` would return something the caller did not ask for. The HTTP and WebSocket APIs both parse
 * through here, so they accept and refuse exactly the same requests.
 *
 * JSON `null` counts as absent for every optional field, as in OpenAI's API (its SDKs send null for unset fields).
 */
import { MAX_TOP_LOGPROBS, type SamplingParams } from '../engine/sampling.ts';
import { type ApiError, invalidRequest } from '../gateway/errors.ts';
import type { ChatMessage } from '../tokenizer/chat-template.ts';
import { isJsonObject, type JsonObject } from '../storage/json-files.ts';

export type GenerationApi = 'chat' | 'completions';
export type { JsonObject };

export interface GenerationFields {
  sampling: SamplingParams;
  /** Absent when the request leaves it out; `resolveMaxTokens` picks the default once the prompt length is known. */
  maxTokens: number | undefined;
  stop: string[];
  /** How many choices to generate for the prompt. */
  n: number;
  /** How many most likely alternatives to report per token; absent when the request did not ask for logprobs. */
  logprobs?: number;
  stream: boolean;
  /** `stream_options.include_usage`: send a final chunk with the usage. */
  includeUsage: boolean;
}

/** What a completions `prompt` holds: text to encode, or token ids to use as they are. */
export type CompletionPrompt = string | number[];

/** Most choices one request may ask for; each is a sequence in the engine's batch. */
export const MAX_CHOICES = 8;
/** OpenAI's limits: 4 stop sequences; 5 alternatives per token in the completions API, 20 in chat. */
export const MAX_STOP_SEQUENCES = 4;
export const MAX_COMPLETIONS_LOGPROBS = 5;
/** OpenAI's default for the legacy completions API. */
export const DEFAULT_COMPLETIONS_MAX_TOKENS = 16;

/**
 * The completion length when the request sets none. Chat generates until the model stops or the context is full,
 * as OpenAI and vLLM do; completions keep OpenAI's legacy default of 16 tokens, shortened to fit the context. The
 * tenant's token budget reserves prompt plus this many tokens while the request runs (see runInference), so callers
 * on tight budgets should set max_tokens.
 */
export function resolveMaxTokens(requested: number | undefined, api: GenerationApi, promptTokens: number, maxPositions: number): number {
  if (requested !== undefined) return requested;
  const remaining = maxPositions - promptTokens;
  // At least one token, so that a prompt filling the whole context is refused by the context check, which says why.
  return Math.max(1, api === 'chat' ? remaining : Math.min(DEFAULT_COMPLETIONS_MAX_TOKENS, remaining));
}

/**
 * The sampling of choice `index` of an n-choice request: with a seed, each choice gets its own (seed + index) so
 * the choices differ from each other and the whole response stays reproducible.
 */
export function choiceSampling(sampling: SamplingParams, index: number): SamplingParams {
  return sampling.seed === undefined ? sampling : { ...sampling, seed: sampling.seed + index };
}

/** The parsed body must be a JSON object; arrays, strings and numbers are valid JSON but not a request. */
export function requireJsonObject(value: unknown): JsonObject {
  if (!isJsonObject(value)) throw invalidRequest(`The request body must be a JSON object, got ${describe(value)}.`, null, 'invalid_json');
  return value;
}

export function parseModel(body: JsonObject): string {
  const model = optional(body, 'model');
  if (model === undefined) throw invalidRequest('You must provide a model parameter.', 'model');
  if (typeof model !== 'string' || model === '') throw invalidValue('model', 'a non-empty string', model);
  return model;
}

// ---- which fields exist ----

const SHARED_FIELDS = [
  'model', 'frequency_penalty', 'presence_penalty', 'logprobs', 'max_tokens', 'n', 'seed', 'stop', 'stream',
  'stream_options', 'temperature', 'top_p', 'user',
  // vLLM's sampling extensions, which the engine implements.
  'top_k', 'min_p', 'repetition_penalty',
];
const SUPPORTED_FIELDS: Record<GenerationApi, ReadonlySet<string>> = {
  chat: new Set([...SHARED_FIELDS, 'messages', 'max_completion_tokens', 'top_logprobs', 'safety_identifier', 'prompt_cache_key']),
  completions: new Set([...SHARED_FIELDS, 'prompt']),
};

/**
 * Fields OpenAI defines that this server does not implement. A field is accepted only with the value that means
 * "do nothing special" (e.g. `response_format: {type: "text"}`, `echo: false`); `() => false` means any value is
 * refused.
 */
const UNSUPPORTED_FIELDS: Record<GenerationApi, Readonly<Record<string, (value: unknown) => boolean>>> = {
  chat: {
    tools: () => false,
    tool_choice: (value) => value === 'none',
    functions: () => false,
    function_call: (value) => value === 'none',
    parallel_tool_calls: () => false,
    response_format: (value) => isJsonObject(value) && value.type === 'text' && Object.keys(value).length === 1,
    logit_bias: (value) => isJsonObject(value) && Object.keys(value).length === 0,
    audio: () => false,
    modalities: (value) => Array.isArray(value) && value.length === 1 && value[0] === 'text',
    prediction: () => false,
    reasoning_effort: () => false,
    verbosity: () => false,
    web_search_options: () => false,
    store: (value) => value === false,
    metadata: (value) => isJsonObject(value) && Object.keys(value).length === 0,
    service_tier: (value) => value === 'auto' || value === 'default',
  },
  completions: {
    best_of: (value) => value === 1,
    echo: (value) => value === false,
    suffix: (value) => value === '',
    logit_bias: (value) => isJsonObject(value) && Object.keys(value).length === 0,
  },
};

/**
 * Refuses fields this server does not implement (naming them and saying so) and fields neither OpenAI nor vLLM
 * define (usually a typo). `allow` adds fields the calling protocol defines itself, such as a WebSocket event's `type`.
 */
export function rejectUnsupportedFields(body: JsonObject, api: GenerationApi, allow: readonly string[] = []): void {
  const endpoint = api === 'chat' ? 'chat completions' : 'completions';
  for (const [field, value] of Object.entries(body)) {
    if (SUPPORTED_FIELDS[api].has(field) || allow.includes(field)) continue;
    const neutral = UNSUPPORTED_FIELDS[api][field];
    if (neutral === undefined) {
      throw invalidRequest(`Unrecognized request argument supplied: '${field}'. Remove it; see the ${endpoint} API reference.`, field, 'unknown_parameter');
    }
    if (value !== null && !neutral(value)) {
      throw invalidRequest(`'${field}' is not supported by this server. Remove it from the request.`, field, 'unsupported_parameter');
    }
  }
}

// ---- generation fields ----

export function parseGenerationFields(body: JsonObject, api: GenerationApi): GenerationFields {
  const logprobs = api === 'chat' ? chatLogprobs(body) : integerField(body, 'logprobs', 0, MAX_COMPLETIONS_LOGPROBS);
  const seed = optional(body, 'seed');
  if (seed !== undefined && !Number.isSafeInteger(seed)) throw invalidValue('seed', 'an integer', seed);
  // vLLM spells "no top-k" as -1 or 0; the engine as 0.
  const topK = integerField(body, 'top_k', -1, Number.MAX_SAFE_INTEGER) ?? 0;
  const sampling: SamplingParams = {
    temperature: numberField(body, 'temperature', 0, 2) ?? 1,
    topP: numberField(body, 'top_p', 0, 1, { excludeMin: true }) ?? 1,
    topK: Math.max(0, topK),
    presencePenalty: numberField(body, 'presence_penalty', -2, 2) ?? 0,
    frequencyPenalty: numberField(body, 'frequency_penalty', -2, 2) ?? 0,
  };
  const minP = numberField(body, 'min_p', 0, 1);
  if (minP !== undefined) sampling.minP = minP;
  const repetitionPenalty = numberField(body, 'repetition_penalty', 0, Number.MAX_VALUE, { excludeMin: true });
  if (repetitionPenalty !== undefined) sampling.repetitionPenalty = repetitionPenalty;
  if (seed !== undefined) sampling.seed = seed as number;
  if (logprobs !== undefined) sampling.logprobs = logprobs;

  const stream = booleanField(body, 'stream') ?? false;
  const fields: GenerationFields = {
    sampling,
    maxTokens: maxTokens(body, api),
    stop: stopField(body),
    n: integerField(body, 'n', 1, MAX_CHOICES) ?? 1,
    stream,
    includeUsage: streamOptions(body, stream),
  };
  if (logprobs !== undefined) fields.logprobs = logprobs;
  stringField(body, 'user');
  if (api === 'chat') {
    stringField(body, 'safety_identifier');
    stringField(body, 'prompt_cache_key');
  }
  return fields;
}

/**
 * Chat has `max_completion_tokens`, which replaced `max_tokens`; when both are sent it wins, as in vLLM.
 * `max_output_tokens` is the Responses API's name, reachable only where a protocol allows the field
 * (the WebSocket API); it wins over both.
 */
function maxTokens(body: JsonObject, api: GenerationApi): number | undefined {
  const responses = integerField(body, 'max_output_tokens', 1, Number.MAX_SAFE_INTEGER);
  const legacy = integerField(body, 'max_tokens', 1, Number.MAX_SAFE_INTEGER);
  if (api === 'completions') return responses ?? legacy;
  return responses ?? integerField(body, 'max_completion_tokens', 1, Number.MAX_SAFE_INTEGER) ?? legacy;
}

/** Chat asks with `logprobs: true` plus `top_logprobs` alternatives (0..20), which need `logprobs`. */
function chatLogprobs(body: JsonObject): number | undefined {
  const wanted = booleanField(body, 'logprobs') ?? false;
  const top = integerField(body, 'top_logprobs', 0, MAX_TOP_LOGPROBS);
  if (top !== undefined && !wanted) {
    throw invalidRequest("'top_logprobs' needs 'logprobs' set to true; set it, or remove top_logprobs.", 'top_logprobs');
  }
  return wanted ? (top ?? 0) : undefined;
}

function stopField(body: JsonObject): string[] {
  const value = optional(body, 'stop');
  if (value === undefined) return [];
  const stops = typeof value === 'string' ? [value] : value;
  if (!Array.isArray(stops)) throw invalidValue('stop', 'a string or an array of strings', value);
  if (stops.length > MAX_STOP_SEQUENCES) {
    throw invalidRequest(`'stop' may hold at most ${MAX_STOP_SEQUENCES} sequences, got ${stops.length}.`, 'stop');
  }
  stops.forEach((stop, index) => {
    const param = typeof value === 'string' ? 'stop' : `stop[${index}]`;
    if (typeof stop !== 'string' || stop === '') throw invalidValue(param, 'a non-empty string', stop);
  });
  return stops as string[];
}

/** `stream_options` is only meaningful, and only allowed (as in OpenAI), with `stream: true`. */
function streamOptions(body: JsonObject, stream: boolean): boolean {
  const options = optional(body, 'stream_options');
  if (options === undefined) return false;
  if (!stream) {
    throw invalidRequest("'stream_options' is only allowed when 'stream' is true.", 'stream_options');
  }
  if (!isJsonObject(options)) throw invalidValue('stream_options', 'an object', options);
  for (const key of Object.keys(options)) {
    // include_obfuscation pads chunks against length side channels on OpenAI's side; nothing to do here.
    if (key !== 'include_usage' && key !== 'include_obfuscation') {
      throw invalidRequest(`Unrecognized argument 'stream_options.${key}'.`, `stream_options.${key}`, 'unknown_parameter');
    }
  }
  booleanField(options, 'include_obfuscation', 'stream_options.');
  return booleanField(options, 'include_usage', 'stream_options.') ?? false;
}

// ---- prompts ----

const ROLES: Readonly<Record<string, ChatMessage['role']>> = {
  system: 'system',
  // OpenAI's newer name for system instructions; chat templates only know `system`.
  developer: 'system',
  user: 'user',
  assistant: 'assistant',
};
/** Message fields whose features (tool calls, audio) this server lacks; accepted only when null. */
const UNSUPPORTED_MESSAGE_FIELDS = new Set(['tool_calls', 'function_call', 'audio', 'tool_call_id']);
const UNSUPPORTED_PART_TYPES = new Set(['image_url', 'input_audio', 'file', 'refusal']);

/**
 * Chat `messages` to the plain messages a chat template renders. Content is a string or an array of text parts,
 * joined with newlines as vLLM joins them; images, audio, files and tool messages are refused by parameter path.
 */
export function parseChatMessages(value: unknown, param = 'messages'): ChatMessage[] {
  if (value === undefined || value === null) throw invalidRequest(`Missing required parameter: '${param}'.`, param);
  if (!Array.isArray(value)) throw invalidValue(param, 'an array of messages', value);
  if (value.length === 0) throw invalidRequest(`'${param}' must contain at least one message.`, param);
  return value.map((message, index) => parseChatMessage(message, `${param}[${index}]`));
}

function parseChatMessage(message: unknown, param: string): ChatMessage {
  if (!isJsonObject(message)) throw invalidValue(param, 'a message object', message);
  const role = message.role;
  if (role === 'tool' || role === 'function') {
    throw invalidRequest(`Messages with role '${role}' are not supported: this server does not implement tool calls.`, `${param}.role`, 'unsupported_parameter');
  }
  if (typeof role !== 'string' || !(role in ROLES)) {
    throw invalidValue(`${param}.role`, `one of ${Object.keys(ROLES).join(', ')}`, role);
  }
  for (const [key, field] of Object.entries(message)) {
    if (key === 'role' || key === 'content' || field === null) continue;
    // `name` tells participants apart and `refusal` is an earlier answer's refusal text; the chat templates served
    // here render neither, so both are checked and then left out.
    if (key === 'name' || (key === 'refusal' && role === 'assistant')) {
      if (typeof field !== 'string') throw invalidValue(`${param}.${key}`, 'a string', field);
    } else if (UNSUPPORTED_MESSAGE_FIELDS.has(key)) {
      throw invalidRequest(`'${param}.${key}' is not supported by this server.`, `${param}.${key}`, 'unsupported_parameter');
    } else {
      throw invalidRequest(`Unrecognized argument '${param}.${key}'.`, `${param}.${key}`, 'unknown_parameter');
    }
  }
  return { role: ROLES[role], content: messageContent(message.content, `${param}.content`) };
}

function messageContent(content: unknown, param: string): string {
  if (typeof content === 'string') return content;
  if (content === undefined || content === null) throw invalidRequest(`Missing required parameter: '${param}'.`, param);
  if (!Array.isArray(content)) throw invalidValue(param, 'a string or an array of content parts', content);
  return content
    .map((part, index) => {
      const partParam = `${param}[${index}]`;
      if (!isJsonObject(part)) throw invalidValue(partParam, 'a content part object', part);
      if (UNSUPPORTED_PART_TYPES.has(part.type as string)) {
        throw invalidRequest(
          `Content parts of type '${String(part.type)}' are not supported: this model reads text only.`,
          `${partParam}.type`,
          'unsupported_parameter',
        );
      }
      if (part.type !== 'text') throw invalidValue(`${partParam}.type`, "'text'", part.type);
      const extra = Object.keys(part).find((key) => key !== 'type' && key !== 'text');
      if (extra !== undefined) {
        throw invalidRequest(`Unrecognized argument '${partParam}.${extra}'.`, `${partParam}.${extra}`, 'unknown_parameter');
      }
      if (typeof part.text !== 'string') throw invalidValue(`${partParam}.text`, 'a string', part.text);
      return part.text;
    })
    .join('\n');
}

/**
 * A completions `prompt`: a string or an array of token ids, each also accepted wrapped in a one-element array.
 * Several prompts in one request (OpenAI's batch form) are refused; send one request per prompt.
 */
export function parseCompletionPrompt(value: unknown, vocabSize: number, param = 'prompt'): CompletionPrompt {
  if (value === undefined || value === null) throw invalidRequest(`Missing required parameter: '${param}'.`, param);
  let prompt = value;
  if (Array.isArray(value) && value.some((entry) => typeof entry === 'string' || Array.isArray(entry))) {
    if (value.length !== 1) {
      throw invalidRequest(`This server takes one prompt per request, got ${value.length}; send one request per prompt.`, param);
    }
    [prompt] = value;
    param = `${param}[0]`;
  }
  if (typeof prompt === 'string') return prompt;
  if (!Array.isArray(prompt) || prompt.length === 0) throw invalidValue(param, 'a string or a non-empty array of token ids', prompt);
  prompt.forEach((id, index) => {
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
      throw invalidValue(`${param}[${index}]`, `a token id from 0 to ${vocabSize - 1}`, id);
    }
  });
  return prompt as number[];
}

// ---- primitives ----


export function optional(body: JsonObject, key: string): unknown {
  const value = body[key];
  return value === null ? undefined : value;
}

function describe(value: unknown): string {
  if (Array.isArray(value)) return 'an array';
  if (value === null) return 'null';
  if (typeof value === 'object') return 'an object';
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 40 ? `${text.slice(0, 40)}…` : text;
}

export function invalidValue(param: string, expected: string, got: unknown): ApiError {
  return invalidRequest(`Invalid value for '${param}': expected ${expected}, got ${describe(got)}.`, param, 'invalid_value');
}

function numberField(body: JsonObject, key: string, min: number, max: number, options: { excludeMin?: boolean } = {}): number | undefined {
  const value = optional(body, key);
  if (value === undefined) return undefined;
  const inRange = typeof value === 'number' && Number.isFinite(value) && (options.excludeMin ? value > min : value >= min) && value <= max;
  if (!inRange) {
    const range = max === Number.MAX_VALUE ? `a number greater than ${min}` : `a number from ${min}${options.excludeMin ? ' (exclusive)' : ''} to ${max}`;
    throw invalidValue(key, range, value);
  }
  return value;
}

function integerField(body: JsonObject, key: string, min: number, max: number): number | undefined {
  const value = optional(body, key);
  if (value === undefined) return undefined;
  if (!Number.isSafeInteger(value) || (value as number) < min || (value as number) > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `an integer of at least ${min}` : `an integer from ${min} to ${max}`;
    throw invalidValue(key, range, value);
  }
  return value as number;
}

function booleanField(body: JsonObject, key: string, prefix = ''): boolean | undefined {
  const value = optional(body, key);
  if (value !== undefined && typeof value !== 'boolean') throw invalidValue(`${prefix}${key}`, 'true or false', value);
  return value as boolean | undefined;
}

function stringField(body: JsonObject, key: string): string | undefined {
  const value = optional(body, key);
  if (value !== undefined && typeof value !== 'string') throw invalidValue(key, 'a string', value);
  return value as string | undefined;
}

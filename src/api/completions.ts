/**
 * `POST /v1/chat/completions` and `POST /v1/completions`, exactly as OpenAI's API answers them, streamed (server-sent
 * events) or not. Each of the n choices is its own generation through runInference; this file only turns requests
 * into prompts and results into OpenAI's wire format.
 */
import { randomUUID } from 'node:crypto';
import type { Context, Hono } from 'hono';
import type { TokenEvent } from '../engine/protocol.ts';
import { runInference, type InferenceRequest } from '../gateway/inference.ts';
import { promptPositions } from '../gateway/model-resolver.ts';
import { asApiError, shuttingDown } from '../gateway/errors.ts';
import type { GatewayEnv, GatewayServices } from '../gateway/services.ts';
import type { TextGenerationResult } from '../serving/text-generation.ts';
import { StreamDecoder } from '../tokenizer/stream-decoder.ts';
import type { Tokenizer } from '../tokenizer/tokenizer.ts';
import {
  choiceSampling,
  parseGenerationFields,
  parseModel,
  rejectUnsupportedFields,
  requireJsonObject,
  resolveMaxTokens,
  type GenerationApi,
  type GenerationFields,
} from './request-fields.ts';
import { chatPromptIds, rawPromptIds } from './prompt.ts';
import { SseStream } from './sse.ts';

export function registerCompletionRoutes(app: Hono<GatewayEnv>, services: GatewayServices): void {
  app.post('/v1/chat/completions', (c) => generate(c, services, 'chat'));
  app.post('/v1/completions', (c) => generate(c, services, 'completions'));
}

/** One validated request, ready to run. */
interface Generation {
  api: GenerationApi;
  fields: GenerationFields;
  /** Shared by every choice's inference request; only `sampling`, `signal` and `onDelta` differ per choice. */
  inference: Omit<InferenceRequest, 'signal' | 'onDelta'>;
  created: number;
  systemFingerprint: string;
}

async function generate(c: Context<GatewayEnv>, services: GatewayServices, api: GenerationApi): Promise<Response> {
  if (services.draining) throw shuttingDown();
  const generation = await prepare(c, services, api);
  // One controller ends every choice: the first to fail cancels its siblings, and a client that goes away
  // (node-server aborts the request's signal when the connection closes early) or a shutdown cancels all.
  const cancel = new AbortController();
  const signal = AbortSignal.any([cancel.signal, c.req.raw.signal, services.shutdownSignal]);
  return generation.fields.stream
    ? stream(services, generation, cancel, signal)
    : c.json(await complete(services, generation, cancel, signal));
}

async function prepare(c: Context<GatewayEnv>, services: GatewayServices, api: GenerationApi): Promise<Generation> {
  const body = requireJsonObject(await c.req.json());
  rejectUnsupportedFields(body, api);
  const modelName = parseModel(body);
  const fields = parseGenerationFields(body, api);
  const { tokenizer, engine } = services;
  const promptIds =
    api === 'chat' ? chatPromptIds(services.formatChat, tokenizer, body.messages) : rawPromptIds(tokenizer, body.prompt, 'prompt');
  const model = await services.models.resolve(c.get('principal'), modelName);
  return {
    api,
    fields,
    inference: {
      principal: c.get('principal'),
      model,
      operation: api === 'chat' ? 'chat' : 'text_completion',
      responseId: `${api === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replaceAll('-', '')}`,
      promptIds,
      promptParam: api === 'chat' ? 'messages' : 'prompt',
      sampling: fields.sampling,
      maxTokens: resolveMaxTokens(fields.maxTokens, api, promptPositions(model, promptIds), engine.info.maxPositions),
      stop: fields.stop,
      traceContext: { traceparent: c.req.header('traceparent'), tracestate: c.req.header('tracestate') },
    },
    created: Math.floor(Date.now() / 1000),
    // Identifies the weights that answered: it changes exactly when the base model does.
    systemFingerprint: `fp_${engine.info.checksum.slice(0, 12)}`,
  };
}

/**
 * Runs choice `index`. A generation is cut short only by shutdown or by the client leaving; either way it fails
 * rather than returning a truncated answer, and only after shutdown is anyone still there to read why.
 */
async function runChoice(
  services: GatewayServices,
  generation: Generation,
  index: number,
  signal: AbortSignal,
  onDelta?: InferenceRequest['onDelta'],
): Promise<TextGenerationResult> {
  const { inference } = generation;
  const result = await runInference(services, { ...inference, sampling: choiceSampling(inference.sampling, index), signal, onDelta });
  if (result.finishReason === 'cancelled') throw shuttingDown();
  return result;
}

/** Every choice at once; the first failure cancels the others and becomes the response. */
async function runAll<T>(count: number, cancel: AbortController, run: (index: number) => Promise<T>): Promise<T[]> {
  try {
    return await Promise.all(Array.from({ length: count }, (_, index) => run(index)));
  } catch (error) {
    cancel.abort();
    throw error;
  }
}

async function complete(services: GatewayServices, generation: Generation, cancel: AbortController, signal: AbortSignal) {
  const { api, fields, inference } = generation;
  const results = await runAll(fields.n, cancel, (index) => runChoice(services, generation, index, signal));
  const choices = results.map((result, index) => {
    const tokens = fields.logprobs === undefined ? null : new VisibleTokens(services.tokenizer).advance(result.text, result.tokens);
    if (api === 'chat') {
      const logprobs = tokens && chatLogprobs(services.tokenizer, tokens);
      return { index, message: { role: 'assistant', content: result.text, refusal: null }, logprobs, finish_reason: result.finishReason };
    }
    return { index, text: result.text, logprobs: tokens && completionLogprobs(services.tokenizer, tokens), finish_reason: result.finishReason };
  });
  return {
    id: inference.responseId,
    object: api === 'chat' ? 'chat.completion' : 'text_completion',
    created: generation.created,
    model: inference.model.id,
    choices,
    usage: usage(inference.promptIds.length, results),
    system_fingerprint: generation.systemFingerprint,
  };
}

/**
 * Streams the choices as chunks. The response is held back until the first token (or the first failure), so that
 * a request refused before generating anything — rate limits, the context check, an adapter that fails to load —
 * gets its own status code; failures after that arrive as an error event.
 */
async function stream(services: GatewayServices, generation: Generation, cancel: AbortController, signal: AbortSignal): Promise<Response> {
  const { api, fields, inference } = generation;
  const sse = new SseStream(() => cancel.abort());
  const chunk = (choices: unknown[], extra: object = {}) =>
    sse.send({
      id: inference.responseId,
      object: api === 'chat' ? 'chat.completion.chunk' : 'text_completion',
      created: generation.created,
      model: inference.model.id,
      system_fingerprint: generation.systemFingerprint,
      choices,
      ...(fields.includeUsage ? { usage: null } : {}),
      ...extra,
    });
  const deltaChoice = (index: number, text: string, tokens: VisibleToken[] | null) =>
    api === 'chat'
      ? { index, delta: { content: text }, logprobs: tokens && chatLogprobs(services.tokenizer, tokens), finish_reason: null }
      : { index, text, logprobs: tokens && completionLogprobs(services.tokenizer, tokens), finish_reason: null };
  const finishChoice = (index: number, result: TextGenerationResult) =>
    api === 'chat'
      ? { index, delta: {}, logprobs: null, finish_reason: result.finishReason }
      : { index, text: '', logprobs: null, finish_reason: result.finishReason };

  if (api === 'chat') {
    for (let index = 0; index < fields.n; index++) {
      chunk([{ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]);
    }
  }
  let firstToken!: () => void;
  const started = new Promise<void>((resolve) => (firstToken = resolve));
  const all = runAll(fields.n, cancel, (index) => {
    const visible = new VisibleTokens(services.tokenizer);
    const onDelta = (text: string, tokens: TokenEvent[]) => {
      firstToken();
      const released = visible.advance(text, tokens);
      if (text !== '') chunk([deltaChoice(index, text, fields.logprobs === undefined ? null : released)]);
    };
    return runChoice(services, generation, index, signal, onDelta).then((result) => {
      chunk([finishChoice(index, result)]);
      return result;
    });
  });

  try {
    await Promise.race([started, all]);
  } catch (error) {
    sse.discard();
    throw error;
  }
  all.then(
    (results) => {
      if (fields.includeUsage) chunk([], { usage: usage(inference.promptIds.length, results) });
      sse.done();
    },
    (error: unknown) => sse.fail(asApiError(error)),
  );
  return sse.response;
}

/** The prompt is counted once however many choices share it, as OpenAI counts it. */
function usage(promptTokens: number, results: TextGenerationResult[]) {
  const completionTokens = results.reduce((sum, result) => sum + result.completionTokens, 0);
  return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
}

// ---- logprobs ----

/** A generated token with the offset of its text in the choice's output. */
interface VisibleToken {
  event: TokenEvent;
  textOffset: number;
}

/**
 * Decides which tokens a response reports: those whose text begins within the text the client was sent. Tokens
 * hidden by a stop string and the end-of-sequence token (which has no text) are not reported, and a streamed token
 * is reported with the chunk that carries the start of its text.
 */
class VisibleTokens {
  readonly #decoder: StreamDecoder;
  readonly #waiting: VisibleToken[] = [];
  #decodedLength = 0;
  #sentLength = 0;

  constructor(tokenizer: Tokenizer) {
    // Decoded exactly as TextGenerator decodes, so offsets match the text it produced.
    this.#decoder = new StreamDecoder(tokenizer, { continuesPrompt: true });
  }

  /** Takes newly generated tokens and newly sent text; returns the tokens whose text has now begun to be sent. */
  advance(text: string, tokens: readonly TokenEvent[]): VisibleToken[] {
    for (const event of tokens) {
      this.#waiting.push({ event, textOffset: this.#decodedLength });
      this.#decodedLength += this.#decoder.push(event.token).length;
    }
    this.#sentLength += text.length;
    let count = 0;
    while (count < this.#waiting.length && this.#waiting[count].textOffset < this.#sentLength) count++;
    return this.#waiting.splice(0, count);
  }
}

function tokenLogprob(tokenizer: Tokenizer, id: number, logprob: number | undefined) {
  return { token: tokenizer.tokenText(id), logprob: logprob ?? null, bytes: Array.from(tokenizer.tokenBytes(id)) };
}

function chatLogprobs(tokenizer: Tokenizer, tokens: VisibleToken[]) {
  return {
    content: tokens.map(({ event }) => ({
      ...tokenLogprob(tokenizer, event.token, event.logprob),
      top_logprobs: (event.topLogprobs ?? []).map((top) => tokenLogprob(tokenizer, top.id, top.logprob)),
    })),
    refusal: null,
  };
}

/** The legacy shape: parallel arrays, with alternatives as `{token text: logprob}` maps. */
function completionLogprobs(tokenizer: Tokenizer, tokens: VisibleToken[]) {
  return {
    tokens: tokens.map(({ event }) => tokenizer.tokenText(event.token)),
    token_logprobs: tokens.map(({ event }) => event.logprob ?? null),
    top_logprobs: tokens.map(({ event }) =>
      Object.fromEntries((event.topLogprobs ?? []).map((top) => [tokenizer.tokenText(top.id), top.logprob])),
    ),
    text_offset: tokens.map(({ textOffset }) => textOffset),
  };
}

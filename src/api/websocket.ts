/**
 * The WebSocket streaming API: one socket carries many generations at once, each streamed as events tagged with
 * its response id.
 *
 * PROTOCOL
 *
 * Connect to `ws://<host>:<port>/v1/ws`. Any other path is answered 404 and the connection is closed.
 *
 * Authentication happens in the handshake, before the upgrade:
 *   - `Authorization: Bearer <key>` (non-browser clients); when present, it is the only credential read; or
 *   - the subprotocol `openai-insecure-api-key.<key>` (browsers cannot set headers on a WebSocket), offered together
 *     with at least one other subprotocol name of the client's choosing (e.g. `realtime`). The server selects the
 *     first offered subprotocol that is not the key, so the key is never echoed back; browsers refuse a handshake
 *     whose response selects none of the offered subprotocols.
 * A missing or unknown key is answered `401` and a server that is shutting down answers `503`, both with an OpenAI
 * error body, and the connection is closed without upgrading.
 *
 * Messages are JSON text frames of at most WS_MAX_MESSAGE_BYTES (default MAX_BODY_BYTES; a larger one closes the
 * socket with 1009, message too big). Every server event has a unique `event_id`.
 *
 * Message rate: each socket may send WS_MESSAGES_PER_MINUTE messages per minute (a bucket holding one minute's
 * messages, refilled continuously, so short bursts are fine). A message beyond it is dropped unread (no
 * response.created, nothing runs) and answered with an `error` event, code `rate_limit_exceeded`, type `requests`,
 * with `retry_after_seconds` beside it; the socket stays open.
 *
 * Client events:
 *   {"type": "response.create", "event_id"?: "<client id>", "response": {
 *      "model": "<base>" | "<base>+<tenant>/<adapter>[@<version>]",
 *      "messages": [...]      chat messages, rendered with the model's chat template, as in /v1/chat/completions; or
 *      "input": "text"        a raw prompt (or an array of token ids), continued as is, as `prompt` in /v1/completions;
 *      and the generation fields of those APIs, checked the same way: max_tokens (chat: max_completion_tokens too),
 *      temperature, top_p, top_k, min_p, presence_penalty, frequency_penalty, repetition_penalty, seed, stop, user;
 *      and max_output_tokens, the Responses API's name for the limit, which wins over the others.
 *      Not available here: n (send several response.create), logprobs/top_logprobs, stream/stream_options (every
 *      response streams). Without max_tokens, chat generates until the model stops or the context is full and
 *      `input` gets 16 tokens, as over HTTP.
 *   }}
 *   {"type": "response.cancel", "event_id"?: "<client id>", "response_id": "resp_..."}
 *
 * Server events, for every `response.create` whose `response` is an object, in this order:
 *   response.created              {"response": {"id", "status": "in_progress", "model"}, "client_event_id"?}
 *                                 sent at once, in the order of the response.create events, so a client can pair
 *                                 them even without an event_id (which is echoed as client_event_id when given)
 *   response.output_text.delta    {"response_id", "delta": "<text>"}, zero or more; deltas of different responses
 *                                 interleave
 *   exactly one terminal event, each with "response": {"id", "status", "model", "usage":
 *   {"input_tokens", "output_tokens", "total_tokens"}, ...}:
 *     response.completed          the model stopped or a stop sequence was generated; "output_text" is the whole text
 *     response.incomplete         max_tokens was reached; "output_text", "incomplete_details": {"reason": "max_output_tokens"}
 *     response.cancelled          after response.cancel, when the server shuts down, or on a socket that closed
 *                                 (then nobody receives it)
 *     response.failed             "error": {"message", "type", "param", "code"} as OpenAI's HTTP API answers it, with
 *                                 "status_code" (the HTTP status the same failure gets over HTTP) and, when waiting
 *                                 helps, "retry_after_seconds". Invalid fields (400), unknown or invisible models
 *                                 (404 model_not_found), tenant limits (429), a full engine queue or shutdown (503),
 *                                 a response beyond WS_MAX_RESPONSES_PER_SOCKET (default 16) in progress on one
 *                                 socket (429 rate_limit_exceeded), and slow
 *                                 consumers (429 slow_consumer, below).
 *   `usage` counts what the engine computed: all zeros for a response refused before it reached the engine.
 *   error                         {"error": {"message", "type", "param", "code", "event_id"?}} (event_id: the
 *                                 offending client event's, when it had one) for a client message
 *                                 that belongs to no response: not JSON, a binary frame, an unknown type, a
 *                                 response.create without a `response` object, a response.cancel naming no response
 *                                 in progress on this socket (perhaps one that already ended). The socket stays open.
 *
 * Every generation runs through runInference with its own AbortController, so response.cancel, the socket closing,
 * and server shutdown all free its engine row within one step. At shutdown, once the grace period for in-flight work
 * has passed, the server cancels what is still running, sends the terminal events, and closes every socket with 1001
 * (going away).
 *
 * Liveness: the server pings every socket every 30 s and terminates one that has not answered the previous ping.
 *
 * Slow consumers: a client must read its events. When more than 1 MiB of events wait to be written to a socket,
 * every response in progress on it ends with response.failed (code `slow_consumer`) instead of its next delta, and
 * the server stops reading that socket's messages until the backlog has been written; the socket stays open. So a
 * client that stops reading holds at most that backlog plus a few terminal events in the server's memory. A
 * client that does not read for longer than the ping interval does not answer pings either, and is terminated.
 */
import { randomUUID } from 'node:crypto';
import { STATUS_CODES, type IncomingMessage, type Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { isApiKeySubprotocol, type Principal } from '../gateway/auth.ts';
import {
  ApiError,
  asApiError,
  invalidApiKey,
  invalidRequest,
  notFound,
  rateLimited,
  shuttingDown,
  toResponseBody,
} from '../gateway/errors.ts';
import { runInference } from '../gateway/inference.ts';
import { promptPositions } from '../gateway/model-resolver.ts';
import { TokenBucket, type Clock } from '../gateway/tenant-limits.ts';
import type { GatewayServices } from '../gateway/services.ts';
import type { TextGenerationResult } from '../serving/text-generation.ts';
import { chatPromptIds, rawPromptIds } from './prompt.ts';
import {
  parseGenerationFields,
  parseModel,
  rejectUnsupportedFields,
  resolveMaxTokens,
  type GenerationApi,
  type GenerationFields,
  type JsonObject,
} from './request-fields.ts';
import { isJsonObject } from '../storage/json-files.ts';

export const WEBSOCKET_PATH = '/v1/ws';

export interface WebSocketApiOptions {
  /** How often each socket is pinged; one that has not answered the previous ping by the next is terminated. */
  pingIntervalMs?: number;
  /** Bytes of events waiting to be written to a socket beyond which its responses fail as `slow_consumer`. */
  maxBufferedBytes?: number;
  /** Responses in progress at once on one socket; each holds an engine row, so one socket cannot take them all. */
  maxResponsesPerSocket?: number;
  /** Largest client message; a larger one closes the socket with 1009. Default MAX_BODY_BYTES. */
  maxMessageBytes?: number;
  /** Client messages one socket may send per minute; the rest are dropped with an error event. */
  messagesPerMinute?: number;
  /** The rate limit's clock in milliseconds; injectable so tests can move time without sleeping. */
  now?: Clock;
}

const DEFAULT_OPTIONS: Omit<Required<WebSocketApiOptions>, 'maxMessageBytes'> = {
  pingIntervalMs: 30_000,
  maxBufferedBytes: 1024 * 1024,
  maxResponsesPerSocket: 16,
  messagesPerMinute: 600,
  now: () => performance.now(),
};

const CLOSE_GOING_AWAY = 1001;
/** How long a socket closed at shutdown may take to answer the close frame before it is cut off. */
const CLOSE_HANDSHAKE_TIMEOUT_MS = 1000;
/** Seconds a client refused during shutdown should wait; by then a replacement instance is usually up. */
/** Fields of the HTTP APIs that have no meaning over this protocol, with what to do instead. */
const FIELDS_NOT_OVER_WEBSOCKET: Readonly<Record<string, string>> = {
  prompt: "send the prompt as 'input'",
  n: 'each response.create generates one output; send several to get several',
  logprobs: 'log probabilities are not streamed over the WebSocket API; use the HTTP API',
  top_logprobs: 'log probabilities are not streamed over the WebSocket API; use the HTTP API',
  stream: 'every WebSocket response streams',
  stream_options: 'every WebSocket response streams and reports its usage in its terminal event',
};

export function attachWebSocketApi(
  server: Server,
  services: GatewayServices,
  options: WebSocketApiOptions = {},
): { close(): Promise<void> } {
  const settings = { ...DEFAULT_OPTIONS, maxMessageBytes: services.settings.maxBodyBytes, ...options };
  const connections = new Set<Connection>();
  const webSockets = new WebSocketServer({
    noServer: true,
    maxPayload: settings.maxMessageBytes,
    // Never the key subprotocol: selecting it would echo the key in the handshake response.
    handleProtocols: (protocols) => [...protocols].find((protocol) => !isApiKeySubprotocol(protocol)) ?? false,
  });

  const onUpgrade = (request: IncomingMessage, socket: Duplex, head: Buffer) => {
    const path = new URL(request.url ?? '/', 'http://localhost').pathname;
    if (path !== WEBSOCKET_PATH) {
      refuseUpgrade(socket, notFound(`No WebSocket endpoint at ${path}; connect to ${WEBSOCKET_PATH}.`, null, 'unknown_route'));
      return;
    }
    const principal = services.authenticator.authenticateWebSocket({
      authorization: request.headers.authorization,
      protocols: request.headers['sec-websocket-protocol'],
    });
    if (!principal) {
      refuseUpgrade(
        socket,
        invalidApiKey(
          'Missing or invalid API key. Send "Authorization: Bearer <key>", or offer the subprotocol ' +
            '"openai-insecure-api-key.<key>" together with another subprotocol for the server to select.',
        ),
      );
      return;
    }
    if (services.draining) {
      refuseUpgrade(socket, shuttingDown('The server is shutting down; reconnect to another instance.'));
      return;
    }
    webSockets.handleUpgrade(request, socket, head, (webSocket) => {
      const traceContext = { traceparent: headerValue(request.headers.traceparent), tracestate: headerValue(request.headers.tracestate) };
      const connection = new Connection(webSocket, socket, principal, traceContext, services, settings);
      connections.add(connection);
      webSocket.once('close', () => connections.delete(connection));
    });
  };
  server.on('upgrade', onUpgrade);

  const heartbeat = setInterval(() => {
    for (const connection of connections) connection.checkAlive();
  }, settings.pingIntervalMs);
  heartbeat.unref();

  const cancelEverything = () => {
    for (const connection of connections) connection.cancelAll();
  };
  services.shutdownSignal.addEventListener('abort', cancelEverything, { once: true });

  return {
    close: async () => {
      server.off('upgrade', onUpgrade);
      clearInterval(heartbeat);
      services.shutdownSignal.removeEventListener('abort', cancelEverything);
      await Promise.all([...connections].map((connection) => connection.closeGoingAway()));
      webSockets.close();
    },
  };
}

function headerValue(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** Answers a handshake with an HTTP error in OpenAI's shape and closes the connection. */
function refuseUpgrade(socket: Duplex, error: ApiError): void {
  const body = JSON.stringify(toResponseBody(error));
  const headers: Record<string, string | number> = {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    connection: 'close',
    ...error.headers,
  };
  const head = [`HTTP/1.1 ${error.status} ${STATUS_CODES[error.status]}`, ...Object.entries(headers).map(([name, value]) => `${name}: ${value}`)];
  // The HTTP server stopped watching this socket when it handed over the upgrade.
  socket.on('error', () => socket.destroy());
  socket.once('finish', () => socket.destroy());
  socket.end(`${head.join('\r\n')}\r\n\r\n${body}`);
}

/** A response in progress on a socket. */
interface LiveResponse {
  id: string;
  model: string;
  controller: AbortController;
  /** Set before aborting when the response must end as failed rather than cancelled. */
  failure?: ApiError;
  /** What the engine has computed so far: nothing for a response refused before it reached the engine. */
  usage: { inputTokens: number; outputTokens: number };
  /** Settles once the terminal event was sent. */
  done: Promise<void>;
}

/** The validated content of a response.create, ready for runInference. */
interface ParsedCreate {
  api: GenerationApi;
  model: string;
  promptIds: number[];
  fields: GenerationFields;
}

class Connection {
  readonly #responses = new Map<string, LiveResponse>();
  readonly #messages: TokenBucket;
  #answeredPing = true;
  #readingPaused = false;

  constructor(
    private readonly webSocket: WebSocket,
    /** The socket the WebSocket writes to: its 'drain' says when a backlog has been written. */
    private readonly transport: Duplex,
    private readonly principal: Principal,
    /** The handshake's W3C trace context: every generation on the socket joins that trace. */
    private readonly traceContext: { traceparent?: string; tracestate?: string },
    private readonly services: GatewayServices,
    private readonly settings: Required<WebSocketApiOptions>,
  ) {
    this.#messages = new TokenBucket(settings.messagesPerMinute, settings.now);
    webSocket.on('message', (data, isBinary) => {
      if (this.#withinRate()) this.#receive(data, isBinary);
      this.#throttleReading();
    });
    webSocket.on('pong', () => (this.#answeredPing = true));
    webSocket.on('close', () => this.cancelAll());
    // A socket error is always followed by 'close', which cancels the socket's work.
    webSocket.on('error', () => {});
  }

  checkAlive(): void {
    if (!this.#answeredPing) {
      this.webSocket.terminate();
      return;
    }
    this.#answeredPing = false;
    this.webSocket.ping();
  }

  cancelAll(): void {
    for (const response of this.#responses.values()) response.controller.abort();
  }

  /** Cancels the socket's responses, sends their terminal events, then closes the socket as going away. */
  async closeGoingAway(): Promise<void> {
    this.cancelAll();
    await Promise.all([...this.#responses.values()].map((response) => response.done));
    if (this.webSocket.readyState === WebSocket.CLOSED) return;
    const closed = new Promise<void>((resolve) => this.webSocket.once('close', () => resolve()));
    this.webSocket.close(CLOSE_GOING_AWAY, 'server shutting down');
    // A client that does not answer the close frame (or does not read at all) is cut off.
    const cutOff = setTimeout(() => this.webSocket.terminate(), CLOSE_HANDSHAKE_TIMEOUT_MS);
    await closed;
    clearTimeout(cutOff);
  }

  #send(event: JsonObject): void {
    if (this.webSocket.readyState !== WebSocket.OPEN) return;
    this.webSocket.send(JSON.stringify({ event_id: `event_${randomUUID().replaceAll('-', '')}`, ...event }));
  }

  #sendError(error: ApiError, clientEventId: string | undefined): void {
    const body = toResponseBody(error).error;
    this.#send({ type: 'error', error: clientEventId === undefined ? body : { ...body, event_id: clientEventId } });
  }

  /** Takes one message from the socket's budget, or answers that the socket sends too fast. */
  #withinRate(): boolean {
    const refusal = this.#messages.tryTake(1);
    if (!refusal) return true;
    const limit = this.settings.messagesPerMinute;
    const error = new ApiError(
      429,
      'requests',
      `This socket sent more than ${limit} messages per minute, the most one socket may send; the message was dropped. ` +
        `Retry in ${refusal.retryAfterSeconds} s.`,
      { code: 'rate_limit_exceeded' },
    );
    this.#send({ type: 'error', error: toResponseBody(error).error, retry_after_seconds: refusal.retryAfterSeconds ?? 1 });
    return false;
  }

  #receive(data: RawData, isBinary: boolean): void {
    if (isBinary) {
      this.#sendError(invalidRequest('Send events as JSON text frames, not binary frames.', null, 'invalid_json'), undefined);
      return;
    }
    let message: unknown;
    try {
      message = JSON.parse(data.toString());
    } catch {
      // The parser's message quotes the frame, which may hold a prompt; it is not echoed.
      this.#sendError(invalidRequest('The message is not valid JSON.', null, 'invalid_json'), undefined);
      return;
    }
    if (!isJsonObject(message)) {
      this.#sendError(invalidRequest('Each message must be a JSON object with a "type".', null, 'invalid_json'), undefined);
      return;
    }
    const event = message as JsonObject;
    const clientEventId = typeof event.event_id === 'string' ? event.event_id : undefined;
    if (event.type === 'response.create') {
      if (!isJsonObject(event.response)) {
        this.#sendError(invalidRequest('response.create needs a "response" object with the model and the prompt.', 'response'), clientEventId);
        return;
      }
      this.#create(event.response as JsonObject, clientEventId);
    } else if (event.type === 'response.cancel') {
      const response = typeof event.response_id === 'string' ? this.#responses.get(event.response_id) : undefined;
      if (!response) {
        const message = `No response ${JSON.stringify(event.response_id)} is in progress on this socket; it may have ended already.`;
        this.#sendError(notFound(message, 'response_id', 'response_not_found'), clientEventId);
        return;
      }
      response.controller.abort();
    } else {
      const message = `Unknown event type ${JSON.stringify(event.type)}; send "response.create" or "response.cancel".`;
      this.#sendError(invalidRequest(message, 'type', 'unknown_event_type'), clientEventId);
    }
  }

  #create(body: JsonObject, clientEventId: string | undefined): void {
    const id = `resp_${randomUUID().replaceAll('-', '')}`;
    const model = typeof body.model === 'string' ? body.model : '';
    this.#send({
      type: 'response.created',
      response: { id, status: 'in_progress', model },
      ...(clientEventId === undefined ? {} : { client_event_id: clientEventId }),
    });
    const response: LiveResponse = {
      id,
      model,
      controller: new AbortController(),
      usage: { inputTokens: 0, outputTokens: 0 },
      done: Promise.resolve(),
    };
    if (this.services.draining) {
      this.#finishFailed(response, shuttingDown());
    } else if (this.#responses.size >= this.settings.maxResponsesPerSocket) {
      const limit = this.settings.maxResponsesPerSocket;
      const message = `This socket already has ${limit} responses in progress, the most one socket may have; wait for one to end.`;
      this.#finishFailed(response, rateLimited({ limit: 'concurrency', message, retryable: true }));
    } else {
      this.#responses.set(id, response);
      response.done = this.#run(response, body).finally(() => this.#responses.delete(id));
    }
  }

  async #run(response: LiveResponse, body: JsonObject): Promise<void> {
    let result: TextGenerationResult;
    try {
      const request = this.#parse(body);
      const model = await this.services.models.resolve(this.principal, request.model);
      const { signal } = response.controller;
      // runInference would report a generation cancelled before it reached the engine as an engine failure.
      if (signal.aborted) return this.#finishCancelledOrFailed(response);
      result = await runInference(this.services, {
        principal: this.principal,
        model,
        operation: request.api === 'chat' ? 'chat' : 'text_completion',
        responseId: response.id,
        promptIds: request.promptIds,
        promptParam: request.api === 'chat' ? 'messages' : 'input',
        sampling: request.fields.sampling,
        maxTokens: resolveMaxTokens(request.fields.maxTokens, request.api, promptPositions(model, request.promptIds), this.services.engine.info.maxPositions),
        stop: request.fields.stop,
        traceContext: this.traceContext,
        signal,
        onDelta: (text, tokens) => {
          response.usage = { inputTokens: request.promptIds.length, outputTokens: response.usage.outputTokens + tokens.length };
          this.#delta(response, text);
        },
      });
    } catch (error) {
      if (response.controller.signal.aborted) return this.#finishCancelledOrFailed(response);
      const apiError = asApiError(error);
      if (apiError.status === 500) {
        this.services.logger.error('unexpected error in a WebSocket response', { response: response.id, error: describeCause(apiError.cause ?? error) });
      }
      return this.#finishFailed(response, apiError);
    }
    response.usage = { inputTokens: result.promptTokens, outputTokens: result.completionTokens };
    if (result.finishReason === 'cancelled') return this.#finishCancelledOrFailed(response);
    const finished = result.finishReason === 'length' ? 'incomplete' : 'completed';
    this.#sendTerminal(response, `response.${finished}`, {
      status: finished,
      output_text: result.text,
      ...(finished === 'incomplete' ? { incomplete_details: { reason: 'max_output_tokens' } } : {}),
    });
  }

  #parse(body: JsonObject): ParsedCreate {
    for (const [field, instead] of Object.entries(FIELDS_NOT_OVER_WEBSOCKET)) {
      if (body[field] !== undefined && body[field] !== null) {
        throw invalidRequest(`'${field}' is not available over the WebSocket API: ${instead}.`, field, 'unsupported_parameter');
      }
    }
    const hasMessages = body.messages !== undefined && body.messages !== null;
    const hasInput = body.input !== undefined && body.input !== null;
    if (hasMessages === hasInput) {
      throw invalidRequest("Send exactly one of 'messages' (a chat) or 'input' (a raw prompt).", hasMessages ? 'input' : 'messages');
    }
    const api: GenerationApi = hasMessages ? 'chat' : 'completions';
    rejectUnsupportedFields(body, api, ['input', 'max_output_tokens']);
    const model = parseModel(body);
    const fields = parseGenerationFields(body, api);
    const { formatChat, tokenizer } = this.services;
    const promptIds = hasMessages ? chatPromptIds(formatChat, tokenizer, body.messages) : rawPromptIds(tokenizer, body.input, 'input');
    return { api, model, promptIds, fields };
  }

  #delta(response: LiveResponse, text: string): void {
    // Tokens of the engine step that was under way when the response was aborted still arrive; they are dropped.
    if (text === '' || response.controller.signal.aborted) return;
    if (this.webSocket.bufferedAmount > this.settings.maxBufferedBytes) {
      this.#shedSlowConsumer();
      return;
    }
    this.#send({ type: 'response.output_text.delta', response_id: response.id, delta: text });
  }

  /** The client reads slower than its responses generate: end them all rather than queue without bound. */
  #shedSlowConsumer(): void {
    const limit = this.settings.maxBufferedBytes;
    const failure = new ApiError(
      429,
      'requests',
      `More than ${limit} bytes of events were waiting for this client to read them, so its responses were stopped. ` +
        'Read events as they arrive, or run fewer responses at once.',
      { code: 'slow_consumer' },
    );
    for (const response of this.#responses.values()) {
      response.failure ??= failure;
      response.controller.abort();
    }
    this.#throttleReading();
  }

  /**
   * While a backlog waits to be written, the client's messages are left unread: each would add events to the
   * backlog, so a client that sends but never reads could otherwise grow it without bound.
   */
  #throttleReading(): void {
    if (this.#readingPaused || this.webSocket.bufferedAmount <= this.settings.maxBufferedBytes) return;
    // 'drain' comes only after a write the stream refused; below the stream's own mark nothing waits for long.
    if (!this.transport.writableNeedDrain) return;
    this.#readingPaused = true;
    this.webSocket.pause();
    this.transport.once('drain', () => {
      this.#readingPaused = false;
      this.webSocket.resume();
    });
  }

  #finishCancelledOrFailed(response: LiveResponse): void {
    if (response.failure) this.#finishFailed(response, response.failure);
    else this.#sendTerminal(response, 'response.cancelled', { status: 'cancelled' });
  }

  #finishFailed(response: LiveResponse, error: ApiError): void {
    const retryAfter = Number(error.headers['retry-after']);
    this.#sendTerminal(response, 'response.failed', {
      status: 'failed',
      error: toResponseBody(error).error,
      status_code: error.status,
      ...(Number.isFinite(retryAfter) ? { retry_after_seconds: retryAfter } : {}),
    });
  }

  #sendTerminal(response: LiveResponse, type: string, fields: JsonObject): void {
    const { inputTokens, outputTokens } = response.usage;
    const usage = { input_tokens: inputTokens, output_tokens: outputTokens, total_tokens: inputTokens + outputTokens };
    this.#send({ type, response: { id: response.id, model: response.model, ...fields, usage } });
  }
}

function describeCause(cause: unknown): string {
  return cause instanceof Error ? (cause.stack ?? cause.message) : String(cause);
}

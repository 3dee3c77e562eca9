/**
 * One client of the gateway's WebSocket API (src/api/websocket.ts) running one response at a time, optionally
 * cancelling it after its first delta. Events are routed by the client event id, which the server echoes in
 * response.created: the routing is set up before the request is sent, so a terminal event that arrives in the same
 * read as response.created (a refusal, a fast answer) is never missed.
 */
import { WebSocket } from 'ws';

export type Terminal = 'completed' | 'incomplete' | 'cancelled' | 'failed';

export interface ResponseOutcome {
  /** The terminal event's kind; null when none came (see `failure`). */
  terminal: Terminal | null;
  /** `status_code` of response.failed (the status the same failure gets over HTTP). */
  statusCode: number | null;
  errorCode: string | null;
  /** When the first delta or the terminal event arrived (performance.now()): the model was resolved before that. */
  answeredAt: number;
  /** The deltas, concatenated. */
  streamedText: string;
  /** `output_text` of the terminal event. */
  outputText: string | null;
  /** A response.cancel was sent for it. */
  cancelSent: boolean;
  failure: string | null;
}

interface Waiter {
  outcome: ResponseOutcome;
  cancelAfterFirstDelta: () => boolean;
  responseId?: string;
  /** Ends the wait: with null once the terminal event arrived, else with why none will. */
  finish: (failure: string | null) => void;
}

export class WebSocketClient {
  readonly #socket: WebSocket;
  /** Responses in progress by client event id, and the same by response id once response.created named it. */
  readonly #byEventId = new Map<string, Waiter>();
  readonly #byResponseId = new Map<string, Waiter>();
  #sequence = 0;
  /** Events the client could not route: kept for the report. */
  readonly unexpected: string[] = [];

  private constructor(socket: WebSocket) {
    this.#socket = socket;
    socket.on('message', (data) => this.#receive(JSON.parse(data.toString()) as Record<string, any>));
    socket.on('close', (code) => {
      for (const waiter of [...this.#byEventId.values()]) waiter.finish(`the socket closed (${code}) before the terminal event`);
    });
  }

  static async connect(url: string, key: string, timeoutMs: number): Promise<WebSocketClient> {
    const socket = new WebSocket(`${url.replace(/^http/, 'ws')}/v1/ws`, { headers: { authorization: `Bearer ${key}` }, handshakeTimeout: timeoutMs });
    await new Promise((resolve, reject) => socket.once('open', resolve).once('error', reject));
    return new WebSocketClient(socket);
  }

  /** Sends response.create and resolves once its terminal event arrived (or none came in time). */
  run(response: object, options: { cancelAfterFirstDelta?: () => boolean; timeoutMs: number }): Promise<ResponseOutcome> {
    const eventId = `create-${++this.#sequence}`;
    const outcome: ResponseOutcome = {
      terminal: null,
      statusCode: null,
      errorCode: null,
      answeredAt: 0,
      streamedText: '',
      outputText: null,
      cancelSent: false,
      failure: null,
    };
    return new Promise((resolve) => {
      const waiter: Waiter = { outcome, cancelAfterFirstDelta: options.cancelAfterFirstDelta ?? (() => false), finish: (failure) => done(failure) };
      const done = (failure: string | null) => {
        clearTimeout(timer);
        outcome.failure ??= failure;
        this.#byEventId.delete(eventId);
        if (waiter.responseId) this.#byResponseId.delete(waiter.responseId);
        resolve(outcome);
      };
      const timer = setTimeout(() => done(`no terminal event within ${options.timeoutMs} ms`), options.timeoutMs);
      this.#byEventId.set(eventId, waiter);
      this.#socket.send(JSON.stringify({ type: 'response.create', event_id: eventId, response }), (error) => {
        if (error) done(`send: ${error.message}`);
      });
    });
  }

  async close(): Promise<void> {
    if (this.#socket.readyState === WebSocket.CLOSED) return;
    const closed = new Promise((resolve) => this.#socket.once('close', resolve));
    this.#socket.close();
    await closed;
  }

  #receive(event: Record<string, any>): void {
    if (event.type === 'response.created') {
      const waiter = this.#byEventId.get(event.client_event_id);
      if (!waiter) return void this.unexpected.push(`response.created for unknown ${event.client_event_id}`);
      waiter.responseId = event.response.id;
      this.#byResponseId.set(event.response.id, waiter);
      return;
    }
    if (event.type === 'error') {
      // A cancel that crossed the response's end is answered "not in progress": expected, nothing to do.
      if (event.error?.code !== 'response_not_found') this.unexpected.push(`error event: ${JSON.stringify(event.error)}`);
      return;
    }
    const responseId: string | undefined = event.response_id ?? event.response?.id;
    const waiter = responseId === undefined ? undefined : this.#byResponseId.get(responseId);
    if (!waiter) return void this.unexpected.push(`${event.type} for unknown ${responseId}`);
    const { outcome } = waiter;
    if (event.type === 'response.output_text.delta') {
      if (outcome.answeredAt === 0) outcome.answeredAt = performance.now();
      outcome.streamedText += event.delta;
      if (outcome.streamedText === event.delta && waiter.cancelAfterFirstDelta()) {
        outcome.cancelSent = true;
        this.#socket.send(JSON.stringify({ type: 'response.cancel', event_id: `cancel-${responseId}`, response_id: responseId }));
      }
      return;
    }
    const terminal = /^response\.(completed|incomplete|cancelled|failed)$/.exec(event.type)?.[1] as Terminal | undefined;
    if (!terminal) return void this.unexpected.push(`unknown event ${event.type}`);
    if (outcome.answeredAt === 0) outcome.answeredAt = performance.now();
    outcome.terminal = terminal;
    outcome.outputText = event.response.output_text ?? null;
    outcome.statusCode = event.response.status_code ?? null;
    outcome.errorCode = event.response.error?.code ?? null;
    waiter.finish(null);
  }
}

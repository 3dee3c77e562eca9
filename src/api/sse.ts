/**
 * A server-sent event stream of JSON events ending in `data: [DONE]`, as OpenAI streams responses. Events are queued
 * in order as they are sent, so concurrent producers (the choices of an n > 1 request) never interleave within an
 * event, and nothing is written after the stream ended or the client went away.
 */
import { toResponseBody, type ApiError } from '../gateway/errors.ts';

const encoder = new TextEncoder();

export class SseStream {
  readonly response: Response;
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  #open = true;

  /** `onCancel` runs when the client disconnects, so the work producing events can stop. */
  constructor(onCancel: () => void) {
    const body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.#controller = controller;
      },
      cancel: () => {
        this.#open = false;
        onCancel();
      },
    });
    this.response = new Response(body, {
      status: 200,
      headers: {
        'content-type': 'text/event-stream',
        'cache-control': 'no-cache',
        // Reverse proxies such as nginx otherwise buffer the stream and deliver tokens in bursts.
        'x-accel-buffering': 'no',
      },
    });
  }

  send(event: unknown): void {
    this.#write(`data: ${JSON.stringify(event)}\n\n`);
  }

  /** Ends a stream that completed: the `[DONE]` sentinel tells clients nothing was cut off. */
  done(): void {
    this.#write('data: [DONE]\n\n');
    this.#close();
  }

  /** Ends a stream that failed after it began, with the error as OpenAI sends it mid-stream (no `[DONE]`). */
  fail(error: ApiError): void {
    this.send(toResponseBody(error));
    this.#close();
  }

  /** Drops a stream that was never handed to the client. */
  discard(): void {
    this.#close();
  }

  #write(text: string): void {
    if (this.#open) this.#controller.enqueue(encoder.encode(text));
  }

  #close(): void {
    if (!this.#open) return;
    this.#open = false;
    this.#controller.close();
  }
}

/**
 * The soak's HTTP client: node:http without keep-alive, so every request is its own connection and the gateway's
 * open file descriptors fall back to their idle count once the clients are done. Streams are read as OpenAI's
 * server-sent events. Nothing here waits without bound: a request that gets no answer in time is reported as such.
 */
import { request } from 'node:http';

export interface StreamOutcome {
  /** The HTTP status, or 0 when no answer came (see `failure`). */
  status: number;
  /** `error.code` of a refusal's body or of an error event in the stream. */
  errorCode: string | null;
  /** When the response began (performance.now()): the model was resolved before that. */
  answeredAt: number;
  /** Concatenated `choices[0].text` of the stream's chunks. */
  text: string;
  finishReason: string | null;
  /** The stream ended with `data: [DONE]`. */
  done: boolean;
  /** The stream carried an `{"error": …}` event after it began. */
  streamError: boolean;
  /** The client hung up after the first chunk, on purpose. */
  disconnected: boolean;
  /** Why no complete answer came: a connection error, a cut stream, or no answer in time. */
  failure: string | null;
}

export interface StreamOptions {
  /** Asked when the first chunk arrived: true hangs up there. */
  disconnectAfterFirstChunk?: () => boolean;
  /** Called once, when the first chunk arrived. */
  onFirstChunk?: () => void;
  timeoutMs: number;
}

/** POSTs a streamed completion and reads it to its end (or hangs up after the first chunk, when asked). */
export function streamCompletion(url: string, key: string, body: object, options: StreamOptions): Promise<StreamOutcome> {
  const outcome: StreamOutcome = {
    status: 0,
    errorCode: null,
    answeredAt: 0,
    text: '',
    finishReason: null,
    done: false,
    streamError: false,
    disconnected: false,
    failure: null,
  };
  return new Promise((resolve) => {
    const payload = JSON.stringify({ ...body, stream: true });
    const req = request(`${url}/v1/completions`, {
      method: 'POST',
      agent: false,
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
    });
    const finish = (failure: string | null) => {
      clearTimeout(timer);
      outcome.failure ??= failure;
      resolve(outcome);
    };
    const timer = setTimeout(() => {
      req.destroy();
      finish(`no complete answer within ${options.timeoutMs} ms`);
    }, options.timeoutMs);
    req.on('error', (error) => finish(outcome.disconnected ? null : `connection: ${error.message}`));
    req.on('response', (response) => {
      outcome.status = response.statusCode ?? 0;
      outcome.answeredAt = performance.now();
      let buffered = '';
      let sawFirstChunk = false;
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => {
        buffered += chunk;
        if (outcome.status !== 200) return;
        const events = buffered.split('\n\n');
        buffered = events.pop()!;
        for (const event of events) readEvent(outcome, event);
        if (events.length > 0 && !sawFirstChunk) {
          sawFirstChunk = true;
          options.onFirstChunk?.();
          if (options.disconnectAfterFirstChunk?.() && !outcome.done) {
            outcome.disconnected = true;
            req.destroy();
            finish(null);
          }
        }
      });
      response.on('end', () => {
        if (outcome.status !== 200) outcome.errorCode = errorCodeOf(buffered);
        finish(outcome.status === 200 && !outcome.done && !outcome.streamError ? 'the stream ended without [DONE]' : null);
      });
      response.on('error', (error) => finish(outcome.disconnected ? null : `stream: ${error.message}`));
    });
    req.end(payload);
  });
}

function readEvent(outcome: StreamOutcome, event: string): void {
  const data = event.replace(/^data: /, '');
  if (data === '[DONE]') {
    outcome.done = true;
    return;
  }
  const parsed = JSON.parse(data) as { error?: { code?: string | null }; choices?: { text?: string; finish_reason?: string | null }[] };
  if (parsed.error) {
    outcome.streamError = true;
    outcome.errorCode = parsed.error.code ?? null;
  }
  const choice = parsed.choices?.[0];
  if (choice) {
    outcome.text += choice.text ?? '';
    outcome.finishReason = choice.finish_reason ?? outcome.finishReason;
  }
}

function errorCodeOf(body: string): string | null {
  try {
    return (JSON.parse(body) as { error?: { code?: string | null } }).error?.code ?? null;
  } catch {
    return null;
  }
}

export interface PlainAnswer {
  status: number;
  body: string;
}

/** One request on its own connection; resolves with the status and the body as text. */
export function sendRequest(
  url: string,
  method: string,
  path: string,
  key: string | null,
  timeoutMs: number,
  body?: { contentType: string; bytes: Buffer },
): Promise<PlainAnswer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = key ? { authorization: `Bearer ${key}` } : {};
    if (body) Object.assign(headers, { 'content-type': body.contentType, 'content-length': body.bytes.length });
    const req = request(`${url}${path}`, { method, agent: false, headers, signal: AbortSignal.timeout(timeoutMs) });
    req.on('error', (error) => reject(new Error(`${method} ${path}: ${error.message}`)));
    req.on('response', (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      response.on('error', (error) => reject(new Error(`${method} ${path}: ${error.message}`)));
    });
    req.end(body?.bytes);
  });
}

/** Uploads files as multipart/form-data, each in a field named after the file. */
export function uploadFiles(url: string, path: string, key: string, files: Map<string, Uint8Array>, timeoutMs: number): Promise<PlainAnswer> {
  const boundary = `soak-${Math.random().toString(16).slice(2)}`;
  const parts: Buffer[] = [];
  for (const [name, data] of files) {
    parts.push(Buffer.from(`--${boundary}\r\ncontent-disposition: form-data; name="${name}"; filename="${name}"\r\ncontent-type: application/octet-stream\r\n\r\n`));
    parts.push(Buffer.from(data), Buffer.from('\r\n'));
  }
  parts.push(Buffer.from(`--${boundary}--\r\n`));
  return sendRequest(url, 'POST', path, key, timeoutMs, { contentType: `multipart/form-data; boundary=${boundary}`, bytes: Buffer.concat(parts) });
}

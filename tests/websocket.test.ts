import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket, type ClientOptions } from 'ws';
import { loraAdapterFiles, randomLoraAdapter } from '../src/adapters/lora-writer.ts';
import { attachWebSocketApi, WEBSOCKET_PATH, type WebSocketApiOptions } from '../src/api/websocket.ts';
import { stepUntilSettled, stepUntilStreaming } from './support/engine-steps.ts';
import { BASE_MODEL, KEYS, startTestGateway, type TestGateway } from './support/gateway.ts';

let gateway: TestGateway;
let workDir: string;
const ADAPTER_MODEL = `${BASE_MODEL}+acme/story`;
const PROMPT = 'Once upon a time';

before(async () => {
  gateway = await startTestGateway();
  workDir = await mkdtemp(join(tmpdir(), 'websocket-test-'));
  const config = gateway.services.engine.info.config;
  const spec = randomLoraAdapter(config, { rank: 4, targetModules: ['q_proj', 'v_proj', 'down_proj'], seed: 7, std: 0.2 });
  await gateway.services.store.publish('acme', 'story', loraAdapterFiles(spec));
});

after(async () => {
  await gateway.stop();
  await rm(workDir, { recursive: true, force: true });
});

// ---- a small client ----

type ServerEvent = Record<string, any>;

/** A connected client that records every event the server sends and lets a test wait for one. */
class Client {
  readonly events: ServerEvent[] = [];
  #waiters: { predicate: (event: ServerEvent) => boolean; resolve: (event: ServerEvent) => void }[] = [];

  constructor(readonly socket: WebSocket) {
    socket.on('message', (data) => {
      const event = JSON.parse(data.toString()) as ServerEvent;
      this.events.push(event);
      this.#waiters = this.#waiters.filter((waiter) => !(waiter.predicate(event) && (waiter.resolve(event), true)));
    });
  }

  send(event: unknown): void {
    this.socket.send(typeof event === 'string' ? event : JSON.stringify(event));
  }

  /** The first event, received already or to come, that matches. */
  waitFor(predicate: (event: ServerEvent) => boolean): Promise<ServerEvent> {
    const seen = this.events.find(predicate);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => this.#waiters.push({ predicate, resolve }));
  }

  /** Sends response.create and returns the id from the response.created that answers it. */
  async create(response: Record<string, unknown>): Promise<string> {
    const eventId = `create-${Math.random()}`;
    this.send({ type: 'response.create', event_id: eventId, response });
    const created = await this.waitFor((event) => event.type === 'response.created' && event.client_event_id === eventId);
    return created.response.id;
  }

  terminal(responseId: string): Promise<ServerEvent> {
    return this.waitFor((event) => TERMINAL_TYPES.has(event.type) && event.response.id === responseId);
  }

  deltas(responseId: string): string[] {
    return this.events.filter((event) => event.type === 'response.output_text.delta' && event.response_id === responseId).map((event) => event.delta);
  }

  close(): void {
    this.socket.terminate();
  }
}

const TERMINAL_TYPES = new Set(['response.completed', 'response.incomplete', 'response.cancelled', 'response.failed']);

function wsUrl(base: string = gateway.url): string {
  return `${base.replace(/^http/, 'ws')}${WEBSOCKET_PATH}`;
}

/** Resolves with the open client, or rejects with the HTTP status and body of a refused handshake. */
function connect(url: string, protocols: string[] = [], options: ClientOptions = {}): Promise<Client> {
  const socket = new WebSocket(url, protocols, options);
  const client = new Client(socket);
  return new Promise((resolve, reject) => {
    socket.once('open', () => resolve(client));
    socket.once('unexpected-response', (_request, response) => {
      let body = '';
      response.on('data', (chunk: Buffer) => (body += chunk));
      response.on('end', () => reject(Object.assign(new Error(`handshake refused with ${response.statusCode}`), { status: response.statusCode, body })));
    });
    socket.once('error', reject);
  });
}

function connectAs(key: string = KEYS.acme): Promise<Client> {
  return connect(wsUrl(), [], { headers: { authorization: `Bearer ${key}` } });
}

/** Resolves once `condition` holds: it is checked after each engine step, which is when engine state changes. */
function afterSteps(condition: () => boolean): Promise<void> {
  const { engine } = gateway.services;
  if (condition()) return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (!condition()) return;
      engine.off('stats', check);
      resolve();
    };
    engine.on('stats', check);
  });
}

/** Runs a paused engine step by step until nothing is pending in it. */
async function stepUntilIdle(): Promise<void> {
  const { engine } = gateway.services;
  while (engine.pendingRequests > 0) await engine.step();
}

/** An extra HTTP server carrying the WebSocket API over the test gateway's services, with options of its own. */
async function extraServer(options: WebSocketApiOptions, listen: { path: string } | { port: 0; host: string }) {
  const server: Server = createServer((_request, response) => response.writeHead(404).end());
  const api = attachWebSocketApi(server, gateway.services, options);
  await new Promise<void>((resolve) => server.listen(listen, resolve));
  return {
    server,
    close: async () => {
      await api.close();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

// ---- handshake ----

test('a handshake without a valid key is refused with 401 before upgrading, and other paths with 404', async () => {
  for (const options of [{}, { headers: { authorization: 'Bearer sk-wrong' } }]) {
    const refused = await connect(wsUrl(), [], options).then(
      () => assert.fail('connected without a valid key'),
      (error) => error,
    );
    assert.equal(refused.status, 401);
    assert.equal(JSON.parse(refused.body).error.code, 'invalid_api_key');
  }
  const wrongPath = await connect(`${gateway.url.replace(/^http/, 'ws')}/v1/elsewhere`, [], { headers: { authorization: `Bearer ${KEYS.acme}` } }).then(
    () => assert.fail('connected on an unknown path'),
    (error) => error,
  );
  assert.equal(wrongPath.status, 404);
});

test('a Bearer header or the key subprotocol authenticates, and the key is never selected as the subprotocol', async () => {
  const byHeader = await connectAs();
  assert.equal(byHeader.socket.protocol, '');
  byHeader.close();

  const bySubprotocol = await connect(wsUrl(), [`openai-insecure-api-key.${KEYS.acme}`, 'realtime']);
  assert.equal(bySubprotocol.socket.protocol, 'realtime');
  const id = await bySubprotocol.create({ model: BASE_MODEL, input: PROMPT, max_tokens: 2, temperature: 0 });
  assert.equal((await bySubprotocol.terminal(id)).type, 'response.incomplete');
  bySubprotocol.close();

  // Offered alone, the key subprotocol is not selected (the ws client then refuses the handshake itself).
  const socket = new WebSocket(wsUrl(), [`openai-insecure-api-key.${KEYS.acme}`]);
  const upgrade = new Promise<Record<string, unknown>>((resolve) => socket.once('upgrade', (response) => resolve(response.headers)));
  socket.on('error', () => {});
  assert.equal((await upgrade)['sec-websocket-protocol'], undefined);
  socket.terminate();
});

test('while the server drains, handshakes are refused with 503 and open sockets start no new responses', async () => {
  const client = await connectAs();
  gateway.services.draining = true;
  try {
    const refused = await connectAs().then(
      () => assert.fail('connected while draining'),
      (error) => error,
    );
    assert.equal(refused.status, 503);
    const failed = await client.terminal(await client.create({ model: BASE_MODEL, input: PROMPT, max_tokens: 2 }));
    assert.equal(failed.type, 'response.failed');
    assert.equal(failed.response.status_code, 503);
    assert.equal(failed.response.retry_after_seconds, 5);
    assert.deepEqual(failed.response.usage, { input_tokens: 0, output_tokens: 0, total_tokens: 0 });
  } finally {
    gateway.services.draining = false;
    client.close();
  }
});

// ---- generations ----

test('three concurrent responses on one socket interleave and each equals the same HTTP request', async () => {
  const client = await connectAs();
  const openai = gateway.client();
  const messages = [{ role: 'user' as const, content: PROMPT }];
  const requests = [
    { model: BASE_MODEL, messages, max_tokens: 24, temperature: 0 },
    { model: BASE_MODEL, input: PROMPT, max_tokens: 24, temperature: 0 },
    // The Responses API's name for the limit.
    { model: ADAPTER_MODEL, input: PROMPT, max_output_tokens: 24, temperature: 0 },
  ];
  const eventIds = requests.map((_, index) => `create-${index}`);
  // All three join the batch before any goes on, however fast the machine is, so their deltas interleave. The
  // adapter is loaded first: its files are read in real time, while a paused engine steps only
  // when told, so a cold load could outlast the base responses' steps.
  await openai.completions.create({ model: ADAPTER_MODEL, prompt: PROMPT, max_tokens: 1 });
  const { engine } = gateway.services;
  engine.pause();
  requests.forEach((response, index) => client.send({ type: 'response.create', event_id: eventIds[index], response }));
  const ids: string[] = [];
  for (const eventId of eventIds) {
    ids.push((await client.waitFor((event) => event.type === 'response.created' && event.client_event_id === eventId)).response.id);
  }
  await stepUntilStreaming(engine, 3);
  engine.resume();
  const terminals = await Promise.all(ids.map((id) => client.terminal(id)));

  const expected = await Promise.all([
    openai.chat.completions.create({ model: BASE_MODEL, messages, max_tokens: 24, temperature: 0 }).then((r) => ({
      text: r.choices[0].message.content,
      finish: r.choices[0].finish_reason,
      usage: [r.usage!.prompt_tokens, r.usage!.completion_tokens],
    })),
    ...[BASE_MODEL, ADAPTER_MODEL].map((model) =>
      openai.completions.create({ model, prompt: PROMPT, max_tokens: 24, temperature: 0 }).then((r) => ({
        text: r.choices[0].text,
        finish: r.choices[0].finish_reason,
        usage: [r.usage!.prompt_tokens, r.usage!.completion_tokens],
      })),
    ),
  ]);
  terminals.forEach((terminal, index) => {
    const want = expected[index];
    assert.equal(terminal.type, want.finish === 'length' ? 'response.incomplete' : 'response.completed');
    assert.equal(terminal.response.model, requests[index].model);
    assert.equal(terminal.response.output_text, want.text);
    assert.equal(client.deltas(ids[index]).join(''), want.text);
    const { input_tokens, output_tokens, total_tokens } = terminal.response.usage;
    assert.deepEqual([input_tokens, output_tokens], want.usage);
    assert.equal(total_tokens, input_tokens + output_tokens);
  });
  assert.notEqual(expected[2].text, expected[1].text, 'the adapter changes the output');

  // Interleaved: some delta of one response arrived between two deltas of another.
  const order = client.events.filter((event) => event.type === 'response.output_text.delta').map((event) => event.response_id);
  const switches = order.filter((id, index) => index > 0 && id !== order[index - 1]).length;
  assert.ok(switches > ids.length, `deltas arrived in blocks: ${order.join(' ')}`);

  const eventIdsSeen = client.events.map((event) => event.event_id);
  assert.ok(eventIdsSeen.every((id) => typeof id === 'string'));
  assert.equal(new Set(eventIdsSeen).size, eventIdsSeen.length, 'event ids are unique');
  client.close();
});

test('response.cancel ends a response as cancelled and frees its engine row', async () => {
  const { engine } = gateway.services;
  const client = await connectAs();
  // Paused, the engine samples one token per step the test allows: the response is still running when the
  // cancel arrives, however fast this machine is.
  engine.pause();
  try {
    const id = await client.create({ model: BASE_MODEL, input: PROMPT, max_tokens: 400, temperature: 0 });
    await stepUntilSettled(engine, client.waitFor((event) => event.type === 'response.output_text.delta' && event.response_id === id));
    assert.equal(engine.stats.running, 1);
    client.send({ type: 'response.cancel', response_id: id });
    const terminal = client.terminal(id);
    await stepUntilIdle();
    assert.equal((await terminal).type, 'response.cancelled');
    assert.ok((await terminal).response.usage.output_tokens > 0 && (await terminal).response.usage.output_tokens < 400);
    assert.ok((await terminal).response.usage.input_tokens > 0);
    assert.equal(engine.stats.running, 0);
  } finally {
    engine.resume();
  }
  assert.equal(client.events.filter((event) => TERMINAL_TYPES.has(event.type)).length, 1, 'exactly one terminal event');
  client.close();
});

test('a socket that closes mid-stream cancels the work it started', async () => {
  const { engine } = gateway.services;
  const client = await connectAs();
  engine.pause();
  let ids: string[];
  try {
    ids = [await client.create({ model: BASE_MODEL, input: PROMPT, max_tokens: 400, temperature: 0 })];
    ids.push(await client.create({ model: ADAPTER_MODEL, input: PROMPT, max_tokens: 400, temperature: 0 }));
    await stepUntilSettled(engine, Promise.all(ids.map((id) => client.waitFor((event) => event.type === 'response.output_text.delta' && event.response_id === id))));
    assert.equal(engine.pendingRequests, 2);
    client.socket.close();
    await stepUntilIdle();
  } finally {
    engine.resume();
  }
  assert.equal(engine.stats.running, 0);
  // Cancelled, not finished: each trace records why its generation ended.
  const spans = gateway.traces.getFinishedSpans().filter((span) => ids.includes(span.attributes['gen_ai.response.id'] as string));
  assert.deepEqual(spans.map((span) => span.attributes['gen_ai.response.finish_reasons']), [['cancelled'], ['cancelled']]);
});

test('malformed messages get an error event and the socket stays usable', async () => {
  const client = await connectAs();
  client.send('{"type": "response.create"');
  assert.equal((await client.waitFor((event) => event.type === 'error')).error.code, 'invalid_json');
  client.send({ type: 'session.update', event_id: 'mine' });
  const unknownType = await client.waitFor((event) => event.type === 'error' && event.error.code === 'unknown_event_type');
  assert.equal(unknownType.error.event_id, 'mine');
  client.send({ type: 'response.cancel', response_id: 'resp_nothing' });
  const unknownId = await client.waitFor((event) => event.type === 'error' && event.error.code === 'response_not_found');
  assert.equal(unknownId.error.param, 'response_id');
  client.send({ type: 'response.create' });
  await client.waitFor((event) => event.type === 'error' && event.error.param === 'response');
  client.socket.send(Buffer.from('{}'), { binary: true });
  await client.waitFor((event) => event.type === 'error' && /binary frames/.test(event.error.message));
  assert.equal(client.events.filter((event) => event.type === 'error').length, 5);

  const id = await client.create({ model: BASE_MODEL, input: PROMPT, max_tokens: 3, temperature: 0 });
  assert.equal((await client.terminal(id)).type, 'response.incomplete');
  client.close();
});

test('a bad response.create fails its response with the HTTP API error: unknown model, invalid field, another tenant', async () => {
  const client = await connectAs(KEYS.globex);
  const unknown = await client.terminal(await client.create({ model: 'no-such-model', input: PROMPT }));
  assert.equal(unknown.type, 'response.failed');
  assert.equal(unknown.response.status_code, 404);
  assert.equal(unknown.response.error.code, 'model_not_found');
  assert.equal(unknown.response.error.param, 'model');

  // acme's adapter is private: to globex it does not exist.
  const invisible = await client.terminal(await client.create({ model: ADAPTER_MODEL, input: PROMPT }));
  assert.equal(invisible.response.error.code, 'model_not_found');

  const invalid = await client.terminal(await client.create({ model: BASE_MODEL, input: PROMPT, temperature: 'hot' }));
  assert.equal(invalid.response.status_code, 400);
  assert.equal(invalid.response.error.param, 'temperature');

  const several = await client.terminal(await client.create({ model: BASE_MODEL, input: PROMPT, n: 2 }));
  assert.equal(several.response.error.code, 'unsupported_parameter');
  assert.equal(several.response.error.param, 'n');
  client.close();
});

test('a socket may have at most 16 responses in progress; the next one fails with 429', async () => {
  const client = await connectAs();
  const eventIds = Array.from({ length: 17 }, (_, index) => `limit-${index}`);
  const response = { model: BASE_MODEL, input: PROMPT, max_tokens: 30, temperature: 0 };
  // Paused, the engine finishes none of the first 16 before the 17th arrives, even if the frames arrive apart.
  gateway.services.engine.pause();
  for (const eventId of eventIds) client.send({ type: 'response.create', event_id: eventId, response });
  const created = await Promise.all(eventIds.map((eventId) => client.waitFor((event) => event.type === 'response.created' && event.client_event_id === eventId)));
  assert.equal((await client.terminal(created[16].response.id)).type, 'response.failed');
  gateway.services.engine.resume();
  const terminals = await Promise.all(created.map((event) => client.terminal(event.response.id)));
  assert.deepEqual(terminals.slice(0, 16).map((event) => event.type), Array(16).fill('response.incomplete'));
  assert.equal(terminals[16].type, 'response.failed');
  assert.equal(terminals[16].response.status_code, 429);
  assert.match(terminals[16].response.error.message, /16 responses in progress/);
  client.close();
});

test('closing the API cancels what is running, sends the terminal events, then closes sockets with 1001', async () => {
  const extra = await extraServer({}, { port: 0, host: '127.0.0.1' });
  const { port } = extra.server.address() as { port: number };
  const client = await connect(`ws://127.0.0.1:${port}${WEBSOCKET_PATH}`, [], { headers: { authorization: `Bearer ${KEYS.acme}` } });
  const { engine } = gateway.services;
  // Paused with the response running; the close cancels it before the engine may go on.
  engine.pause();
  const id = await client.create({ model: BASE_MODEL, input: PROMPT, max_tokens: 400, temperature: 0 });
  await stepUntilSettled(engine, client.waitFor((event) => event.type === 'response.output_text.delta' && event.response_id === id));
  const closed = new Promise<number>((resolve) => client.socket.once('close', resolve));
  const closing = extra.close();
  engine.resume();
  await closing;
  assert.equal(await closed, 1001);
  assert.equal(client.events.at(-1)?.type, 'response.cancelled');
  assert.equal(gateway.services.engine.pendingRequests, 0);
});

// ---- liveness and slow readers ----

test('a client that does not answer pings is terminated; one that does stays connected', async (t) => {
  // The heartbeat runs on mocked interval timers: each tick is one heartbeat, whatever the machine's speed.
  t.mock.timers.enable({ apis: ['setInterval'] });
  const extra = await extraServer({ pingIntervalMs: 200 }, { port: 0, host: '127.0.0.1' });
  try {
    const { port } = extra.server.address() as { port: number };
    const url = `ws://127.0.0.1:${port}${WEBSOCKET_PATH}`;
    const headers = { authorization: `Bearer ${KEYS.acme}` };
    const silent = await connect(url, [], { headers, autoPong: false });
    const answering = await connect(url, [], { headers });
    const pinged = [silent, answering].map((client) => new Promise((resolve) => client.socket.once('ping', resolve)));
    t.mock.timers.tick(200);
    await Promise.all(pinged);
    // The pong went out before this message: once its answer is back, the server has seen the pong.
    answering.send('not json');
    await answering.waitFor((event) => event.type === 'error');
    const closed = new Promise<number>((resolve) => silent.socket.once('close', resolve));
    t.mock.timers.tick(200);
    assert.equal(await closed, 1006, 'terminated without a close frame');
    assert.equal(answering.socket.readyState, WebSocket.OPEN);
    answering.close();
  } finally {
    await extra.close();
  }
});

test('a client that stops reading gets its responses failed as slow_consumer, and the server buffer stays bounded', async () => {
  // Over a Unix socket, because loopback TCP buffers megabytes in the kernel before anything waits in the server.
  const maxBufferedBytes = 32 * 1024;
  const socketPath = join(workDir, 'ws.sock');
  const extra = await extraServer({ maxBufferedBytes }, { path: socketPath });
  const serverSockets: Socket[] = [];
  extra.server.on('upgrade', (_request, socket: Socket) => serverSockets.push(socket));
  let mostBuffered = 0;
  const sampler = setInterval(() => {
    for (const socket of serverSockets) mostBuffered = Math.max(mostBuffered, socket.writableLength);
  }, 1);
  try {
    const client = await connect(`ws+unix://${socketPath}:${WEBSOCKET_PATH}`, [], { headers: { authorization: `Bearer ${KEYS.acme}` } });
    client.socket.pause();
    // All eight reach the paused engine before any of them produces events, so all eight are cut off together.
    const { engine } = gateway.services;
    engine.pause();
    for (let index = 0; index < 8; index++) {
      client.send({ type: 'response.create', response: { model: BASE_MODEL, input: `${PROMPT} ${index}`, max_tokens: 400, temperature: 1, seed: index } });
    }
    while (engine.pendingRequests < 8) await new Promise((resolve) => setImmediate(resolve));
    engine.resume();
    await afterSteps(() => engine.pendingRequests === 0);
    client.socket.resume();
    const terminals = new Promise<void>((resolve) => {
      client.socket.on('message', () => client.events.filter((event) => TERMINAL_TYPES.has(event.type)).length === 8 && resolve());
    });
    await terminals;

    const failed = client.events.filter((event) => event.type === 'response.failed');
    assert.ok(failed.length > 0, 'some response was stopped');
    for (const event of failed) assert.equal(event.response.error.code, 'slow_consumer');
    // The backlog, plus the frame that crossed the mark and the terminal events that followed.
    assert.ok(mostBuffered > 0 && mostBuffered <= maxBufferedBytes + 16 * 1024, `server buffered ${mostBuffered} bytes`);

    const id = await client.create({ model: BASE_MODEL, input: PROMPT, max_tokens: 3, temperature: 0 });
    assert.equal((await client.terminal(id)).type, 'response.incomplete', 'the socket is usable again');
    client.close();
  } finally {
    clearInterval(sampler);
    await extra.close();
  }
});

// ---- per-socket limits ----

test('a message larger than WS_MAX_MESSAGE_BYTES closes the socket with 1009; smaller ones are served', async () => {
  const limited = await startTestGateway({}, { WS_MAX_MESSAGE_BYTES: '1KiB' });
  try {
    const client = await connect(wsUrl(limited.url), [], { headers: { authorization: `Bearer ${KEYS.acme}` } });
    const fits = { type: 'response.create', response: { model: BASE_MODEL, input: PROMPT, max_tokens: 2, user: 'x'.repeat(900) } };
    assert.ok(JSON.stringify(fits).length <= 1024);
    client.send(fits);
    await client.waitFor((event) => TERMINAL_TYPES.has(event.type));
    const closed = new Promise<number>((resolve) => client.socket.once('close', resolve));
    client.send({ ...fits, response: { ...fits.response, user: 'x'.repeat(1024) } });
    assert.equal(await closed, 1009);
    assert.equal(client.events.filter((event) => event.type === 'response.created').length, 1, 'the large message started nothing');
  } finally {
    await limited.stop();
  }
});

test('WS_MESSAGES_PER_MINUTE: messages beyond the rate are dropped with a rate_limit_exceeded error event', async () => {
  // The limiter reads this clock, so time moves only when the test says so.
  let now = 0;
  const extra = await extraServer({ messagesPerMinute: 3, now: () => now }, { port: 0, host: '127.0.0.1' });
  try {
    const { port } = extra.server.address() as { port: number };
    const client = await connect(`ws://127.0.0.1:${port}${WEBSOCKET_PATH}`, [], { headers: { authorization: `Bearer ${KEYS.acme}` } });
    for (let index = 0; index < 3; index++) client.send({ type: 'session.update', event_id: `within-${index}` });
    client.send({ type: 'response.create', event_id: 'over', response: { model: BASE_MODEL, input: PROMPT, max_tokens: 2 } });
    const refused = await client.waitFor((event) => event.type === 'error' && event.error.code === 'rate_limit_exceeded');
    assert.deepEqual(Object.keys(refused.error).sort(), ['code', 'message', 'param', 'type']);
    assert.equal(refused.error.type, 'requests');
    assert.match(refused.error.message, /more than 3 messages per minute/);
    // One message is earned back every 20 s.
    assert.equal(refused.retry_after_seconds, 20);
    const answered = client.events.filter((event) => event.type === 'error' && event.error.code === 'unknown_event_type');
    assert.deepEqual(answered.map((event) => event.error.event_id), ['within-0', 'within-1', 'within-2']);
    assert.equal(client.events.filter((event) => event.type === 'response.created').length, 0, 'the dropped create started nothing');

    now += 20_000;
    const id = await client.create({ model: BASE_MODEL, input: PROMPT, max_tokens: 2, temperature: 0 });
    assert.equal((await client.terminal(id)).type, 'response.incomplete');
    assert.equal(client.socket.readyState, WebSocket.OPEN);
    client.close();
  } finally {
    await extra.close();
  }
});

test('WS_MAX_RESPONSES_PER_SOCKET sets how many responses one socket may have in progress', async () => {
  const limited = await startTestGateway({}, { WS_MAX_RESPONSES_PER_SOCKET: '2' });
  const { engine } = limited.services;
  try {
    const client = await connect(wsUrl(limited.url), [], { headers: { authorization: `Bearer ${KEYS.acme}` } });
    const response = { model: BASE_MODEL, input: PROMPT, max_tokens: 4, temperature: 0 };
    // Paused, the engine finishes neither of the first two before the third arrives.
    engine.pause();
    const ids = [await client.create(response), await client.create(response), await client.create(response)];
    const third = await client.terminal(ids[2]);
    engine.resume();
    assert.equal(third.type, 'response.failed');
    assert.equal(third.response.status_code, 429);
    assert.match(third.response.error.message, /already has 2 responses in progress/);
    assert.deepEqual((await Promise.all(ids.slice(0, 2).map((id) => client.terminal(id)))).map((event) => event.type), ['response.incomplete', 'response.incomplete']);
    client.close();
  } finally {
    await limited.stop();
  }
});

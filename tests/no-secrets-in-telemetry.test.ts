/**
 * Keys, prompts and outputs never reach the logs, the exported spans or the metrics. A real gateway process runs
 * with debug JSON logs and OTLP/HTTP trace export to a collector in this test, and serves traffic carrying
 * distinctive strings: prompts over every API, failing requests that quote them, unknown keys, a dataset upload.
 * Then its log, every exported span and /metrics are searched for those strings and for every generated output.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { BASE_MODEL, KEYS } from './support/gateway.ts';
import { spawnGateway, type SpawnedGateway } from './support/spawned-gateway.ts';

const PROMPT = 'Once upon a time Quixotrelle';
const SYSTEM = 'You are Brumblewick the helper';
const USER_ID = 'user-Plonkhaven';
const STOP = 'Vexmortal';
const DATASET = 'Snorfblat';
const WRONG_KEY = 'sk-wrong-Glimmerquadd';
const SECRETS = [PROMPT, 'Quixotrelle', SYSTEM, 'Brumblewick', USER_ID, STOP, DATASET, WRONG_KEY, ...Object.values(KEYS)];

let dir: string;
let collector: Server;
/** Every OTLP export request body the gateway sent. */
const exported: Buffer[] = [];
let gateway: SpawnedGateway;
/** Every text the model generated, over every API. */
const outputs: string[] = [];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'telemetry-'));
  collector = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      exported.push(Buffer.concat(chunks));
      response.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => collector.listen(0, '127.0.0.1', resolve));
  const { port } = collector.address() as { port: number };
  gateway = await spawnGateway(dir, join(dir, 'adapters'), {
    env: { LOG_LEVEL: 'debug', OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}` },
  });
});

after(async () => {
  await new Promise((resolve) => collector.close(resolve));
  await rm(dir, { recursive: true, force: true });
});

async function post(path: string, body: string, key: string = KEYS.acme): Promise<{ status: number; text: string }> {
  const response = await fetch(`${gateway.url}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body,
  });
  return { status: response.status, text: await response.text() };
}

async function webSocketOutput(): Promise<string> {
  const socket = new WebSocket(`${gateway.url.replace(/^http/, 'ws')}/v1/ws`, { headers: { authorization: `Bearer ${KEYS.acme}` } });
  await new Promise((resolve, reject) => socket.once('open', resolve).once('error', reject));
  const done = new Promise<string>((resolve) => {
    socket.on('message', (data) => {
      const event = JSON.parse(data.toString()) as { type: string; response?: { output_text?: string } };
      if (event.type === 'response.incomplete' || event.type === 'response.completed') resolve(event.response!.output_text!);
    });
  });
  socket.send(JSON.stringify({ type: 'response.create', response: { model: BASE_MODEL, input: PROMPT, max_tokens: 24, temperature: 0 } }));
  const output = await done;
  socket.close();
  return output;
}

test('prompts, outputs and keys appear in no log line, exported span or metric label', async () => {
  const client = gateway.client();
  const completion = await client.completions.create({ model: BASE_MODEL, prompt: PROMPT, max_tokens: 24, temperature: 0, user: USER_ID, stop: [STOP] });
  outputs.push(completion.choices[0].text);
  const chat = await client.chat.completions.create({
    model: BASE_MODEL,
    messages: [
      { role: 'system', content: SYSTEM },
      { role: 'user', content: PROMPT },
    ],
    max_tokens: 24,
    temperature: 0,
    stream: true,
  });
  let streamed = '';
  for await (const chunk of chat) streamed += chunk.choices[0]?.delta?.content ?? '';
  outputs.push(streamed);
  outputs.push(await webSocketOutput());

  // Failures whose bodies carry the prompt, and whose answers may quote what was wrong.
  assert.equal((await post('/v1/completions', `{"model":"${BASE_MODEL}","prompt":"${PROMPT}",`)).status, 400);
  assert.equal((await post('/v1/completions', JSON.stringify({ model: BASE_MODEL, prompt: PROMPT, temperature: PROMPT }))).status, 400);
  assert.equal((await post('/v1/completions', JSON.stringify({ model: `${BASE_MODEL}+acme/${'quixotrelle'}`, prompt: PROMPT }))).status, 404);
  assert.equal((await post('/v1/chat/completions', JSON.stringify({ model: BASE_MODEL, messages: [{ role: PROMPT, content: PROMPT }] }))).status, 400);
  assert.equal((await post('/v1/completions', JSON.stringify({ model: BASE_MODEL, prompt: PROMPT }), WRONG_KEY)).status, 401);
  const refused = new WebSocket(`${gateway.url.replace(/^http/, 'ws')}/v1/ws`, [`openai-insecure-api-key.${WRONG_KEY}`, 'realtime']);
  await new Promise((resolve) => refused.once('unexpected-response', resolve).once('error', resolve));

  // A fine-tuning dataset is prompts too.
  const form = new FormData();
  form.append('purpose', 'fine-tune');
  form.append('file', new Blob([Array.from({ length: 10 }, (_, i) => JSON.stringify({ text: `${DATASET} story ${i}` })).join('\n')]), 'd.jsonl');
  const uploaded = await fetch(`${gateway.url}/v1/files`, { method: 'POST', headers: { authorization: `Bearer ${KEYS.acme}` }, body: form });
  assert.equal(uploaded.status, 200);

  const metrics = await (await fetch(`${gateway.url}/metrics`)).text();
  // A graceful stop flushes the batched spans to the collector before the process exits.
  assert.equal(await gateway.stop(), 0);
  const log = gateway.log();
  const spans = exported.map((body) => body.toString('latin1')).join('\n');

  // The search can find what it looks for: the traffic is in all three, by its metadata.
  assert.match(log, /"msg":"request".*"path":"\/v1\/completions"/);
  assert.ok(spans.includes(completion.id), 'the exported spans name the response');
  assert.match(metrics, /vllm:request_success_total/);

  for (const output of outputs) assert.ok(output.trim().length >= 12, `a long enough output to search for: ${JSON.stringify(output)}`);
  for (const [where, text] of [['log', log], ['spans', spans], ['metrics', metrics]] as const) {
    for (const secret of [...SECRETS, ...outputs.map((output) => output.trim())]) {
      // As written, and as JSON writes it (an output may hold quotes or line breaks).
      for (const form of [secret, JSON.stringify(secret).slice(1, -1)]) assert.ok(!text.includes(form), `${where} contains ${JSON.stringify(secret)}`);
    }
  }
});

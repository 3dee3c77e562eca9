/**
 * Fuzz targets for every route's body, over real HTTP and WebSocket connections to a running gateway:
 * completions, chat, adapter uploads (multipart with hostile file names and contents, and raw bodies), the admin
 * visibility switch, and WebSocket frames. Every answer must be a success or an error in OpenAI's shape with a
 * 4xx status (503 only as the overload answer), never a 500 or a dropped connection; an upload may never write
 * outside the adapter store.
 */
import { readdir } from 'node:fs/promises';
import fc from 'fast-check';
import { WebSocket } from 'ws';
import { loraAdapterFiles, randomLoraAdapter } from '../src/adapters/lora-writer.ts';
import type { LlamaConfig } from '../src/model/types.ts';
import { jsonMutation, type FuzzRun, type FuzzTarget } from './fuzz-support.ts';

export interface FuzzedGateway {
  url: string;
  /** A tenant key and the tenant it belongs to; an admin key. */
  tenantKey: string;
  tenant: string;
  adminKey: string;
  baseModel: string;
  config: LlamaConfig;
  adaptersDir: string;
}

/** Statuses an answer may have: success, client errors, and 503 for an overloaded or draining server. */
function checkAnswer(status: number, body: string, what: string): void {
  if (status >= 200 && status < 300) return;
  if (!(status >= 400 && status < 500) && status !== 503) throw new Error(`${what}: status ${status}: ${body.slice(0, 500)}`);
  checkErrorShape(JSON.parse(body), `${what} (${status})`);
}

function checkErrorShape(body: unknown, what: string): void {
  const error = (body as { error?: Record<string, unknown> } | null)?.error;
  const shaped =
    error !== undefined &&
    typeof error.message === 'string' &&
    error.message.length > 0 &&
    typeof error.type === 'string' &&
    'param' in error &&
    'code' in error &&
    (error.param === null || typeof error.param === 'string') &&
    (error.code === null || typeof error.code === 'string');
  if (!shaped) throw new Error(`${what}: not an OpenAI error: ${JSON.stringify(body).slice(0, 500)}`);
}

async function post(gateway: FuzzedGateway, path: string, body: BodyInit, headers: Record<string, string>, key = gateway.tenantKey) {
  const response = await fetch(`${gateway.url}${path}`, { method: 'POST', body, headers: { authorization: `Bearer ${key}`, ...headers } });
  return { status: response.status, body: await response.text() };
}

/** The storeroot's entries outside the tenants' own directories: an upload must never add one. */
async function storeTopLevel(gateway: FuzzedGateway): Promise<string[]> {
  return (await readdir(gateway.adaptersDir).catch(() => [])).sort();
}

const hostileName = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.constantFrom('../evil', '..', '.', '/etc/passwd', 'a/../../b', '..\\..\\c', '%2e%2e%2fx', 'name\u0000x', '.staging', '.trash', 'adapter_config.json/../../x', ''),
);

export function httpRouteTargets(gateway: FuzzedGateway): FuzzTarget[] {
  const completion = { model: gateway.baseModel, prompt: 'Once upon a time', max_tokens: 4, temperature: 0 };
  const chat = { model: gateway.baseModel, messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 4, temperature: 0.7, seed: 1 };
  const validFiles = loraAdapterFiles(randomLoraAdapter(gateway.config, { rank: 2, targetModules: ['q_proj'], seed: 3 }));
  const validConfig = JSON.parse(new TextDecoder().decode(validFiles.get('adapter_config.json')!));
  const validWeights = validFiles.get('adapter_model.safetensors')!;
  // Generations are kept short: a mutated max_tokens may still ask for hundreds of tokens, which is allowed.
  const bodyOf = (valid: object) => fc.oneof(jsonMutation(valid).map((json) => JSON.stringify(json)), fc.string({ maxLength: 200 }), fc.jsonValue().map((json) => JSON.stringify(json)));

  const jsonRoute = (name: string, path: string, valid: object): FuzzTarget => ({
    name,
    run: ({ numRuns, seed }: FuzzRun) =>
      fc.assert(
        fc.asyncProperty(bodyOf(valid), fc.constantFrom('application/json', 'text/plain', 'application/json; charset=utf-16'), async (body, contentType) => {
          const answer = await post(gateway, path, body, { 'content-type': contentType });
          checkAnswer(answer.status, answer.body, `${path} ${body.slice(0, 200)}`);
        }),
        { numRuns, seed },
      ),
  });

  return [
    jsonRoute('POST /v1/completions', '/v1/completions', completion),
    jsonRoute('POST /v1/chat/completions', '/v1/chat/completions', chat),
    jsonRoute('POST /v1/chat/completions (streamed)', '/v1/chat/completions', { ...chat, stream: true, stream_options: { include_usage: true } }),
    {
      name: 'PUT /admin/adapters/.../visibility',
      run: ({ numRuns, seed }: FuzzRun) =>
        fc.assert(
          fc.asyncProperty(bodyOf({ public: true }), hostileName, async (body, adapter) => {
            const response = await fetch(`${gateway.url}/admin/adapters/${gateway.tenant}/${encodeURIComponent(adapter)}/visibility`, {
              method: 'PUT',
              body,
              headers: { authorization: `Bearer ${gateway.adminKey}`, 'content-type': 'application/json' },
            });
            checkAnswer(response.status, await response.text(), `visibility ${body.slice(0, 100)}`);
          }),
          { numRuns, seed },
        ),
    },
    {
      name: 'POST /v1/adapters multipart',
      run: async ({ numRuns, seed }: FuzzRun) => {
        const before = await storeTopLevel(gateway);
        const part = fc.record({
          field: fc.oneof(fc.constantFrom('adapter_config.json', 'adapter_model.safetensors', 'README.md', 'file', 'files[]', 'version'), fc.string({ maxLength: 20 })),
          fileName: fc.option(hostileName, { nil: undefined }),
          content: fc.oneof(
            jsonMutation(validConfig).map((json) => new TextEncoder().encode(JSON.stringify(json))),
            fc.constant(validWeights),
            fc.uint8Array({ maxLength: 300 }),
            hostileName.map((text) => new TextEncoder().encode(text)),
          ),
        });
        await fc.assert(
          fc.asyncProperty(fc.array(part, { maxLength: 5 }), hostileName, async (parts, adapter) => {
            const form = new FormData();
            for (const { field, fileName, content } of parts) {
              if (fileName === undefined) form.append(field, new TextDecoder().decode(content));
              else form.append(field, new Blob([new Uint8Array(content)]), fileName);
            }
            const path = `/v1/adapters/${gateway.tenant}/${encodeURIComponent(adapter)}`;
            const answer = await post(gateway, path, form, {});
            checkAnswer(answer.status, answer.body, `upload to ${path} of ${JSON.stringify(parts.map((p) => [p.field, p.fileName]))}`);
          }),
          { numRuns, seed },
        );
        const after = await storeTopLevel(gateway);
        const added = after.filter((name) => !before.includes(name) && name !== gateway.tenant && !name.startsWith('.'));
        if (added.length > 0) throw new Error(`uploads created ${added.join(', ')} in the store's root`);
      },
    },
    {
      name: 'POST /v1/adapters raw bodies',
      run: ({ numRuns, seed }: FuzzRun) =>
        fc.assert(
          fc.asyncProperty(
            fc.uint8Array({ maxLength: 400 }),
            fc.constantFrom('multipart/form-data', 'multipart/form-data; boundary=x', 'multipart/form-data; boundary=', 'application/octet-stream', 'application/x-www-form-urlencoded', ''),
            async (bytes, contentType) => {
              const answer = await post(gateway, `/v1/adapters/${gateway.tenant}/raw`, bytes, contentType ? { 'content-type': contentType } : {});
              checkAnswer(answer.status, answer.body, `raw upload as ${contentType}`);
            },
          ),
          { numRuns, seed },
        ),
    },
    {
      name: 'WebSocket frames',
      run: async ({ numRuns, seed }: FuzzRun) => {
        const socket = new WebSocket(`${gateway.url.replace(/^http/, 'ws')}/v1/ws`, { headers: { authorization: `Bearer ${gateway.tenantKey}` } });
        await new Promise((resolve, reject) => socket.once('open', resolve).once('error', reject));
        const violations: string[] = [];
        const inProgress = new Set<string>();
        let allEnded: (() => void) | null = null;
        socket.on('message', (data) => {
          const event = JSON.parse(data.toString());
          if (event.type === 'error') {
            try {
              checkErrorShape(event, 'error event');
            } catch (error) {
              violations.push((error as Error).message);
            }
          } else if (event.type === 'response.created') {
            inProgress.add(event.response.id);
          } else if (event.type.startsWith('response.') && event.response?.status) {
            inProgress.delete(event.response.id);
            const status = event.response.status_code;
            if (status >= 500 && status !== 503) violations.push(`a response failed with ${status}: ${JSON.stringify(event.response.error)}`);
            if (inProgress.size === 0) allEnded?.();
          }
        });
        let closed = false;
        socket.on('close', () => (closed = true));
        const create = { type: 'response.create', response: { model: gateway.baseModel, input: 'Once upon a time', max_tokens: 3, temperature: 0 } };
        const frame = fc.oneof(
          jsonMutation(create).map((json) => JSON.stringify(json)),
          jsonMutation({ type: 'response.cancel', response_id: 'resp_x' }).map((json) => JSON.stringify(json)),
          fc.string({ maxLength: 100 }),
          fc.jsonValue().map((json) => JSON.stringify(json)),
        );
        try {
          await fc.assert(
            fc.asyncProperty(frame, async (text) => {
              socket.send(text);
              // A ping is answered after every frame sent before it was read: the socket survived this one.
              await new Promise((resolve) => socket.once('pong', resolve).ping());
              if (closed) throw new Error(`the server closed the socket after ${text.slice(0, 200)}`);
              if (violations.length > 0) throw new Error(`${violations.join('; ')} (after ${text.slice(0, 200)})`);
            }),
            { numRuns, seed },
          );
          if (inProgress.size > 0) await new Promise<void>((resolve) => (allEnded = resolve));
          if (violations.length > 0) throw new Error(violations.join('; '));
        } finally {
          socket.terminate();
        }
      },
    },
  ];
}

/**
 * A little of every kind of traffic the dashboards chart, against a test gateway started with a small token
 * budget (`TRAFFIC_LIMITS`): base-model and adapter requests from two tenants, a cold adapter, a bad key, an
 * unknown model and a request over the tenant's budget.
 */
import assert from 'node:assert/strict';
import { loraAdapterFiles, randomLoraAdapter } from '../../src/adapters/lora-writer.ts';
import { BASE_MODEL, KEYS, type TestGateway } from './gateway.ts';
import { REFERENCE } from './models.ts';

/** Enough for every request below; a single request asking for more than this is refused with 429. */
export const TRAFFIC_LIMITS = { tokensPerMinute: 400 };
const OVER_BUDGET_MAX_TOKENS = 450;

/** Publishes a random LoRA adapter for `tenant` and returns the model id that selects it. */
export async function publishAdapter(gateway: TestGateway, tenant: 'acme' | 'globex', name: string, seed: number): Promise<string> {
  const spec = randomLoraAdapter(gateway.services.engine.info.config, { rank: 4, targetModules: ['q_proj', 'v_proj'], seed, std: 0.2 });
  const form = new FormData();
  for (const [file, data] of loraAdapterFiles(spec)) form.append(file, new Blob([new Uint8Array(data)]), file);
  const response = await fetch(`${gateway.url}/v1/adapters/${tenant}/${name}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${KEYS[tenant]}` },
    body: form,
  });
  assert.equal(response.status, 201, await response.text());
  return `${BASE_MODEL}+${tenant}/${name}`;
}

async function status(gateway: TestGateway, key: string, model: string, maxTokens: number): Promise<number> {
  const response = await fetch(`${gateway.url}/v1/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt: REFERENCE.prompt, max_tokens: maxTokens, temperature: 0 }),
  });
  await response.arrayBuffer();
  return response.status;
}

/** One round of mixed traffic; asserts each answer is the one the round is meant to produce. */
export async function mixedTraffic(gateway: TestGateway, adapterModels: { acme: string; globex: string }): Promise<void> {
  const acme = gateway.client(KEYS.acme);
  const globex = gateway.client(KEYS.globex);
  await Promise.all([
    acme.completions.create({ model: BASE_MODEL, prompt: REFERENCE.prompt, max_tokens: 8, temperature: 0 }),
    acme.chat.completions.create({ model: adapterModels.acme, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 8 }),
    globex.completions.create({ model: adapterModels.globex, prompt: REFERENCE.prompt, max_tokens: 8, temperature: 0 }),
    globex.completions.create({ model: BASE_MODEL, prompt: REFERENCE.prompt, max_tokens: 4, temperature: 0 }),
  ]);
  assert.equal(await status(gateway, 'sk-not-a-key', BASE_MODEL, 4), 401);
  assert.equal(await status(gateway, KEYS.acme, `${BASE_MODEL}+acme/no-such-adapter`, 4), 404);
  assert.equal(await status(gateway, KEYS.globex, BASE_MODEL, OVER_BUDGET_MAX_TOKENS), 429);
}

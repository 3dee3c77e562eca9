/**
 * A little of every kind of traffic the dashboards chart: base-model and adapter requests from two tenants, cold
 * adapters, a bad key, an unknown model, and a tenant whose every request is refused with 429; and a small
 * fine-tuning job for the trainer's series.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { toFile } from 'openai';
import { loraAdapterFiles, randomLoraAdapter } from '../../src/adapters/lora-writer.ts';
import { asJsonl, jobFinished, madeUpWordStories, waitForJob, type TestTrainer } from './fine-tuning.ts';
import { BASE_MODEL, KEYS, startTestGateway, type TestGateway } from './gateway.ts';
import { REFERENCE } from './models.ts';

/** A tenant that may queue no request at all (`max_queued_requests: 0`): each of its requests gets a 429. */
const REFUSED_TENANT_KEY = 'sk-test-initech';
const CHAT_MESSAGE = 'Tell me about the sea';
/** What the traffic sends as prompts, for tests that check none of it is shown or recorded. */
export const TRAFFIC_PROMPTS = [REFERENCE.prompt, CHAT_MESSAGE];

/** The test gateway with tenants acme and globex (keys as in KEYS) and the always-refused tenant initech. */
export async function startTrafficGateway(): Promise<TestGateway> {
  const dir = await mkdtemp(join(tmpdir(), 'traffic-gateway-'));
  const configPath = join(dir, 'gateway.yaml');
  await writeFile(
    configPath,
    JSON.stringify({
      admin_keys: [{ key: KEYS.admin }],
      tenants: {
        acme: { keys: [{ key: KEYS.acme }] },
        globex: { keys: [{ key: KEYS.globex }] },
        initech: { keys: [{ key: REFUSED_TENANT_KEY }], limits: { max_queued_requests: 0 } },
      },
    }),
  );
  const gateway = await startTestGateway({}, { GATEWAY_CONFIG: configPath });
  return {
    ...gateway,
    stop: async () => {
      await gateway.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

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
    acme.chat.completions.create({ model: adapterModels.acme, messages: [{ role: 'user', content: CHAT_MESSAGE }], max_tokens: 8 }),
    globex.completions.create({ model: adapterModels.globex, prompt: REFERENCE.prompt, max_tokens: 8, temperature: 0 }),
    globex.completions.create({ model: BASE_MODEL, prompt: REFERENCE.prompt, max_tokens: 4, temperature: 0 }),
  ]);
  assert.equal(await status(gateway, 'sk-not-a-key', BASE_MODEL, 4), 401);
  assert.equal(await status(gateway, KEYS.acme, `${BASE_MODEL}+acme/no-such-adapter`, 4), 404);
  assert.equal(await status(gateway, REFUSED_TENANT_KEY, BASE_MODEL, 4), 429);
}

/**
 * A small fine-tuning job through the OpenAI API, run to success by the trainer beside the gateway: it moves
 * every trainer series (jobs by status, steps, losses, tokens, the finished job's duration).
 */
export async function runSmallFineTuningJob(gateway: TestGateway, trainer: TestTrainer): Promise<void> {
  const client = gateway.client(KEYS.acme);
  const upload = async (texts: string[], name: string) =>
    (await client.files.create({ file: await toFile(Buffer.from(asJsonl(texts)), name), purpose: 'fine-tune' })).id;
  const created = await client.fineTuning.jobs.create({
    model: BASE_MODEL,
    training_file: await upload(madeUpWordStories(12), 'train.jsonl'),
    validation_file: await upload(madeUpWordStories(4, 12), 'valid.jsonl'),
    seed: 1,
    method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 1, batch_size: 4 } } },
  });
  const finished = await waitForJob(client, created.id, jobFinished, trainer);
  assert.equal(finished.status, 'succeeded', JSON.stringify(finished.error));
  // The job may have finished after the trainer's last look; one more, begun now, counts it among the succeeded.
  await trainer.poll();
}

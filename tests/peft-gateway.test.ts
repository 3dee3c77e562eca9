import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bottleneckAdapterFiles, randomBottleneckAdapter } from '../src/adapters/bottleneck-writer.ts';
import { loraAdapterFiles, randomLoraAdapter, writeAdapterFiles } from '../src/adapters/lora-writer.ts';
import { ia3AdapterFiles, promptLearningAdapterFiles, randomIa3Adapter, randomPromptLearningAdapter } from '../src/adapters/peft-writers.ts';
import { Engine } from '../src/engine/engine.ts';
import { loadBaseModel } from '../src/model/load.ts';
import type { BaseModel } from '../src/model/types.ts';
import { startTestGateway, BASE_MODEL, KEYS, type TestGateway } from './support/gateway.ts';
import { STORIES_HF_DIR } from './support/models.ts';
import { referenceLogits, type ReferenceHooks } from './support/reference-decoder.ts';

let gateway: TestGateway;
let base: BaseModel;
// No BOS: stories260K attends to a leading BOS so strongly that a soft prompt placed before it barely shows.
const PROMPT = [403, 407, 261, 378];
const MAX_TOKENS = 6;

/** One adapter per family (and a second LoRA rank), with what the reference needs to decode it. */
const families: { name: string; family: string; files: () => Map<string, Uint8Array>; hooks?: () => ReferenceHooks }[] = [];

before(async () => {
  base = await loadBaseModel(STORIES_HF_DIR);
  const c = base.config;
  // A soft prompt as PEFT's text initialisation makes one: the embeddings of a few tokens of a story.
  const initText = [1, 376, 298, 315, 421, 395, 317, 426, 338];
  const embedding = base.weights.get('model.embed_tokens.weight')!.data;
  const prompt = {
    peftType: 'PROMPT_TUNING' as const,
    virtualTokens: initText.length,
    embeddings: Float32Array.from(initText.flatMap((id) => [...embedding.subarray(id * c.hiddenSize, (id + 1) * c.hiddenSize)])),
  };
  const prefix = randomPromptLearningAdapter(c, { peftType: 'PREFIX_TUNING', virtualTokens: 5, seed: 22, std: 1 });
  families.push(
    { name: 'lora', family: 'lora', files: () => loraAdapterFiles(randomLoraAdapter(c, { rank: 8, targetModules: ['q_proj', 'v_proj'], seed: 23, std: 0.2 })) },
    { name: 'dora', family: 'dora', files: () => loraAdapterFiles(randomLoraAdapter(c, { rank: 4, targetModules: ['q_proj', 'k_proj', 'down_proj'], seed: 24, std: 0.2, dora: true })) },
    { name: 'ia3', family: 'ia3', files: () => ia3AdapterFiles(randomIa3Adapter(c, { targetModules: ['k_proj', 'v_proj', 'down_proj'], feedforwardModules: ['down_proj'], seed: 25, std: 0.4 })) },
    { name: 'prompt', family: 'prompt_tuning', files: () => promptLearningAdapterFiles(prompt, c), hooks: () => ({ softPrompt: prompt.embeddings }) },
    { name: 'prefix', family: 'prefix_tuning', files: () => promptLearningAdapterFiles(prefix, c), hooks: () => ({ prefix: { tokens: 5, keyValues: prefix.embeddings } }) },
    { name: 'pfeiffer', family: 'seq_bn', files: () => bottleneckAdapterFiles(randomBottleneckAdapter(c, { kind: 'seq_bn', seed: 26, std: 0.2 }), c) },
    { name: 'houlsby', family: 'double_seq_bn', files: () => bottleneckAdapterFiles(randomBottleneckAdapter(c, { kind: 'double_seq_bn', seed: 27, std: 0.2 }), c) },
    { name: 'parallel', family: 'par_bn', files: () => bottleneckAdapterFiles(randomBottleneckAdapter(c, { kind: 'par_bn', seed: 28, std: 0.1 }), c) },
  );
  // Fewer slots than adapters: the families also take turns in slots and come back from the host cache.
  gateway = await startTestGateway({}, { MAX_LORA_RANK: '32', ADAPTER_SLOTS: '3' });
});

after(async () => {
  await gateway?.stop();
});

async function upload(path: string, files: Map<string, Uint8Array>, key: string = KEYS.acme): Promise<{ status: number; body: any }> {
  const form = new FormData();
  for (const [name, data] of files) form.append(name, new Blob([new Uint8Array(data)]), name);
  const response = await fetch(`${gateway.url}${path}`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: form });
  return { status: response.status, body: await response.json() };
}

async function completionText(model: string): Promise<string> {
  const completion = await gateway.client().completions.create({ model, prompt: PROMPT, max_tokens: MAX_TOKENS, temperature: 0 });
  return completion.choices[0].text;
}

/** The log-probability of each generated token, which shows an adapter's effect even where greedy text agrees. */
async function completionLogprobs(model: string): Promise<number[]> {
  const completion = await gateway.client().completions.create({ model, prompt: PROMPT, max_tokens: MAX_TOKENS, temperature: 0, logprobs: 1 });
  return completion.choices[0].logprobs!.token_logprobs!;
}

function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

test('every family is published over HTTP, listed with its family, and serves through the official client', async () => {
  for (const { name, family, files } of families) {
    const published = await upload(`/v1/adapters/acme/${name}`, files());
    assert.equal(published.status, 201, JSON.stringify(published.body));
    assert.equal(published.body.summary.family, family);
  }
  const models = await gateway.client().models.list();
  const listed = Object.fromEntries(models.data.map((m) => [m.id, (m as unknown as { adapter_family?: string }).adapter_family]));
  for (const { name, family } of families) assert.equal(listed[`${BASE_MODEL}+acme/${name}`], family);
  // Another tenant sees none of them, exactly as if they did not exist.
  const others = await gateway.client(KEYS.globex).models.list();
  assert.deepEqual(others.data.map((m) => m.id), [BASE_MODEL]);

  // Alone, one request at a time, then all together in one batch: the same tokens.
  const alone: string[] = [];
  for (const { name } of families) alone.push(await completionText(`${BASE_MODEL}+acme/${name}`));
  const together = await Promise.all(families.map(({ name }) => completionText(`${BASE_MODEL}+acme/${name}`)));
  assert.deepEqual(together, alone);

  // Soft prompts and prefixes go through the scheduler's prefill: greedy decoding equals the reference's.
  for (const [i, { name, hooks }] of families.entries()) {
    if (!hooks) continue;
    const ids: number[] = [];
    while (ids.length < MAX_TOKENS) ids.push(argmax(referenceLogits(base, [...PROMPT, ...ids], hooks())));
    const { tokenizer } = gateway.services;
    const continuation = tokenizer.decode([...PROMPT, ...ids]).slice(tokenizer.decode(PROMPT).length);
    assert.equal(alone[i], continuation, `${name} decodes as the reference does`);
  }
  const baseLogprobs = await completionLogprobs(BASE_MODEL);
  for (const { name } of families) {
    const logprobs = await completionLogprobs(`${BASE_MODEL}+acme/${name}`);
    assert.ok(Math.abs(logprobs[0] - baseLogprobs[0]) > 1e-3, `${name} changes the output distribution`);
  }

  const ready = await (await fetch(`${gateway.url}/ready`)).json();
  assert.equal(ready.checksum, `sha256:${base.checksum}`, 'the base weights are what was loaded');
  const metrics = await (await fetch(`${gateway.url}/metrics`)).text();
  for (const { name } of families) {
    assert.match(metrics, new RegExp(`gateway_requests_total\\{[^}]*adapter="acme/${name}@1"[^}]*\\} [1-9]`), `${name} counted per adapter`);
  }
  assert.match(metrics, /vllm:lora_requests_info\{[^}]*max_lora="3"/);
});

test('uploads a family cannot serve exactly are refused naming the option, and leave nothing behind', async () => {
  const c = base.config;
  const refusals: [string, Map<string, Uint8Array>, RegExp][] = [
    ['ia3-gate-input', ia3AdapterFiles(randomIa3Adapter(c, { targetModules: ['gate_proj'], feedforwardModules: ['gate_proj'], seed: 1 })), /"feedforward_modules" includes model\.layers\.0\.mlp\.gate_proj/],
    ['bn-ln-after', bottleneckAdapterFiles({ ...randomBottleneckAdapter(c, { kind: 'seq_bn', seed: 2 }), options: { ln_after: true } }, c), /"config\.ln_after": true is not supported/],
    ['bn-ln-dropped', bottleneckAdapterFiles({ ...randomBottleneckAdapter(c, { kind: 'seq_bn', seed: 3 }), options: { original_ln_after: false } }, c), /"config\.original_ln_after": false is not supported/],
    ['bn-learned-scaling', bottleneckAdapterFiles({ ...randomBottleneckAdapter(c, { kind: 'par_bn', seed: 4 }), options: { scaling: 'learned' } }, c), /"config\.scaling": "learned"/],
    ['bn-too-wide', bottleneckAdapterFiles(randomBottleneckAdapter(c, { kind: 'par_bn', seed: 5, options: { reduction_factor: 1 } }), c), /bottleneck width\) 64 exceeds this server's MAX_LORA_RANK of 32/],
  ];
  const prefix = promptLearningAdapterFiles(randomPromptLearningAdapter(c, { peftType: 'PREFIX_TUNING', virtualTokens: 2, seed: 6 }), c);
  const config = JSON.parse(new TextDecoder().decode(prefix.get('adapter_config.json')!));
  prefix.set('adapter_config.json', new TextEncoder().encode(JSON.stringify({ ...config, token_dim: 64 })));
  refusals.push(['prefix-wrong-width', prefix, /"token_dim": 64 does not match the base model, whose key\/value width per layer is 32/]);
  for (const [name, files, message] of refusals) {
    const answer = await upload(`/v1/adapters/acme/${name}`, files);
    assert.equal(answer.status, 400, `${name}: ${JSON.stringify(answer.body)}`);
    assert.match(answer.body.error.message, message);
    assert.equal(answer.body.error.type, 'invalid_request_error');
    assert.equal((await fetch(`${gateway.url}/v1/models/${BASE_MODEL}+acme/${name}`, { headers: { authorization: `Bearer ${KEYS.acme}` } })).status, 404);
  }
});

test('the gateway counts an adapter\'s virtual tokens against max_model_len', async () => {
  const model = `${BASE_MODEL}+acme/prefix`;
  const listed = await (await fetch(`${gateway.url}/v1/models/${model}`, { headers: { authorization: `Bearer ${KEYS.acme}` } })).json();
  const contextLength: number = listed.max_model_len;
  const fitsWithoutPrefix = contextLength - PROMPT.length;
  const base = await gateway.client().completions.create({ model: BASE_MODEL, prompt: PROMPT, max_tokens: fitsWithoutPrefix, temperature: 0, stop: ['.'] });
  assert.ok(base.choices[0].text.length > 0, 'the base model accepts the request');
  const refused = await fetch(`${gateway.url}/v1/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${KEYS.acme}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt: PROMPT, max_tokens: fitsWithoutPrefix }),
  });
  assert.equal(refused.status, 400);
  const { error } = await refused.json();
  assert.equal(error.code, 'context_length_exceeded');
  assert.match(error.message, new RegExp(`${PROMPT.length} in the prompt, 5 virtual tokens of the adapter, ${fitsWithoutPrefix} for the completion`));
  // Without max_tokens, chat fills what the context has left after the prefix instead of being refused.
  const chat = await gateway.client().chat.completions.create({ model, messages: [{ role: 'user', content: 'Once upon a time' }], temperature: 0 });
  assert.ok(['stop', 'length'].includes(chat.choices[0].finish_reason));
});

test('virtual tokens count against the context: a prompt they push past it is refused, one that fits stops at the limit', async () => {
  const c = base.config;
  const root = await mkdtemp(join(tmpdir(), 'peft-context-'));
  await writeAdapterFiles(join(root, 'prefix'), promptLearningAdapterFiles(randomPromptLearningAdapter(c, { peftType: 'PREFIX_TUNING', virtualTokens: 4, seed: 31 }), c));
  const engine = await Engine.start({ modelPath: STORIES_HF_DIR, maxBatch: 2, adapterSlots: 1, maxLoraRank: 8, hostCacheBytes: 1 << 20, maxQueue: 4, maxPositions: 32 });
  try {
    const request = (length: number) => ({
      promptIds: [1, ...new Array<number>(length - 1).fill(403)],
      adapter: { key: 't/prefix@1', path: join(root, 'prefix') },
      sampling: { temperature: 0, topP: 1, topK: 0, presencePenalty: 0, frequencyPenalty: 0 },
      maxTokens: 100,
      stopTokenIds: [],
    });
    await assert.rejects(engine.generate(request(28)), /adds 4 virtual tokens; this model accepts 1 to 31 in all/);
    const fits = await engine.generate(request(20));
    assert.equal(fits.reason, 'length');
    assert.equal(fits.completionTokens, 32 - 4 - 20, 'the prefix takes 4 of the 32 positions');
  } finally {
    await engine.close();
    await rm(root, { recursive: true, force: true });
  }
});

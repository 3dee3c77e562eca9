import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import type { ChatCompletionChunk } from 'openai/resources/chat/completions';
import { loraAdapterFiles, randomLoraAdapter } from '../src/adapters/lora-writer.ts';
import { loadTokenizer } from '../src/tokenizer/load.ts';
import { stepUntilStreaming } from './support/engine-steps.ts';
import { BASE_MODEL, KEYS, startTestGateway, type TestGateway } from './support/gateway.ts';
import { REFERENCE, STORIES_HF_DIR } from './support/models.ts';

const ADAPTER_MODEL = `${BASE_MODEL}+acme/storyteller`;
const USER_PROMPT = [{ role: 'user' as const, content: REFERENCE.prompt }];

let gateway: TestGateway;
let client: OpenAI;
/** The published greedy continuation of the prompt, decoded by a tokenizer of our own, not the server's. */
let expected: string;

before(async () => {
  gateway = await startTestGateway();
  client = gateway.client();
  const tokenizer = await loadTokenizer(STORIES_HF_DIR, []);
  const promptText = tokenizer.decode(REFERENCE.promptIds);
  assert.equal(promptText, REFERENCE.prompt);
  expected = tokenizer.decode([...REFERENCE.promptIds, ...REFERENCE.greedyIds]).slice(promptText.length);
  assert.ok(REFERENCE.text.endsWith(expected));

  const config = gateway.services.engine.info.config;
  const spec = randomLoraAdapter(config, { rank: 8, targetModules: ['q_proj', 'v_proj', 'down_proj'], seed: 7, std: 0.2 });
  await gateway.services.store.publish('acme', 'storyteller', loraAdapterFiles(spec));
});

after(() => gateway.stop());

/** A raw SSE body's `data:` payloads, in order. */
function ssePayloads(body: string): string[] {
  return body
    .split('\n\n')
    .filter((event) => event.startsWith('data: '))
    .map((event) => event.slice('data: '.length));
}

describe('chat completions', () => {
  test('greedy decoding continues the prompt with the published reference text', async () => {
    const response = await client.chat.completions.create({ model: BASE_MODEL, messages: USER_PROMPT, temperature: 0, max_tokens: 32 });
    assert.match(response.id, /^chatcmpl-/);
    assert.equal(response.object, 'chat.completion');
    assert.equal(response.model, BASE_MODEL);
    assert.ok(Math.abs(response.created - Date.now() / 1000) < 60);
    assert.match(response.system_fingerprint ?? '', /^fp_/);
    assert.deepEqual(response.choices, [
      { index: 0, message: { role: 'assistant', content: expected, refusal: null }, logprobs: null, finish_reason: 'length' },
    ]);
    assert.deepEqual(response.usage, { prompt_tokens: REFERENCE.promptIds.length, completion_tokens: 32, total_tokens: REFERENCE.promptIds.length + 32 });
  });

  test('max_completion_tokens limits the completion like max_tokens', async () => {
    const response = await client.chat.completions.create({ model: BASE_MODEL, messages: USER_PROMPT, temperature: 0, max_completion_tokens: 5 });
    assert.equal(response.usage?.completion_tokens, 5);
    assert.ok(expected.startsWith(response.choices[0].message.content ?? '<none>'));
  });

  test('streamed deltas add up to the non-streamed answer, role first, finish reason and usage last', async () => {
    const stream = await client.chat.completions.create({
      model: BASE_MODEL,
      messages: USER_PROMPT,
      temperature: 0,
      max_tokens: 32,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks: ChatCompletionChunk[] = [];
    for await (const chunk of stream) chunks.push(chunk);

    assert.deepEqual(chunks[0].choices[0].delta, { role: 'assistant', content: '' });
    const usageChunk = chunks.at(-1)!;
    assert.deepEqual(usageChunk.choices, []);
    assert.deepEqual(usageChunk.usage, { prompt_tokens: 5, completion_tokens: 32, total_tokens: 37 });
    const choiceChunks = chunks.slice(0, -1);
    assert.ok(choiceChunks.every((chunk) => chunk.usage === null && chunk.object === 'chat.completion.chunk' && chunk.id === usageChunk.id));
    const finish = choiceChunks.at(-1)!.choices[0];
    assert.deepEqual([finish.delta, finish.finish_reason], [{}, 'length']);
    assert.ok(choiceChunks.slice(0, -1).every((chunk) => chunk.choices[0].finish_reason === null));
    assert.equal(choiceChunks.map((chunk) => chunk.choices[0].delta.content ?? '').join(''), expected);
  });

  test('the raw event stream is text/event-stream and ends with [DONE]', async () => {
    const response = await fetch(`${gateway.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${KEYS.acme}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: BASE_MODEL, messages: USER_PROMPT, temperature: 0, max_tokens: 8, stream: true }),
    });
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('content-type'), 'text/event-stream');
    assert.equal(response.headers.get('cache-control'), 'no-cache');
    const payloads = ssePayloads(await response.text());
    assert.equal(payloads.at(-1), '[DONE]');
    const chunks = payloads.slice(0, -1).map((payload) => JSON.parse(payload));
    // Without include_usage there is no usage field at all.
    assert.ok(chunks.every((chunk) => !('usage' in chunk)));
    assert.ok(expected.startsWith(chunks.map((chunk) => chunk.choices[0].delta.content ?? '').join('')));
  });

  test('n choices with a seed are indexed, differ from each other and are reproducible', async () => {
    const request = { model: BASE_MODEL, messages: USER_PROMPT, temperature: 1, max_tokens: 24, n: 2, seed: 1234 };
    const first = await client.chat.completions.create(request);
    const second = await client.chat.completions.create(request);
    assert.deepEqual(first.choices.map((choice) => choice.index), [0, 1]);
    const contents = first.choices.map((choice) => choice.message.content);
    assert.notEqual(contents[0], contents[1]);
    assert.deepEqual(second.choices.map((choice) => choice.message.content), contents);
    assert.equal(first.usage?.prompt_tokens, 5);
    assert.equal(first.usage?.completion_tokens, first.choices.length * 24);

    const stream = await client.chat.completions.create({ ...request, stream: true });
    const streamed = ['', ''];
    const finishReasons: (string | null)[] = [null, null];
    for await (const chunk of stream) {
      for (const choice of chunk.choices) {
        streamed[choice.index] += choice.delta.content ?? '';
        if (choice.finish_reason) finishReasons[choice.index] = choice.finish_reason;
      }
    }
    assert.deepEqual(streamed, contents);
    assert.deepEqual(finishReasons, ['length', 'length']);
  });

  test('a stop string cuts the text before it and finishes with "stop"', async () => {
    const cut = expected.indexOf('Lily');
    assert.ok(cut > 0);
    const response = await client.chat.completions.create({ model: BASE_MODEL, messages: USER_PROMPT, temperature: 0, max_tokens: 32, stop: ['Lily', 'dragon'] });
    assert.equal(response.choices[0].message.content, expected.slice(0, cut));
    assert.equal(response.choices[0].finish_reason, 'stop');

    const stream = await client.chat.completions.create({ model: BASE_MODEL, messages: USER_PROMPT, temperature: 0, max_tokens: 32, stop: 'Lily', stream: true });
    let text = '';
    let finishReason: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? '';
      finishReason = chunk.choices[0]?.finish_reason ?? finishReason;
    }
    assert.deepEqual([text, finishReason], [expected.slice(0, cut), 'stop']);
  });

  test('logprobs report each sampled token, which under greedy decoding is the most likely one', async () => {
    const response = await client.chat.completions.create({ model: BASE_MODEL, messages: USER_PROMPT, temperature: 0, max_tokens: 16, logprobs: true, top_logprobs: 3 });
    const { content, logprobs } = { content: response.choices[0].message.content, logprobs: response.choices[0].logprobs };
    const tokens = logprobs?.content ?? [];
    assert.equal(tokens.length, 16);
    assert.equal(tokens.map((token) => token.token).join(''), content);
    for (const token of tokens) {
      assert.ok(token.logprob <= 0);
      assert.equal(token.top_logprobs.length, 3);
      assert.deepEqual(token.top_logprobs[0], { token: token.token, logprob: token.logprob, bytes: token.bytes });
      assert.equal(Buffer.from(token.bytes ?? []).toString('utf8'), token.token);
      assert.ok(token.top_logprobs[1].logprob <= token.top_logprobs[0].logprob);
    }

    // Streamed, each token arrives with the chunk that carries its text.
    const stream = await client.chat.completions.create({ model: BASE_MODEL, messages: USER_PROMPT, temperature: 0, max_tokens: 16, logprobs: true, stream: true });
    const streamedTokens: OpenAI.ChatCompletionTokenLogprob[] = [];
    for await (const chunk of stream) {
      const choice = chunk.choices[0];
      if (choice?.delta.content) assert.equal(choice.logprobs?.content?.map((token) => token.token).join(''), choice.delta.content);
      streamedTokens.push(...(choice?.logprobs?.content ?? []));
    }
    assert.deepEqual(streamedTokens.map((token) => [token.token, token.logprob]), tokens.map((token) => [token.token, token.logprob]));
  });

  test('tokens hidden by a stop string are not reported in logprobs', async () => {
    // The reference continues " named", " Lily", ".", " She": the stop cuts " Lily" after " L" and hides the rest.
    const stop = 'ily. She';
    const response = await client.chat.completions.create({ model: BASE_MODEL, messages: USER_PROMPT, temperature: 0, max_tokens: 32, stop, logprobs: true });
    const text = response.choices[0].message.content ?? '';
    assert.equal(text, expected.slice(0, expected.indexOf(stop)));
    const tokens = (response.choices[0].logprobs?.content ?? []).map((token) => token.token);
    assert.equal(tokens.at(-1), ' Lily');
    assert.ok(tokens.join('').startsWith(text));
    assert.equal(response.usage?.completion_tokens, tokens.length + 2);
  });

  test('a tenant adapter serves under its model id and changes the output', async () => {
    const response = await client.chat.completions.create({ model: ADAPTER_MODEL, messages: USER_PROMPT, temperature: 0, max_tokens: 32 });
    assert.equal(response.model, ADAPTER_MODEL);
    assert.notEqual(response.choices[0].message.content, expected);
    assert.equal(response.usage?.completion_tokens, 32);
    // Other tenants cannot see it.
    await assert.rejects(
      gateway.client(KEYS.globex).chat.completions.create({ model: ADAPTER_MODEL, messages: USER_PROMPT, max_tokens: 4 }),
      (error) => error instanceof OpenAI.NotFoundError && error.param === 'model',
    );
  });

  test('a client that disconnects mid-stream cancels its generation', async () => {
    const { engine } = gateway.services;
    // Paused, the engine samples one token per step the test allows: the generation is still running when
    // the client leaves, and goes no further than the steps run until the server notices.
    engine.pause();
    const streaming = client.chat.completions.create({ model: BASE_MODEL, messages: USER_PROMPT, max_tokens: 500, temperature: 0, stream: true });
    let responseId = '';
    try {
      await stepUntilStreaming(engine);
      for await (const chunk of await streaming) {
        responseId = chunk.id;
        assert.equal(engine.stats.running, 1);
        // Leaving the loop aborts the HTTP request: the connection closes mid-stream.
        break;
      }
      while (engine.pendingRequests > 0) await engine.step();
    } finally {
      engine.resume();
    }
    assert.equal(engine.stats.running, 0);
    const span = gateway.traces.getFinishedSpans().find((s) => s.attributes['gen_ai.response.id'] === responseId);
    assert.deepEqual(span?.attributes['gen_ai.response.finish_reasons'], ['cancelled']);
    assert.ok(Number(span?.attributes['gen_ai.usage.output_tokens']) < 500);
  });
});

describe('completions', () => {
  test('greedy decoding continues the prompt with the published reference text', async () => {
    const response = await client.completions.create({ model: BASE_MODEL, prompt: REFERENCE.prompt, temperature: 0, max_tokens: 32 });
    assert.match(response.id, /^cmpl-/);
    assert.equal(response.object, 'text_completion');
    assert.equal(response.model, BASE_MODEL);
    assert.deepEqual(response.choices, [{ index: 0, text: expected, logprobs: null, finish_reason: 'length' }]);
    assert.deepEqual(response.usage, { prompt_tokens: 5, completion_tokens: 32, total_tokens: 37 });
  });

  test('a prompt of token ids is used as given', async () => {
    const response = await client.completions.create({ model: BASE_MODEL, prompt: REFERENCE.promptIds, temperature: 0, max_tokens: 32 });
    assert.equal(response.choices[0].text, expected);
  });

  test('without max_tokens, OpenAI\'s default of 16 tokens applies', async () => {
    const response = await client.completions.create({ model: BASE_MODEL, prompt: REFERENCE.prompt, temperature: 0 });
    assert.equal(response.usage?.completion_tokens, 16);
  });

  test('streamed text adds up to the non-streamed text', async () => {
    const stream = await client.completions.create({
      model: BASE_MODEL,
      prompt: REFERENCE.prompt,
      temperature: 0,
      max_tokens: 32,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let finishReason: string | null = null;
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      assert.equal(chunk.object, 'text_completion');
      text += chunk.choices[0]?.text ?? '';
      finishReason = chunk.choices[0]?.finish_reason ?? finishReason;
      usage = chunk.usage ?? usage;
    }
    assert.deepEqual([text, finishReason], [expected, 'length']);
    assert.deepEqual(usage, { prompt_tokens: 5, completion_tokens: 32, total_tokens: 37 });
  });

  test('logprobs give parallel arrays whose tokens spell the text at their offsets', async () => {
    const response = await client.completions.create({ model: BASE_MODEL, prompt: REFERENCE.prompt, temperature: 0, max_tokens: 12, logprobs: 2 });
    const { text, logprobs } = response.choices[0];
    const { tokens = [], token_logprobs = [], top_logprobs = [], text_offset = [] } = logprobs ?? {};
    assert.equal(tokens.length, 12);
    assert.equal(tokens.join(''), text);
    tokens.forEach((token, i) => {
      assert.equal(text.slice(text_offset[i], text_offset[i] + token.length), token);
      assert.equal(Object.keys(top_logprobs[i]).length, 2);
      // Greedy: the sampled token is the most likely alternative.
      const best = Object.entries(top_logprobs[i]).sort((a, b) => b[1] - a[1])[0];
      assert.deepEqual(best, [token, token_logprobs[i]]);
    });
  });
});

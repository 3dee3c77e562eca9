import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readGguf } from '../src/formats/gguf.ts';
import { ChatTemplateError, chatTemplateConfigFromGguf, createChatFormatter } from '../src/tokenizer/chat-template.ts';
import { readTokenizerConfig } from '../src/tokenizer/huggingface.ts';
import { loadTokenizer } from '../src/tokenizer/load.ts';
import { REFERENCE, STORIES_GGUF, STORIES_HF_DIR } from './support/models.ts';

const storiesConfig = await readTokenizerConfig(STORIES_HF_DIR);

test("stories260K-hf's template: <s>, then the trimmed contents joined by newlines", () => {
  const format = createChatFormatter(storiesConfig);
  const prompt = format([
    { role: 'system', content: 'A story.' },
    { role: 'user', content: '  Once upon a time  ' },
  ]);
  assert.deepEqual(prompt, { text: 'A story.\nOnce upon a time', addBos: true }, 'the leading <s> becomes addBos');
});

test('a rendered prompt encodes to the ids the model was trained on, with one BOS', async () => {
  const tokenizer = await loadTokenizer(STORIES_HF_DIR, []);
  const { text, addBos } = createChatFormatter(storiesConfig)([{ role: 'user', content: REFERENCE.prompt }]);
  assert.deepEqual(tokenizer.encode(text, { addBos }), REFERENCE.promptIds);
});

test('models without a chat template get the documented plain format', () => {
  const messages = [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'Hello' },
  ];
  const expected = { text: 'system: Be brief.\nuser: Hello\nassistant:' };
  assert.deepEqual(createChatFormatter(null)(messages), expected);
  assert.deepEqual(createChatFormatter({ bos_token: '<s>' })(messages), expected);
});

test('a template that does not start with BOS is left whole and asks for no BOS', () => {
  const chatml =
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}" +
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  const prompt = createChatFormatter({ chat_template: chatml, bos_token: '<s>', eos_token: '<|im_end|>' })([
    { role: 'user', content: 'hi' },
  ]);
  assert.deepEqual(prompt, { text: '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n', addBos: false });
});

test('named templates use the "default" one', () => {
  const format = createChatFormatter({
    chat_template: [
      { name: 'tool_use', template: 'tools' },
      { name: 'default', template: '{{ messages[0].content }}{{ eos_token }}' },
    ],
    eos_token: { content: '</s>' },
  });
  assert.deepEqual(format([{ role: 'user', content: 'x' }]), { text: 'x</s>', addBos: false });
});

test('a broken template fails at load with a clear error', () => {
  assert.throws(
    () => createChatFormatter({ chat_template: '{% for message in messages %}{{ message.content }}' }),
    (error: unknown) => error instanceof ChatTemplateError && /chat_template does not parse/.test(error.message),
  );
  assert.throws(() => createChatFormatter({ chat_template: 42 }), ChatTemplateError);
});

test("a template's own refusal reaches the caller as a ChatTemplateError", () => {
  const format = createChatFormatter({
    chat_template:
      "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with a user message') }}{% endif %}ok",
  });
  assert.throws(
    () => format([{ role: 'assistant', content: 'hi' }]),
    (error: unknown) =>
      error instanceof ChatTemplateError && /failed on these messages: .*must start with a user message/.test(error.message),
  );
  assert.deepEqual(format([{ role: 'user', content: 'hi' }]), { text: 'ok', addBos: false });
});

test('GGUF chat templates: none in stories260K; one in metadata renders like the Hugging Face config', async () => {
  const { metadata } = await readGguf(STORIES_GGUF);
  assert.equal(chatTemplateConfigFromGguf(metadata), null);
  const withTemplate = new Map(metadata).set('tokenizer.chat_template', storiesConfig!.chat_template);
  const config = chatTemplateConfigFromGguf(withTemplate);
  assert.deepEqual(config, { chat_template: storiesConfig!.chat_template, bos_token: '<s>', eos_token: '</s>' });
  const messages = [
    { role: 'user', content: 'a' },
    { role: 'user', content: 'b' },
  ];
  assert.deepEqual(createChatFormatter(config)(messages), createChatFormatter(storiesConfig)(messages));
});

test('a chat_template.jinja file next to tokenizer_config.json is the template', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'chat-template-'));
  try {
    await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>' }));
    await writeFile(join(dir, 'chat_template.jinja'), '{{ bos_token }}[{{ messages | length }}]');
    const config = await readTokenizerConfig(dir);
    assert.deepEqual(createChatFormatter(config)([{ role: 'user', content: 'x' }]), { text: '[1]', addBos: true });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

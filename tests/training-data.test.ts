import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chatPromptIds, rawPromptIds } from '../src/api/prompt.ts';
import { createChatFormatter } from '../src/tokenizer/chat-template.ts';
import { readTokenizerConfig } from '../src/tokenizer/huggingface.ts';
import { loadTokenizer } from '../src/tokenizer/load.ts';
import { DatasetError, MIN_TRAINING_EXAMPLES, parseTrainingJsonl } from '../src/training/data/jsonl-examples.ts';
import { tokenizeExamples } from '../src/training/data/tokenize-examples.ts';
import { STORIES_HF_DIR } from './support/models.ts';

const tokenizer = await loadTokenizer(STORIES_HF_DIR, [2]);
const storiesChat = createChatFormatter(await readTokenizerConfig(STORIES_HF_DIR));
const EOS = 2;

const jsonl = (rows: unknown[]) => rows.map((row) => JSON.stringify(row)).join('\n') + '\n';
const repeat = <T>(row: T, count = MIN_TRAINING_EXAMPLES) => Array.from({ length: count }, () => row);

function problemsOf(text: string, minExamples = 1): string {
  try {
    parseTrainingJsonl(text, minExamples);
  } catch (error) {
    assert.ok(error instanceof DatasetError);
    return error.message;
  }
  assert.fail('the file was accepted');
}

test('the three formats parse; blank lines are skipped; weight 0 marks an assistant message as context', () => {
  const chat = parseTrainingJsonl(
    jsonl(repeat({ messages: [{ role: 'developer', content: 'Tell stories.' }, { role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Once', weight: 0 }, { role: 'user', content: 'More' }, { role: 'assistant', content: 'upon' }] })) + '\n\n',
  );
  assert.equal(chat.length, MIN_TRAINING_EXAMPLES);
  assert.deepEqual(chat[0], {
    format: 'chat',
    line: 1,
    messages: [
      { role: 'system', content: 'Tell stories.', trained: false },
      { role: 'user', content: 'Hi', trained: false },
      { role: 'assistant', content: 'Once', trained: false },
      { role: 'user', content: 'More', trained: false },
      { role: 'assistant', content: 'upon', trained: true },
    ],
  });
  assert.deepEqual(parseTrainingJsonl(jsonl(repeat({ prompt: 'A', completion: 'B' })))[9], { format: 'prompt_completion', line: 10, prompt: 'A', completion: 'B' });
  assert.deepEqual(parseTrainingJsonl(jsonl([{ text: 'x' }]), 1), [{ format: 'text', line: 1, text: 'x' }]);
});

test('every kind of bad line is refused with its line number and the problem, and nothing is returned', () => {
  const good = { messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello' }] };
  const cases: Array<[unknown, RegExp]> = [
    ['[1, 2]', /line 2: is not a JSON object \(got an array\)/],
    ['{"messages": [', /line 2: is not valid JSON/],
    [{ messages: [] }, /line 2: "messages" is empty/],
    [{ messages: 'hi' }, /line 2: "messages" must be an array/],
    [{ foo: 1 }, /line 2: has no "messages", "prompt"\/"completion" or "text"/],
    [{ messages: [{ role: 'bot', content: 'x' }] }, /line 2: messages\[0\] has an unknown role; expected one of system, developer, user, assistant/],
    [{ messages: [{ role: 'user', content: 'x', extra: 1 }] }, /line 2: messages\[0\] has the unknown key "extra"/],
    [{ messages: good.messages, tools: [] }, /line 2: unknown key "tools"/],
    [{ messages: [{ role: 'user', content: 'x' }] }, /line 2: has no assistant message/],
    [{ messages: [{ role: 'user', content: '  ' }, { role: 'assistant', content: 'y' }] }, /line 2: messages\[0\]\.content is empty/],
    [{ messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: 'y', weight: 0 }] }, /line 2: every assistant message has weight 0/],
    [{ messages: [{ role: 'user', content: 'x', weight: 1 }, { role: 'assistant', content: 'y' }] }, /only assistant messages may have/],
    [{ messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: 'y', weight: 0.5 }] }, /weight must be 0 or 1/],
    [{ prompt: 'a' }, /line 2: has "prompt" but no "completion"/],
    [{ prompt: 'a', completion: '' }, /line 2: "completion" is empty/],
    [{ text: 'a' }, /line 2: is a text \(\{"text"\}\) example, but line 1 is chat/],
  ];
  for (const [line, expected] of cases) {
    const text = `${JSON.stringify(good)}\n${typeof line === 'string' ? line : JSON.stringify(line)}\n`;
    assert.match(problemsOf(text), expected, `for ${JSON.stringify(line)}`);
  }
  assert.match(problemsOf(jsonl([{ text: 'one' }]), MIN_TRAINING_EXAMPLES), /the file has 1 example; at least 10 are needed/);
  const many = problemsOf(Array.from({ length: 8 }, () => '{').join('\n'));
  assert.match(many, /^line 1: .*line 5: is not valid JSON; and 3 more problems$/);
});

test('error messages never quote the training data', () => {
  const secret = 'confidential-payload-123';
  const message = problemsOf(`{"messages": [{"role": "${secret}", "content": "x"}]}\n{"text": "${secret}\n`);
  assert.doesNotMatch(message, /payload-123/);
});

test('chat: the prompt is exactly what serving feeds the model; loss on the trained assistant turns and EOS only', () => {
  const messages = [
    { role: 'user', content: 'Once upon a time' },
    { role: 'assistant', content: 'there was a dog', weight: 0 },
    { role: 'user', content: 'What next?' },
    { role: 'assistant', content: 'The dog ran.' },
  ];
  const examples = parseTrainingJsonl(jsonl([{ messages }]), 1);
  const { sequences } = tokenizeExamples(examples, { tokenizer, formatChat: storiesChat, maxLength: 512 });
  assert.equal(sequences.length, 1);
  const [{ tokens, lossMask }] = sequences;
  // The serving path: what /v1/chat/completions would feed the model for the conversation so far.
  const served = chatPromptIds(storiesChat, tokenizer, messages.slice(0, 3).map(({ role, content }) => ({ role, content })));
  assert.deepEqual([...tokens.slice(0, served.length)], served);
  assert.ok([...lossMask.slice(0, served.length)].every((bit) => bit === 0), 'no loss on the prompt, nor on the weight-0 answer');
  const targets = [...tokens].filter((_, i) => lossMask[i] === 1);
  assert.equal(targets.at(-1), EOS);
  // The template joins messages with "\n": the answer is learned as the template writes it after the prompt.
  assert.equal(tokenizer.decode(targets.slice(0, -1)), '\nThe dog ran.');
});

test('chat: two trained turns share one sequence when the first is a prefix of the second', () => {
  const formatChat = createChatFormatter({
    bos_token: '<s>',
    eos_token: '</s>',
    chat_template: "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}",
  });
  const messages = [
    { role: 'user', content: 'Hi' },
    { role: 'assistant', content: 'Hello' },
    { role: 'user', content: 'Bye' },
    { role: 'assistant', content: 'Goodbye' },
  ];
  const { sequences } = tokenizeExamples(parseTrainingJsonl(jsonl([{ messages }]), 1), { tokenizer, formatChat, maxLength: 512 });
  assert.equal(sequences.length, 1, 'the first turn ends with </s> exactly as the template writes it, so it is a prefix');
  const { tokens, lossMask } = sequences[0];
  const spans: string[] = [];
  let current: number[] = [];
  for (let i = 0; i < tokens.length; i++) {
    if (lossMask[i]) current.push(tokens[i]);
    else if (current.length) (spans.push(tokenizer.decode(current)), (current = []));
  }
  if (current.length) spans.push(tokenizer.decode(current));
  assert.deepEqual(spans.map((s) => s.trim()), ['Hello', 'Goodbye']);
  assert.deepEqual([...tokens].filter((id, i) => lossMask[i] && id === EOS).length, 2, 'each turn learns to stop');
});

test('prompt/completion: the prompt as the completions API encodes it; text: loss on every token after the first', () => {
  const [pc] = tokenizeExamples(parseTrainingJsonl(jsonl([{ prompt: 'Once upon a time', completion: ' there was a cat' }]), 1), {
    tokenizer, formatChat: storiesChat, maxLength: 512,
  }).sequences;
  const prompt = rawPromptIds(tokenizer, 'Once upon a time', 'prompt');
  assert.deepEqual([...pc.tokens.slice(0, prompt.length)], prompt);
  assert.equal(tokenizer.decode([...pc.tokens]), 'Once upon a time there was a cat');
  assert.equal(pc.lossMask.slice(prompt.length).every((bit) => bit === 1), true);

  const [text] = tokenizeExamples(parseTrainingJsonl(jsonl([{ text: 'The cat sat.' }]), 1), { tokenizer, formatChat: storiesChat, maxLength: 512 }).sequences;
  assert.deepEqual([...text.tokens], [...tokenizer.encode('The cat sat.'), EOS]);
  assert.deepEqual([...text.lossMask], [0, ...Array(text.tokens.length - 1).fill(1)]);
});

test('max_length: cut when a target survives, refused with the line when the prompt alone fills it', () => {
  const story = parseTrainingJsonl(jsonl([{ text: 'a long story about a cat and a dog' }]), 1);
  const examples = parseTrainingJsonl(jsonl([{ prompt: 'A cat', completion: ' ran' }, { prompt: 'Once upon a time there was', completion: ' a cat' }]), 1);
  const promptLength = tokenizer.encode('Once upon a time there was').length;
  const cut = tokenizeExamples(story, { tokenizer, formatChat: storiesChat, maxLength: 4 });
  assert.equal(cut.truncated, 1);
  assert.equal(cut.sequences[0].tokens.length, 4);
  assert.equal(cut.targetTokens, 3);
  assert.throws(
    () => tokenizeExamples(examples, { tokenizer, formatChat: storiesChat, maxLength: promptLength }),
    (error: Error) => error instanceof DatasetError && new RegExp(`^line 2: its prompt alone is ${promptLength} tokens`).test(error.message),
  );
});

/**
 * Quick checks from the shell: generate text from a base model, optionally through an adapter of any served
 * family (a PEFT or AdapterHub directory).
 *   npm run generate -- --model PATH [--adapter DIR [--max-rank R]] --prompt TEXT [--max-tokens N] [--temperature T] [--quantize q8|q4] [--json]
 */
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Engine } from '../engine/engine.ts';
import { TextGenerator } from '../serving/text-generation.ts';
import { loadTokenizer } from '../tokenizer/load.ts';

/** Slot size for the adapter: any LoRA rank and the bottleneck width of AdapterHub's default reduction factors. */
const DEFAULT_MAX_RANK = 64;

const USAGE = `usage: npm run generate -- --model PATH [--adapter DIR [--max-rank R]] --prompt TEXT [--max-tokens N] [--temperature T]
                            [--top-p P] [--top-k K] [--seed S] [--threads N] [--quantize q8|q4] [--json]
  --max-rank  the largest LoRA rank or bottleneck width the adapter slot holds (default ${DEFAULT_MAX_RANK})`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      model: { type: 'string' },
      adapter: { type: 'string' },
      'max-rank': { type: 'string', default: String(DEFAULT_MAX_RANK) },
      prompt: { type: 'string' },
      'max-tokens': { type: 'string', default: '64' },
      temperature: { type: 'string', default: '0' },
      'top-p': { type: 'string', default: '1' },
      'top-k': { type: 'string', default: '0' },
      seed: { type: 'string' },
      threads: { type: 'string' },
      quantize: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help || !values.model || values.prompt === undefined) {
    console.error(USAGE);
    process.exitCode = values.help ? 0 : 2;
    return;
  }
  const number = (name: keyof typeof values) => {
    const value = Number(values[name]);
    if (!Number.isFinite(value)) throw new Error(`--${name} must be a number, got "${values[name]}"`);
    return value;
  };
  if (values.quantize !== undefined && values.quantize !== 'q8' && values.quantize !== 'q4') {
    throw new Error(`--quantize must be q8 or q4, got "${values.quantize}"`);
  }
  const modelPath = resolve(values.model);
  const engine = await Engine.start({
    modelPath,
    maxBatch: 1,
    adapterSlots: values.adapter ? 1 : 0,
    maxLoraRank: number('max-rank'),
    hostCacheBytes: 1 << 30,
    maxQueue: 1,
    threads: values.threads ? number('threads') : undefined,
    quantize: values.quantize,
  });
  try {
    const tokenizer = await loadTokenizer(modelPath, engine.info.config.eosTokenIds);
    const promptIds = tokenizer.encode(values.prompt);
    const adapterPath = values.adapter ? resolve(values.adapter) : null;
    const result = await new TextGenerator(engine, tokenizer).generate({
      promptIds,
      adapter: adapterPath ? { key: adapterPath, path: adapterPath } : null,
      sampling: {
        temperature: number('temperature'),
        topP: number('top-p'),
        topK: number('top-k'),
        presencePenalty: 0,
        frequencyPenalty: 0,
        seed: values.seed === undefined ? undefined : number('seed'),
      },
      maxTokens: number('max-tokens'),
      stop: [],
      onDelta: values.json ? undefined : (text) => process.stdout.write(text),
    });
    if (values.json) {
      const output = {
        text: result.text,
        prompt_ids: promptIds,
        token_ids: result.tokens.map((t) => t.token),
        finish_reason: result.finishReason,
        usage: { prompt_tokens: result.promptTokens, completion_tokens: result.completionTokens },
      };
      console.log(JSON.stringify(output));
    } else {
      process.stdout.write('\n');
    }
  } finally {
    await engine.close();
  }
}

main().catch((error: Error) => {
  console.error(`error: ${error.message}`);
  process.exitCode = 1;
});

/**
 * Fine-tunes a LoRA adapter from the command line and writes it in PEFT layout:
 *   npm run train -- --model PATH --data FILE.jsonl [--validation FILE] --out DIR
 *     [--rank R] [--alpha A] [--dropout P] [--targets q_proj,v_proj,...] [--epochs N] [--batch-size B] [--lr LR]
 *     [--max-length L] [--seed S] [--threads N]
 * Data are OpenAI fine-tuning JSONL (chat, prompt/completion or text), validated and tokenised exactly as the
 * fine-tuning API does. Progress (step, loss, tokens/s, ETA) goes to stderr, one updating line on a terminal.
 */
import { basename, resolve } from 'node:path';
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { writeLoraAdapter } from '../adapters/lora-writer.ts';
import { loadBaseModel } from '../model/load.ts';
import { LORA_TARGET_MODULES, type LoraTargetModule } from '../model/types.ts';
import { loadChatFormatter, loadTokenizer } from '../tokenizer/load.ts';
import { MIN_TRAINING_EXAMPLES, parseTrainingJsonl } from '../training/data/jsonl-examples.ts';
import { tokenizeExamples } from '../training/data/tokenize-examples.ts';
import { DEFAULT_LORA_TRAINING_CONFIG, trainLora, type LoraTrainingConfig, type TrainingProgress } from '../training/lora-trainer.ts';

const USAGE =
  'usage: npm run train -- --model PATH --data FILE.jsonl [--validation FILE] --out DIR [--rank R] [--alpha A] [--dropout P] ' +
  '[--targets LIST] [--epochs N] [--batch-size B] [--lr LR] [--max-length L] [--seed S] [--threads N]';

function number(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const parsed = Number(value);
  if (value.trim() === '' || !Number.isFinite(parsed)) throw new Error(`--${name} must be a number, got "${value}"`);
  return parsed;
}

function targets(value: string | undefined): LoraTargetModule[] {
  if (value === undefined) return [...LORA_TARGET_MODULES];
  const names = value.split(',').map((name) => name.trim());
  for (const name of names) {
    if (!(LORA_TARGET_MODULES as readonly string[]).includes(name)) throw new Error(`--targets: unknown module "${name}"; choose among ${LORA_TARGET_MODULES.join(', ')}`);
  }
  return names as LoraTargetModule[];
}

const duration = (seconds: number) => {
  const s = Math.max(0, Math.round(seconds));
  return s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m` : `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
};

function progressLine(p: TrainingProgress): string {
  const eta = p.step > 0 ? ((p.totalSteps - p.step) * p.elapsedSeconds) / p.step : Number.NaN;
  const valid = p.validLoss !== undefined ? ` valid_loss ${p.validLoss.toFixed(4)}` : '';
  return `step ${p.step}/${p.totalSteps} epoch ${p.epoch} loss ${p.trainLoss.toFixed(4)}${valid} ${p.tokensPerSecond.toFixed(0)} tokens/s ETA ${Number.isNaN(eta) ? '?' : duration(eta)}`;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      model: { type: 'string' },
      data: { type: 'string' },
      validation: { type: 'string' },
      out: { type: 'string' },
      rank: { type: 'string' },
      alpha: { type: 'string' },
      dropout: { type: 'string' },
      targets: { type: 'string' },
      epochs: { type: 'string' },
      'batch-size': { type: 'string' },
      lr: { type: 'string' },
      'max-length': { type: 'string' },
      seed: { type: 'string' },
      threads: { type: 'string' },
    },
  });
  if (!values.model || !values.data || !values.out) throw new Error(`--model, --data and --out are required\n${USAGE}`);
  const d = DEFAULT_LORA_TRAINING_CONFIG;
  const rank = number('rank', values.rank, d.rank);
  const config: LoraTrainingConfig = {
    ...d,
    rank,
    alpha: number('alpha', values.alpha, 2 * rank),
    dropout: number('dropout', values.dropout, d.dropout),
    targetModules: targets(values.targets),
    epochs: number('epochs', values.epochs, d.epochs),
    batchSize: number('batch-size', values['batch-size'], d.batchSize),
    learningRate: number('lr', values.lr, d.learningRate),
    maxLength: number('max-length', values['max-length'], d.maxLength),
    seed: number('seed', values.seed, d.seed),
    threads: number('threads', values.threads, d.threads),
  };

  const model = await loadBaseModel(values.model);
  const tokenizer = await loadTokenizer(values.model, model.config.eosTokenIds);
  const formatChat = await loadChatFormatter(values.model);
  const dataset = async (path: string, minExamples: number) =>
    tokenizeExamples(parseTrainingJsonl(await readFile(path, 'utf8'), minExamples), { tokenizer, formatChat, maxLength: config.maxLength });
  const train = await dataset(values.data, MIN_TRAINING_EXAMPLES);
  const validation = values.validation ? await dataset(values.validation, 1) : undefined;
  process.stderr.write(`${train.sequences.length} training sequences (${train.targetTokens} target tokens)` + (validation ? `, ${validation.sequences.length} validation sequences` : '') + '\n');

  const terminal = process.stderr.isTTY;
  const result = await trainLora(model, { train: train.sequences, validation: validation?.sequences }, config, {
    onProgress: (p) => {
      const line = progressLine(p);
      process.stderr.write(terminal ? `\r\x1b[2K${line}` : `${line}\n`);
    },
  });
  if (terminal) process.stderr.write('\n');
  const out = resolve(values.out);
  await writeLoraAdapter(out, { ...result.adapter, baseModel: basename(resolve(values.model)) });
  process.stderr.write(`wrote ${out} (PEFT LoRA r=${config.rank}, ${result.progress.trainedTokens} tokens trained in ${duration(result.progress.elapsedSeconds)})\n`);
}

try {
  await main();
} catch (error) {
  process.stderr.write(`error: ${(error as Error).message}\n`);
  process.exitCode = 1;
}

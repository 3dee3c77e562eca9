/**
 * The outputs the soak's greedy requests must equal: each (publication, prompt) generated alone, one row on an
 * engine of its own, from the same weights the soak uploaded (written to disk with the project's PEFT writer).
 */
import { join } from 'node:path';
import { writeLoraAdapter } from '../../src/adapters/lora-writer.ts';
import { Engine } from '../../src/engine/engine.ts';
import { TextGenerator } from '../../src/serving/text-generation.ts';
import { loadTokenizer } from '../../src/tokenizer/load.ts';
import type { Publication } from './adapter-catalog.ts';

const GREEDY = { temperature: 0, topP: 1, topK: 0, presencePenalty: 0, frequencyPenalty: 0 };

export class SoloReference {
  readonly #outputs = new Map<string, Promise<string>>();

  private constructor(
    private readonly generator: TextGenerator,
    private readonly adaptersDir: string,
    private readonly maxTokens: number,
  ) {}

  static async start(options: { modelDir: string; adaptersDir: string; maxLoraRank: number; maxTokens: number }): Promise<SoloReference> {
    const engine = await Engine.start({ modelPath: options.modelDir, maxBatch: 1, adapterSlots: 1, maxLoraRank: options.maxLoraRank, hostCacheBytes: 1 << 20, maxQueue: 1, threads: 1 });
    const tokenizer = await loadTokenizer(options.modelDir, engine.info.config.eosTokenIds);
    return new SoloReference(new TextGenerator(engine, tokenizer), options.adaptersDir, options.maxTokens);
  }

  /** The greedy text of `prompt` alone on the base model (publication null) or on the publication's weights. */
  output(publication: Publication | null, prompt: number[]): Promise<string> {
    const key = `${publication?.serial ?? 'base'}:${prompt.join(',')}`;
    let output = this.#outputs.get(key);
    if (!output) {
      output = this.#generate(publication, prompt);
      this.#outputs.set(key, output);
    }
    return output;
  }

  /** Distinct (publication, prompt) pairs generated. */
  get size(): number {
    return this.#outputs.size;
  }

  close(): Promise<void> {
    return this.generator.engine.close();
  }

  async #generate(publication: Publication | null, promptIds: number[]): Promise<string> {
    let adapter = null;
    if (publication) {
      const path = join(this.adaptersDir, `publication-${publication.serial}`);
      await writeLoraAdapter(path, publication.spec);
      adapter = { key: `publication-${publication.serial}`, path };
    }
    const result = await this.generator.generate({ promptIds, adapter, sampling: GREEDY, maxTokens: this.maxTokens, stop: [] });
    return result.text;
  }
}

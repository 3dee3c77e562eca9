/**
 * Fuzz targets for every file the gateway parses: safetensors and GGUF headers, adapter_config.json, tokenizer
 * files and the tenants file. Inputs are random bytes and random mutations of real files. Each must either
 * parse or fail with the parser's own error (a message for the file's author), never with a TypeError or
 * RangeError from inside the parser, and never allocate more than a bounded multiple of its input.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { AdapterError } from '../src/adapters/adapter-error.ts';
import { loraAdapterFiles, randomLoraAdapter } from '../src/adapters/lora-writer.ts';
import { parsePeftConfig, planLoraModules } from '../src/adapters/peft-config.ts';
import { GgufError, parseGguf } from '../src/formats/gguf.ts';
import { parseSafetensors, SafetensorsError } from '../src/formats/safetensors.ts';
import { ConfigError, loadGatewaySettings } from '../src/gateway/config.ts';
import { configFromHuggingFace } from '../src/model/config.ts';
import { loadHuggingFaceTokenizer } from '../src/tokenizer/huggingface.ts';
import { sentencePieceFromGgufMetadata } from '../src/tokenizer/sentencepiece.ts';
import { jsonMutation, type FuzzRun, type FuzzTarget } from './fuzz-support.ts';

/** Bytes a parse may allocate beyond its input: a header may not make the parser reserve what the file lacks. */
const ALLOCATION_SLACK_BYTES = 16 << 20;

/** Errors that mean the parser itself went wrong rather than refusing the input. */
function isParserBug(error: unknown): boolean {
  return !(error instanceof Error) || error instanceof TypeError || error instanceof RangeError || error instanceof ReferenceError;
}

/** Runs one parse: the input may be refused with `expected` errors, anything else fails the property. */
function parsesOrRefuses(parse: () => unknown, expected: (error: unknown) => boolean, inputBytes: number): void {
  const before = process.memoryUsage().arrayBuffers;
  try {
    parse();
  } catch (error) {
    if (isParserBug(error) || !expected(error)) throw error;
  }
  const grown = process.memoryUsage().arrayBuffers - before;
  if (grown > inputBytes * 4 + ALLOCATION_SLACK_BYTES) throw new Error(`parsing ${inputBytes} bytes allocated ${grown} bytes`);
}

async function parsesOrRefusesAsync(parse: () => Promise<unknown>, expected: (error: unknown) => boolean): Promise<void> {
  try {
    await parse();
  } catch (error) {
    if (isParserBug(error) || !expected(error)) throw error;
  }
}

/** A safetensors file with a random header: the length prefix and JSON a mutation of a valid one. */
function safetensorsInput(valid: Uint8Array): fc.Arbitrary<Uint8Array> {
  const headerLength = Number(new DataView(valid.buffer, valid.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(valid.subarray(8, 8 + headerLength)));
  const data = valid.subarray(8 + headerLength);
  const mutatedHeader = jsonMutation(header).map((json) => {
    const text = new TextEncoder().encode(JSON.stringify(json));
    const file = new Uint8Array(8 + text.length + data.length);
    new DataView(file.buffer).setBigUint64(0, BigInt(text.length), true);
    file.set(text, 8);
    file.set(data, 8 + text.length);
    return file;
  });
  return fc.oneof(mutatedHeader, byteFlips(valid), truncations(valid), fc.uint8Array({ maxLength: 256 }));
}

/** The valid file with a few bytes replaced. */
function byteFlips(valid: Uint8Array, within = valid.length): fc.Arbitrary<Uint8Array> {
  return fc.array(fc.tuple(fc.nat({ max: Math.max(0, within - 1) }), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }).map((flips) => {
    const copy = valid.slice();
    for (const [at, value] of flips) copy[at] = value;
    return copy;
  });
}

function truncations(valid: Uint8Array): fc.Arbitrary<Uint8Array> {
  return fc.nat({ max: valid.length - 1 }).map((length) => valid.slice(0, length));
}

export async function fileParserTargets(modelDir: string, ggufPath: string): Promise<FuzzTarget[]> {
  const config = configFromHuggingFace(JSON.parse(await readFile(join(modelDir, 'config.json'), 'utf8')));
  const adapter = new Map(loraAdapterFiles(randomLoraAdapter(config, { rank: 2, targetModules: ['q_proj', 'v_proj'], seed: 1 })));
  const weights = new Uint8Array(adapter.get('adapter_model.safetensors')!);
  const adapterConfig = JSON.parse(new TextDecoder().decode(adapter.get('adapter_config.json')!));
  const gguf = new Uint8Array(await readFile(ggufPath));
  const ggufMetadata = parseGguf(gguf).metadata;
  // The tensor data is not parsed with the header: mutating the header region is what finds parser bugs.
  const ggufHeaderBytes = Math.min(gguf.length, 64 * 1024);
  const tokenizerJson = JSON.parse(await readFile(join(modelDir, 'tokenizer.json'), 'utf8'));
  const tokenizerConfig = JSON.parse(await readFile(join(modelDir, 'tokenizer_config.json'), 'utf8'));
  const tenantsFile = { admin_keys: [{ key: 'sk-admin-0123456789' }], tenants: { acme: { keys: [{ key: 'sk-acme-0123456789' }], limits: { max_concurrent_requests: 4, tokens_per_minute: 1000 } } } };

  return [
    {
      name: 'safetensors header',
      run: ({ numRuns, seed }: FuzzRun) =>
        fc.assert(
          fc.property(safetensorsInput(weights), (bytes) => parsesOrRefuses(() => parseSafetensors(bytes, 'fuzz.safetensors'), (e) => e instanceof SafetensorsError, bytes.length)),
          { numRuns, seed },
        ),
    },
    {
      name: 'GGUF header',
      run: ({ numRuns, seed }: FuzzRun) =>
        fc.assert(
          fc.property(fc.oneof(byteFlips(gguf, ggufHeaderBytes), truncations(gguf.subarray(0, ggufHeaderBytes)), fc.uint8Array({ maxLength: 256 })), (bytes) =>
            parsesOrRefuses(() => parseGguf(bytes, 'fuzz.gguf'), (e) => e instanceof GgufError, bytes.length),
          ),
          { numRuns, seed },
        ),
    },
    {
      name: 'adapter_config.json',
      run: ({ numRuns, seed }: FuzzRun) =>
        fc.assert(
          fc.property(fc.oneof(jsonMutation(adapterConfig), fc.jsonValue()), (json) =>
            parsesOrRefuses(() => planLoraModules(parsePeftConfig(json), config), (e) => e instanceof AdapterError, JSON.stringify(json ?? null).length),
          ),
          { numRuns, seed },
        ),
    },
    {
      name: 'GGUF tokenizer metadata',
      run: ({ numRuns, seed }: FuzzRun) => {
        const tokenizerKeys = [...ggufMetadata.keys()].filter((key) => key.startsWith('tokenizer.'));
        const mutation = fc.tuple(fc.constantFrom(...tokenizerKeys), fc.oneof(fc.jsonValue(), fc.array(fc.string(), { maxLength: 8 }), fc.constant(undefined)));
        return fc.assert(
          fc.property(mutation, fc.string({ maxLength: 64 }), ([key, value], text) => {
            const metadata = new Map(ggufMetadata);
            if (value === undefined) metadata.delete(key);
            else metadata.set(key, value);
            parsesOrRefuses(
              () => {
                const tokenizer = sentencePieceFromGgufMetadata(metadata, [2]);
                tokenizer.decode(tokenizer.encode(text));
              },
              (e) => e instanceof Error,
              0,
            );
          }),
          { numRuns, seed },
        );
      },
    },
    {
      name: 'tokenizer.json and tokenizer_config.json',
      run: async ({ numRuns, seed }: FuzzRun) => {
        const dir = await mkdtemp(join(tmpdir(), 'fuzz-tokenizer-'));
        try {
          await fc.assert(
            fc.asyncProperty(fc.oneof(jsonMutation(tokenizerJson), fc.jsonValue()), fc.oneof(jsonMutation(tokenizerConfig), fc.jsonValue()), fc.string({ maxLength: 64 }), async (json, tokenizerConfigJson, text) => {
              await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(json));
              await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify(tokenizerConfigJson));
              await parsesOrRefusesAsync(async () => {
                const tokenizer = await loadHuggingFaceTokenizer(dir, [2]);
                tokenizer.decode(tokenizer.encode(text));
              }, (e) => e instanceof Error);
            }),
            { numRuns, seed },
          );
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      },
    },
    {
      name: 'tenants file',
      run: async ({ numRuns, seed }: FuzzRun) => {
        const dir = await mkdtemp(join(tmpdir(), 'fuzz-tenants-'));
        const file = join(dir, 'gateway.yaml');
        try {
          await fc.assert(
            fc.asyncProperty(fc.oneof(jsonMutation(tenantsFile).map((json) => JSON.stringify(json)), fc.string({ maxLength: 200 })), async (text) => {
              await writeFile(file, text);
              await parsesOrRefusesAsync(() => loadGatewaySettings({ GATEWAY_CONFIG: file }), (e) => e instanceof ConfigError);
            }),
            { numRuns, seed },
          );
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      },
    },
  ];
}

/**
 * Text in, text out: tokenizes nothing itself but turns the engine's token stream into text deltas,
 * holding back partial UTF-8 characters and anything that could still become a stop string, and ends the
 * sequence early when a stop string appears.
 */
import { Engine, type GenerateRequest } from '../engine/engine.ts';
import type { AdapterRef, FinishReason, StartEvent, TokenEvent } from '../engine/protocol.ts';
import type { SamplingParams } from '../engine/sampling.ts';
import { StopStringMatcher } from '../engine/stop-strings.ts';
import { StreamDecoder } from '../tokenizer/stream-decoder.ts';
import type { Tokenizer } from '../tokenizer/tokenizer.ts';

export interface TextGenerationRequest {
  tenant?: string;
  promptIds: number[];
  adapter: AdapterRef | null;
  sampling: SamplingParams;
  maxTokens: number;
  /** Text that ends generation; it is not included in the output (as OpenAI does). */
  stop: string[];
  /** End-of-sequence ids; generating one ends with reason "stop". Defaults to the tokenizer's. */
  stopTokenIds?: number[];
  signal?: AbortSignal;
  onStart?: (event: StartEvent) => void;
  /** Called with each piece of new text and the tokens that completed it (empty text while held back). */
  onDelta?: (text: string, tokens: TokenEvent[]) => void;
}

export interface TextGenerationResult {
  text: string;
  finishReason: FinishReason;
  promptTokens: number;
  completionTokens: number;
  tokens: TokenEvent[];
}

export class TextGenerator {
  constructor(
    readonly engine: Engine,
    readonly tokenizer: Tokenizer,
  ) {}

  async generate(request: TextGenerationRequest): Promise<TextGenerationResult> {
    const decoder = new StreamDecoder(this.tokenizer, { continuesPrompt: true });
    const stops = new StopStringMatcher(request.stop);
    const stopTokenIds = request.stopTokenIds ?? this.tokenizer.eosTokenIds;
    const tokens: TokenEvent[] = [];
    const pieces: string[] = [];
    let stoppedByText = false;
    // Our own controller: a stop string ends the sequence early, as does the caller's signal.
    const controller = new AbortController();
    const forwardAbort = () => controller.abort();
    request.signal?.addEventListener('abort', forwardAbort, { once: true });

    const emit = (text: string, completed: TokenEvent[]) => {
      if (text.length > 0) pieces.push(text);
      request.onDelta?.(text, completed);
    };
    const engineRequest: GenerateRequest = {
      tenant: request.tenant,
      promptIds: request.promptIds,
      adapter: request.adapter,
      sampling: request.sampling,
      maxTokens: request.maxTokens,
      stopTokenIds,
      signal: controller.signal,
      onStart: request.onStart,
      onToken: (event) => {
        if (stoppedByText) return;
        tokens.push(event);
        const result = stops.push(decoder.push(event.token));
        emit(result.emit, [event]);
        if (result.stopped) {
          stoppedByText = true;
          controller.abort();
        }
      },
    };
    try {
      const result = await this.engine.generate(engineRequest);
      if (!stoppedByText) {
        const tail = stops.push(decoder.flush());
        stoppedByText = tail.stopped;
        emit(tail.emit + (tail.stopped ? '' : stops.flush()), []);
      }
      const cancelledByCaller = request.signal?.aborted ?? false;
      return {
        text: pieces.join(''),
        finishReason: stoppedByText ? 'stop' : cancelledByCaller ? 'cancelled' : result.reason,
        promptTokens: result.promptTokens,
        completionTokens: tokens.length,
        tokens,
      };
    } finally {
      request.signal?.removeEventListener('abort', forwardAbort);
    }
  }
}

/**
 * One generation on behalf of a caller, shared by the HTTP and WebSocket APIs: tenant limits, the context
 * check, the engine call, metrics and the trace. Protocol code turns its deltas and result into wire formats.
 */
import { EngineError } from '../engine/engine.ts';
import type { AdapterTier, TokenEvent } from '../engine/protocol.ts';
import type { SamplingParams } from '../engine/sampling.ts';
import type { GenAiOperation } from '../observability/tracing.ts';
import { pathExists } from '../registry/store-files.ts';
import type { TextGenerationResult } from '../serving/text-generation.ts';
import type { Principal } from './auth.ts';
import { ApiError, adapterUnavailable, internalError, invalidRequest, modelNotFound, overloaded, rateLimited } from './errors.ts';
import { promptPositions, unavailableReason, type ResolvedModel } from './model-resolver.ts';
import type { GatewayServices } from './services.ts';

export interface InferenceRequest {
  principal: Principal;
  model: ResolvedModel;
  operation: GenAiOperation;
  /** Response id (`chatcmpl-…`, `cmpl-…`, `resp_…`), recorded on the trace. */
  responseId: string;
  promptIds: number[];
  /** The request field that carried the prompt, named in context-length errors. */
  promptParam: string;
  sampling: SamplingParams;
  maxTokens: number;
  stop: string[];
  signal?: AbortSignal;
  onDelta?: (text: string, tokens: TokenEvent[]) => void;
  /** The caller's W3C trace context headers, continued by the request span. */
  traceContext?: { traceparent?: string; tracestate?: string };
}

/** Seconds a client should wait before retrying when the engine queue is full. */
const OVERLOAD_RETRY_AFTER_SECONDS = 2;

function tenantOf(principal: Principal): string {
  return principal.kind === 'admin' ? 'admin' : principal.tenant.name;
}

export async function runInference(services: GatewayServices, request: InferenceRequest): Promise<TextGenerationResult> {
  const { engine, metrics, tracing, limiters } = services;
  const tenant = tenantOf(request.principal);
  const adapter = request.model.adapter?.id ?? '';
  const maxPositions = engine.info.maxPositions;
  const refuse = (error: ApiError): never => {
    metrics.countRejectedRequest({ tenant, adapter, status: error.status });
    throw error;
  };

  const positions = promptPositions(request.model, request.promptIds);
  if (positions + request.maxTokens > maxPositions) {
    const virtualTokens = positions - request.promptIds.length;
    const promptPart = virtualTokens > 0 ? `${request.promptIds.length} in the prompt, ${virtualTokens} virtual tokens of the adapter` : `${request.promptIds.length} in the prompt`;
    refuse(
      invalidRequest(
        `This model's maximum context length is ${maxPositions} tokens. However, you requested ` +
          `${positions + request.maxTokens} tokens (${promptPart}, ` +
          `${request.maxTokens} for the completion). Please reduce the length of the prompt or max_tokens.`,
        request.promptParam,
        'context_length_exceeded',
      ),
    );
  }
  if (engine.stats.waiting >= engine.options.maxQueue) {
    refuse(overloaded(OVERLOAD_RETRY_AFTER_SECONDS, 'The engine queue is full; retry later.'));
  }
  const maxQueued = request.principal.kind === 'tenant' ? request.principal.tenant.limits.maxQueuedRequests : undefined;
  const queued = services.queuedByTenant.get(tenant) ?? 0;
  if (maxQueued !== undefined && queued >= maxQueued) {
    refuse(
      rateLimited({
        limit: 'concurrency',
        message: `This tenant already has ${queued} requests waiting for the engine (limit ${maxQueued}); retry shortly.`,
        retryAfterSeconds: 1,
        retryable: true,
      }),
    );
  }
  const limiter = request.principal.kind === 'tenant' ? limiters.get(tenant) : undefined;
  const admission = limiter?.admit(request.promptIds.length + request.maxTokens);
  if (admission && !admission.ok) refuse(rateLimited(admission));
  // Counted as queued from submission until the engine reports the start (or the request ends first).
  let waiting = true;
  const leaveQueue = () => {
    if (!waiting) return;
    waiting = false;
    services.queuedByTenant.set(tenant, (services.queuedByTenant.get(tenant) ?? 1) - 1);
  };
  services.queuedByTenant.set(tenant, queued + 1);

  const trace = tracing.startRequestSpan({
    operation: request.operation,
    requestModel: request.model.id,
    tenant,
    adapter,
    maxTokens: request.maxTokens,
    temperature: request.sampling.temperature,
    topP: request.sampling.topP,
    seed: request.sampling.seed,
    traceContext: request.traceContext,
  });
  const started = performance.now();
  const tokenTimes: number[] = [];
  let result: TextGenerationResult | undefined;
  let status = 200;
  let adapterTier: AdapterTier | undefined;
  try {
    result = await services.generator.generate({
      tenant,
      promptIds: request.promptIds,
      adapter: request.model.ref,
      sampling: request.sampling,
      maxTokens: request.maxTokens,
      stop: request.stop,
      signal: request.signal,
      onStart: (event) => {
        leaveQueue();
        adapterTier = event.adapterLoad?.tier;
        trace.started(event);
      },
      onDelta: (text, tokens) => {
        for (let i = 0; i < tokens.length; i++) tokenTimes.push(performance.now());
        request.onDelta?.(text, tokens);
      },
    });
    trace.finish({
      responseId: request.responseId,
      responseModel: request.model.id,
      finishReasons: [result.finishReason],
      usage: { inputTokens: result.promptTokens, outputTokens: result.completionTokens },
    });
    return result;
  } catch (error) {
    const apiError = (await adapterLoadFailureToApi(services, request, error)) ?? engineErrorToApi(error);
    status = apiError.status;
    trace.fail(error, String(status));
    throw apiError;
  } finally {
    leaveQueue();
    const completionTokens = result?.completionTokens ?? tokenTimes.length;
    if (admission?.ok) admission.admission.finish(request.promptIds.length + completionTokens);
    metrics.observeRequest({
      tenant,
      adapter,
      status,
      promptTokens: request.promptIds.length,
      completionTokens,
      finishReason: result?.finishReason ?? (status === 499 ? 'cancelled' : 'error'),
      ttftSeconds: tokenTimes.length > 0 ? (tokenTimes[0] - started) / 1000 : undefined,
      interTokenSeconds: tokenTimes.slice(1).map((t, i) => (t - tokenTimes[i]) / 1000),
      e2eSeconds: (performance.now() - started) / 1000,
      adapterTier,
    });
  }
}

/**
 * The engine's loader could not read the adapter version the request resolved to. If the version was deleted (or
 * deleted and published again with other files) in the meantime, the caller hears what a request a moment later
 * hears: not found. That includes a read that met a delete halfway: a delete moves the version's directory out
 * before the store forgets the version, so a directory gone means deleted, whichever file the read was at.
 * Otherwise, when the files no longer match their manifest, the store checks the version again (which makes it
 * invalid and logs and counts the altered file), and the caller hears it is unavailable.
 */
async function adapterLoadFailureToApi(services: GatewayServices, request: InferenceRequest, error: unknown): Promise<ApiError | undefined> {
  const record = request.model.adapter;
  if (!(error instanceof EngineError) || !record) return undefined;
  if (error.code !== 'adapter_corrupt' && error.code !== 'adapter_unavailable' && error.code !== 'invalid_adapter') return undefined;
  const { store } = services;
  // A version deleted and published again under the same number is another version: the one resolved is gone.
  const stored = () => {
    const current = store.resolve(record.tenant, record.adapter, record.version);
    if (current) return current.filesTag === record.filesTag;
    return store.unavailable(record.tenant, record.adapter, record.version) !== null;
  };
  const directoryGone = async () => !(await pathExists(record.path).catch(() => true));
  if (!stored() || (await directoryGone())) return modelNotFound(request.model.id);
  if (error.code !== 'adapter_corrupt') return undefined;
  await store.recheck(record.tenant, record.adapter, record.version).catch(() => undefined);
  if (!stored()) return modelNotFound(request.model.id);
  const entry = store.unavailable(record.tenant, record.adapter, record.version)?.entry;
  return adapterUnavailable(request.model.id, unavailableReason(entry ?? { id: record.id }));
}

function engineErrorToApi(error: unknown): ApiError {
  if (error instanceof ApiError) return error;
  if (!(error instanceof EngineError)) return internalError(error);
  switch (error.code) {
    case 'overloaded':
    case 'shutting_down':
    case 'adapter_unavailable':
      return overloaded(OVERLOAD_RETRY_AFTER_SECONDS, error.message);
    case 'invalid_adapter':
      return invalidRequest(`The adapter could not be loaded: ${error.message}`, 'model', 'invalid_adapter');
    case 'cancelled':
      // The caller went away (or shutdown began) before the engine started: nobody reads this answer, but
      // metrics and traces should say "cancelled", not "server error". 499 is the usual code for it.
      return new ApiError(499, 'invalid_request_error', 'The request was cancelled.', { code: 'cancelled' });
    case 'context_length_exceeded':
    case 'invalid_prompt':
      return invalidRequest(error.message, null, error.code);
    default:
      return internalError(error);
  }
}

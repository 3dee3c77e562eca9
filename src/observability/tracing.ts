/**
 * OpenTelemetry tracing for the gateway. One SERVER span per request, named and attributed after the GenAI
 * semantic conventions, with child spans for the queue, prefill and decode phases and for the adapter load.
 * Callers use `RequestTrace` and never touch OTel types. Spans carry sizes, ids and timings only: never prompts,
 * completions or credentials.
 */
import {
  ProxyTracerProvider,
  ROOT_CONTEXT,
  defaultTextMapGetter,
  SpanKind,
  SpanStatusCode,
  isSpanContextValid,
  trace,
} from '@opentelemetry/api';
import type { AttributeValue, Attributes, Span, Tracer } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { defaultResource, detectResources, envDetector, resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { SpanExporter, SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { ATTR_ERROR_TYPE, ATTR_SERVICE_NAME } from '@opentelemetry/semantic-conventions';
import type { StartEvent } from '../engine/protocol.ts';

// The GenAI conventions are still incubating; the semantic-conventions package asks users to copy these names
// rather than import its incubating entry point, which may break in a minor release.
const ATTR_GEN_AI_OPERATION_NAME = 'gen_ai.operation.name';
const ATTR_GEN_AI_SYSTEM = 'gen_ai.system';
const ATTR_GEN_AI_PROVIDER_NAME = 'gen_ai.provider.name';
const ATTR_GEN_AI_REQUEST_MODEL = 'gen_ai.request.model';
const ATTR_GEN_AI_REQUEST_MAX_TOKENS = 'gen_ai.request.max_tokens';
const ATTR_GEN_AI_REQUEST_TEMPERATURE = 'gen_ai.request.temperature';
const ATTR_GEN_AI_REQUEST_TOP_P = 'gen_ai.request.top_p';
const ATTR_GEN_AI_REQUEST_SEED = 'gen_ai.request.seed';
const ATTR_GEN_AI_RESPONSE_MODEL = 'gen_ai.response.model';
const ATTR_GEN_AI_RESPONSE_ID = 'gen_ai.response.id';
const ATTR_GEN_AI_RESPONSE_FINISH_REASONS = 'gen_ai.response.finish_reasons';
const ATTR_GEN_AI_USAGE_INPUT_TOKENS = 'gen_ai.usage.input_tokens';
const ATTR_GEN_AI_USAGE_OUTPUT_TOKENS = 'gen_ai.usage.output_tokens';

const ATTR_GATEWAY_TENANT = 'gateway.tenant';
const ATTR_GATEWAY_ADAPTER = 'gateway.adapter';
const ATTR_GATEWAY_ADAPTER_TIER = 'gateway.adapter.tier';
const ADAPTER_LOAD_SPAN_NAME = 'adapter.load';

export type GenAiOperation = 'chat' | 'text_completion';

export interface TracingOptions {
  /** `service.name` of the exported resource. */
  serviceName: string;
  /**
   * OTLP/HTTP base endpoint, as in OTEL_EXPORTER_OTLP_ENDPOINT (e.g. `http://collector:4318`); spans go to
   * `<endpoint>/v1/traces` in batches.
   */
  otlpEndpoint?: string;
  /** Exporter that receives each span as it ends (tests, local debugging); exclusive with `otlpEndpoint`. */
  exporter?: SpanExporter;
  /** Value of `gen_ai.provider.name` / `gen_ai.system`. */
  providerName?: string;
}

export interface RequestSpanStart {
  operation: GenAiOperation;
  /** The `model` the client asked for, e.g. `stories260K+acme/support`. */
  requestModel: string;
  tenant: string;
  /** Adapter id, or '' for the bare base model. */
  adapter: string;
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  seed?: number;
  /**
   * The caller's W3C trace context (`traceparent`, `tracestate` headers): the request span joins that trace, so
   * an API gateway or client in front of this server sees the generation inside its own trace.
   */
  traceContext?: { traceparent?: string; tracestate?: string };
}

export interface RequestOutcome {
  responseId: string;
  responseModel: string;
  finishReasons: readonly string[];
  usage: { inputTokens: number; outputTokens: number };
}

/** The engine's report that a request left the queue and finished prefill. */
export type EngineStart = Pick<StartEvent, 'queueMs' | 'prefillMs' | 'adapterLoad'>;

/** The trace of one request; every method is a no-op once the request has finished or failed. */
export interface RequestTrace {
  /** Trace id to hand back to the client or log; undefined when tracing is off. */
  readonly traceId: string | undefined;
  /**
   * Records the queue wait (with the adapter load inside it) and the prefill, which ran back to back and just
   * ended, and opens the decode phase. Called once, when the engine reports the start.
   */
  started(start: EngineStart): void;
  finish(outcome: RequestOutcome): void;
  /** Ends the request (and decode, if open) with error status; `errorType` is a low-cardinality class such as '503'. */
  fail(error: unknown, errorType?: string): void;
}

export interface Tracing {
  readonly tracer: Tracer;
  readonly enabled: boolean;
  startRequestSpan(start: RequestSpanStart): RequestTrace;
  /** Flushes buffered spans and stops exporting. */
  shutdown(): Promise<void>;
}

const DEFAULT_PROVIDER_NAME = 'peft-gateway';
const TRACE_CONTEXT = new W3CTraceContextPropagator();

export function createTracing(options: TracingOptions): Tracing {
  if (options.otlpEndpoint !== undefined && options.exporter !== undefined) {
    throw new Error('createTracing: give either otlpEndpoint (batched OTLP export) or exporter, not both');
  }
  const providerName = options.providerName ?? DEFAULT_PROVIDER_NAME;
  const processor = spanProcessorFor(options);
  if (processor === undefined) {
    // A private proxy provider never receives a delegate, so its tracer stays a no-op even if some other code
    // registers a global tracer provider later.
    const tracer = new ProxyTracerProvider().getTracer(options.serviceName);
    return {
      tracer,
      enabled: false,
      startRequestSpan: (start) => startRequestTrace(tracer, providerName, start),
      shutdown: async () => {},
    };
  }
  // Not registered globally: several instances may coexist (tests), and the gateway reaches spans only through
  // RequestTrace, which links parents explicitly rather than through the active context.
  const provider = new NodeTracerProvider({
    // OTEL_RESOURCE_ATTRIBUTES is how Kubernetes manifests usually hand over pod, node and namespace names.
    resource: defaultResource()
      .merge(detectResources({ detectors: [envDetector] }))
      .merge(resourceFromAttributes({ [ATTR_SERVICE_NAME]: options.serviceName })),
    spanProcessors: [processor],
  });
  const tracer = provider.getTracer(options.serviceName);
  return {
    tracer,
    enabled: true,
    startRequestSpan: (start) => startRequestTrace(tracer, providerName, start),
    shutdown: () => provider.shutdown(),
  };
}

function spanProcessorFor(options: TracingOptions): SpanProcessor | undefined {
  if (options.exporter !== undefined) return new SimpleSpanProcessor(options.exporter);
  if (options.otlpEndpoint !== undefined) {
    if (!isHttpUrl(options.otlpEndpoint)) {
      throw new Error(
        `otlpEndpoint ${JSON.stringify(options.otlpEndpoint)} is not an http(s) URL; give e.g. http://collector:4318`,
      );
    }
    const url = `${options.otlpEndpoint.replace(/\/+$/, '')}/v1/traces`;
    return new BatchSpanProcessor(new OTLPTraceExporter({ url }));
  }
  return undefined;
}

function isHttpUrl(text: string): boolean {
  return URL.canParse(text) && ['http:', 'https:'].includes(new URL(text).protocol);
}

function startRequestTrace(tracer: Tracer, providerName: string, start: RequestSpanStart): RequestTrace {
  const requestAttributes = definedOnly({
    [ATTR_GEN_AI_OPERATION_NAME]: start.operation,
    [ATTR_GEN_AI_PROVIDER_NAME]: providerName,
    // Deprecated in favour of gen_ai.provider.name, but many backends still group GenAI spans by it.
    [ATTR_GEN_AI_SYSTEM]: providerName,
    [ATTR_GEN_AI_REQUEST_MODEL]: start.requestModel,
    [ATTR_GATEWAY_TENANT]: start.tenant,
    [ATTR_GATEWAY_ADAPTER]: start.adapter,
    [ATTR_GEN_AI_REQUEST_MAX_TOKENS]: start.maxTokens,
    [ATTR_GEN_AI_REQUEST_TEMPERATURE]: start.temperature,
    [ATTR_GEN_AI_REQUEST_TOP_P]: start.topP,
    [ATTR_GEN_AI_REQUEST_SEED]: start.seed,
  });
  const now = requestClock();
  const parentContext = start.traceContext ? TRACE_CONTEXT.extract(ROOT_CONTEXT, start.traceContext, defaultTextMapGetter) : ROOT_CONTEXT;
  const root = tracer.startSpan(
    `${start.operation} ${start.requestModel}`,
    { kind: SpanKind.SERVER, startTime: now(), attributes: requestAttributes },
    parentContext,
  );
  const rootContext = trace.setSpan(parentContext, root);
  let decode: Span | undefined;
  let hasStarted = false;
  let ended = false;

  function completedPhase(name: string, startTime: number, endTime: number): Span {
    const span = tracer.startSpan(name, { kind: SpanKind.INTERNAL, startTime }, rootContext);
    span.end(endTime);
    return span;
  }

  return {
    traceId: isSpanContextValid(root.spanContext()) ? root.spanContext().traceId : undefined,

    started({ queueMs, prefillMs, adapterLoad }) {
      if (ended || hasStarted) return;
      hasStarted = true;
      const prefillEnd = now();
      const queueEnd = prefillEnd - prefillMs;
      const queueStart = queueEnd - queueMs;
      const queue = completedPhase('queue', queueStart, queueEnd);
      completedPhase('prefill', queueEnd, prefillEnd);
      if (adapterLoad !== undefined) {
        root.setAttribute(ATTR_GATEWAY_ADAPTER_TIER, adapterLoad.tier);
        // Found resident in a slot means nothing was loaded. The engine reports only a duration; the load is
        // what admits the request, so it is placed at the end of the wait.
        if (adapterLoad.tier !== 'slot') {
          tracer
            .startSpan(
              ADAPTER_LOAD_SPAN_NAME,
              {
                kind: SpanKind.INTERNAL,
                startTime: Math.max(queueStart, queueEnd - adapterLoad.ms),
                attributes: { [ATTR_GATEWAY_ADAPTER]: start.adapter, [ATTR_GATEWAY_ADAPTER_TIER]: adapterLoad.tier },
              },
              trace.setSpan(ROOT_CONTEXT, queue),
            )
            .end(queueEnd);
        }
      }
      decode = tracer.startSpan('decode', { kind: SpanKind.INTERNAL, startTime: prefillEnd }, rootContext);
    },

    finish(outcome) {
      if (ended) return;
      ended = true;
      const endTime = now();
      decode?.end(endTime);
      root.setAttributes({
        [ATTR_GEN_AI_RESPONSE_ID]: outcome.responseId,
        [ATTR_GEN_AI_RESPONSE_MODEL]: outcome.responseModel,
        [ATTR_GEN_AI_RESPONSE_FINISH_REASONS]: [...outcome.finishReasons],
        [ATTR_GEN_AI_USAGE_INPUT_TOKENS]: outcome.usage.inputTokens,
        [ATTR_GEN_AI_USAGE_OUTPUT_TOKENS]: outcome.usage.outputTokens,
      });
      root.end(endTime);
    },

    fail(error, errorType = errorTypeOf(error)) {
      if (ended) return;
      ended = true;
      const endTime = now();
      if (decode !== undefined) {
        markFailed(decode, error, errorType);
        decode.end(endTime);
      }
      markFailed(root, error, errorType);
      root.end(endTime);
    },
  };
}

/**
 * Milliseconds since the epoch: wall-clock at the request's start, monotonic after it. The SDK anchors every span
 * on its own at millisecond resolution, which makes back-to-back phases overlap or outlive their request; one clock
 * per request keeps them ordered.
 */
function requestClock(): () => number {
  const wallAtStart = Date.now();
  const monotonicAtStart = performance.now();
  return () => wallAtStart + (performance.now() - monotonicAtStart);
}

function markFailed(span: Span, error: unknown, errorType: string): void {
  const message = error instanceof Error ? error.message : String(error);
  if (error instanceof Error) span.recordException(error);
  span.setAttribute(ATTR_ERROR_TYPE, errorType);
  span.setStatus({ code: SpanStatusCode.ERROR, message });
}

/** `error.type` wants a class of error, not a message: the error's name, or the conventions' fallback. */
function errorTypeOf(error: unknown): string {
  return error instanceof Error ? error.name : '_OTHER';
}

function definedOnly(attributes: Record<string, AttributeValue | undefined>): Attributes {
  return Object.fromEntries(Object.entries(attributes).filter(([, value]) => value !== undefined));
}

/** Everything a request handler may use, built once at start (see server.ts) and passed to every route. */
import type { Engine } from '../engine/engine.ts';
import type { GatewayMetrics } from '../observability/metrics.ts';
import type { Tracing } from '../observability/tracing.ts';
import type { AdapterStore } from '../registry/adapter-store.ts';
import type { TextGenerator } from '../serving/text-generation.ts';
import type { ChatFormatter } from '../tokenizer/chat-template.ts';
import type { Tokenizer } from '../tokenizer/tokenizer.ts';
import type { Authenticator, Principal } from './auth.ts';
import type { GatewaySettings } from './config.ts';
import type { Logger } from './logger.ts';
import type { AdapterSummary, ModelResolver } from './model-resolver.ts';
import type { TenantLimiter } from './tenant-limits.ts';
import type { TrainingFileStore } from '../training/jobs/file-store.ts';
import type { JobStore } from '../training/jobs/job-store.ts';

export interface GatewayServices {
  settings: GatewaySettings;
  logger: Logger;
  engine: Engine;
  tokenizer: Tokenizer;
  formatChat: ChatFormatter;
  generator: TextGenerator;
  store: AdapterStore<AdapterSummary>;
  models: ModelResolver;
  authenticator: Authenticator;
  limiters: ReadonlyMap<string, TenantLimiter>;
  metrics: GatewayMetrics;
  /** Fine-tuning files and jobs in TRAINING_DIR; the trainer sidecar does the training. */
  training: { files: TrainingFileStore; jobs: JobStore };
  tracing: Tracing;
  /** Per tenant: requests submitted to the engine and not yet started (for `max_queued_requests`). */
  queuedByTenant: Map<string, number>;
  /** Unix seconds when the gateway started (the `created` of the base model entry). */
  startedAt: number;
  /** Set when shutdown begins: readiness fails and new work is refused. */
  draining: boolean;
  /** Aborted when shutdown gives up waiting: every in-flight generation listens to it. */
  shutdownSignal: AbortSignal;
}

/** Hono context variables set by the gateway's middleware. */
export interface GatewayEnv {
  Variables: { principal: Principal };
}

/**
 * The soak's clients: HTTP streams (some hanging up after their first chunk) and WebSocket responses (some
 * cancelled after their first delta), on Zipf-popular adapters, pinned versions or the latest, and the base model.
 * Everything a client sees is tallied the way the gateway counts it, and every greedy output is kept, with when
 * its request was sent and answered, to be checked against the solo output of the version it resolved to.
 */
import type { AdapterCatalog } from './adapter-catalog.ts';
import { streamCompletion } from './http-client.ts';
import { WebSocketClient, type ResponseOutcome } from './websocket-client.ts';

export interface Observation {
  via: 'http' | 'websocket';
  adapter: string | null;
  /** The pinned version; null for the latest (or the base model). */
  version: string | null;
  prompt: number[];
  sentAt: number;
  answeredAt: number;
  text: string;
  /** False for a stream cut short on purpose: its text must then be a prefix of the solo output. */
  complete: boolean;
}

export interface Tenant {
  name: string;
  key: string;
}

export interface TrafficSettings {
  url: string;
  baseModel: string;
  prompts: number[][];
  maxTokens: number;
  timeoutMs: number;
  /**
   * Every how many HTTP streams one hangs up after its first chunk, and every how many WebSocket responses one is
   * cancelled after its first delta: counted over those that began, so a run of fixed work has a fixed share.
   */
  disconnectEvery: number;
  cancelEvery: number;
  random: () => number;
  /** Draws an adapter index by popularity. */
  pickAdapter: () => number;
  adapters: string[];
  catalog: AdapterCatalog;
  /**
   * Awaited before every request: false ends the client. It may first make the client wait for a change of the
   * adapters (see soak.ts), so that changes keep pace with the requests however slow each change is.
   */
  next: () => Promise<boolean>;
}

/** What the clients saw. */
export class Tally {
  sent = 0;
  /** HTTP streams that sent a first chunk, and WebSocket responses that sent a first delta. */
  httpStreamsBegun = 0;
  responsesBegun = 0;
  /** Per tenant, answers by status (`gateway_requests_total` counts them all but the 404s of models that did not resolve). */
  readonly countedByStatus: Record<string, Record<string, number>> = {};
  /** HTTP error answers by "status code", as `gateway_errors_total` counts them. */
  readonly httpErrors: Record<string, number> = {};
  readonly streams = { completed: 0, disconnectedOnPurpose: 0, cancelledOnPurpose: 0, withoutTerminalEvent: 0 };
  /** Answers that were server errors: any 5xx but the 503 `overloaded` refusal, and error events inside streams. */
  readonly serverErrors: string[] = [];
  /** Requests that got no complete answer, or a terminal event they should not have. */
  readonly broken: string[] = [];
  readonly observations: Observation[] = [];
  #inFlight = 0;
  readonly #refused: (() => void)[] = [];

  count(tenant: string, status: number): void {
    const byStatus = (this.countedByStatus[tenant] ??= {});
    byStatus[status] = (byStatus[status] ?? 0) + 1;
  }

  countHttpError(status: number, code: string | null): void {
    const key = `${status} ${code ?? ''}`.trim();
    this.httpErrors[key] = (this.httpErrors[key] ?? 0) + 1;
  }

  started(): void {
    this.sent++;
    this.#inFlight++;
  }

  /** A request ended: the client refused longest ago may try again (all of them once nothing is in flight). */
  ended(): void {
    this.#inFlight--;
    const wake = this.#inFlight === 0 ? this.#refused.splice(0) : this.#refused.splice(0, 1);
    for (const retry of wake) retry();
  }

  /**
   * Waits, after a refusal, until some request ends, so that refused clients queue up for the freed capacity
   * instead of spinning. One is woken per end, so some still race newcomers and are refused again.
   */
  async afterRefusal(): Promise<void> {
    if (this.#inFlight > 0) await new Promise<void>((resolve) => this.#refused.push(resolve));
  }
}

function isServerError(status: number, code: string | null): boolean {
  return status >= 500 && !(status === 503 && code === 'overloaded');
}

interface Target {
  model: string;
  adapter: string | null;
  version: string | null;
}

function pickTarget(settings: TrafficSettings, tenant: Tenant, baseOnly: boolean): Target {
  const { random, baseModel, adapters, catalog } = settings;
  if (baseOnly || random() < 0.1) return { model: baseModel, adapter: null, version: null };
  const adapter = adapters[settings.pickAdapter()];
  const live = catalog.live(adapter);
  const version = live.length > 0 && random() < 0.5 ? live[Math.floor(random() * live.length)].version : null;
  return { model: `${baseModel}+${tenant.name}/${adapter}${version ? `@${version}` : ''}`, adapter, version };
}

/** One HTTP client: streams completions one after another until `next` says stop. */
export async function runHttpClient(settings: TrafficSettings, tally: Tally, tenant: Tenant, baseOnly: boolean): Promise<void> {
  while (await settings.next()) {
    const target = pickTarget(settings, tenant, baseOnly);
    const prompt = settings.prompts[Math.floor(settings.random() * settings.prompts.length)];
    tally.started();
    const sentAt = performance.now();
    const body = { model: target.model, prompt, max_tokens: settings.maxTokens, temperature: 0 };
    const outcome = await streamCompletion(settings.url, tenant.key, body, { disconnectAfterFirstChunk: () => ++tally.httpStreamsBegun % settings.disconnectEvery === 0, timeoutMs: settings.timeoutMs });
    tally.ended();
    const label = `HTTP ${target.model}`;
    if (outcome.status === 0) {
      tally.broken.push(`${label}: ${outcome.failure}`);
      continue;
    }
    if (outcome.status !== 200) {
      tally.count(tenant.name, outcome.status);
      tally.countHttpError(outcome.status, outcome.errorCode);
      if (isServerError(outcome.status, outcome.errorCode)) tally.serverErrors.push(`${label} answered ${outcome.status} ${outcome.errorCode}`);
      if (outcome.status === 429 || outcome.status === 503) await tally.afterRefusal();
      continue;
    }
    tally.count(tenant.name, 200);
    const observation = { via: 'http' as const, ...target, prompt, sentAt, answeredAt: outcome.answeredAt, text: outcome.text };
    if (outcome.disconnected) {
      tally.streams.disconnectedOnPurpose++;
      tally.observations.push({ ...observation, complete: false });
    } else if (outcome.streamError) {
      tally.serverErrors.push(`${label}: an error event inside the stream (${outcome.errorCode})`);
    } else if (!outcome.done || !outcome.finishReason || outcome.failure) {
      tally.streams.withoutTerminalEvent++;
      tally.broken.push(`${label}: the stream ended without a terminal event (${outcome.failure ?? 'no finish_reason'})`);
    } else {
      tally.streams.completed++;
      tally.observations.push({ ...observation, complete: true });
    }
  }
}

/** One WebSocket client: runs responses one after another on one socket until `next` says stop. */
export async function runWebSocketClient(settings: TrafficSettings, tally: Tally, tenant: Tenant): Promise<string[]> {
  const client = await WebSocketClient.connect(settings.url, tenant.key, settings.timeoutMs);
  try {
    while (await settings.next()) {
      const target = pickTarget(settings, tenant, false);
      const prompt = settings.prompts[Math.floor(settings.random() * settings.prompts.length)];
      tally.started();
      const sentAt = performance.now();
      const request = { model: target.model, input: prompt, max_tokens: settings.maxTokens, temperature: 0 };
      const outcome = await client.run(request, { cancelAfterFirstDelta: () => ++tally.responsesBegun % settings.cancelEvery === 0, timeoutMs: settings.timeoutMs });
      tally.ended();
      recordResponse(tally, tenant, target, outcome, { via: 'websocket', ...target, prompt, sentAt, answeredAt: outcome.answeredAt });
      if (outcome.statusCode === 429 || outcome.statusCode === 503) await tally.afterRefusal();
    }
  } finally {
    await client.close();
  }
  return client.unexpected;
}

function recordResponse(
  tally: Tally,
  tenant: Tenant,
  target: Target,
  outcome: ResponseOutcome,
  observation: Omit<Observation, 'text' | 'complete'>,
): void {
  const label = `WebSocket ${target.model}`;
  if (outcome.terminal === null) {
    tally.streams.withoutTerminalEvent++;
    tally.broken.push(`${label}: ${outcome.failure}`);
    return;
  }
  if (outcome.terminal === 'failed') {
    const status = outcome.statusCode ?? 0;
    tally.count(tenant.name, status);
    if (isServerError(status, outcome.errorCode)) tally.serverErrors.push(`${label} failed with ${status} ${outcome.errorCode}`);
    return;
  }
  tally.count(tenant.name, 200);
  if (outcome.terminal === 'cancelled') {
    if (!outcome.cancelSent) tally.broken.push(`${label}: cancelled without being asked`);
    tally.streams.cancelledOnPurpose++;
    tally.observations.push({ ...observation, text: outcome.streamedText, complete: false });
    return;
  }
  if (outcome.outputText !== outcome.streamedText) {
    tally.broken.push(`${label}: output_text ${JSON.stringify(outcome.outputText)} is not its deltas ${JSON.stringify(outcome.streamedText)}`);
  }
  tally.streams.completed++;
  tally.observations.push({ ...observation, text: outcome.outputText ?? '', complete: true });
}

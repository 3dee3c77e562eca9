/**
 * Per-tenant admission: at most `maxConcurrentRequests` requests in progress, and a tokens-per-minute budget kept as
 * a token bucket (capacity one minute's tokens, refilled continuously). A request reserves the most tokens it could
 * use (prompt + max_tokens) before it runs and settles the real count when it ends, so unused tokens return at once.
 * Nothing here waits: a request that does not fit is refused with how long to wait, and the client decides.
 */

import type { TenantLimits, TenantSettings } from './config.ts';

/** Milliseconds from a monotonic origin; injectable so tests can move time without sleeping. */
export type Clock = () => number;

const MS_PER_MINUTE = 60_000;

/**
 * Seconds suggested to a client refused for concurrency: when a slot frees is unknown, and one second is short
 * enough not to idle a slot for long yet long enough not to spin.
 */
const CONCURRENCY_RETRY_AFTER_SECONDS = 1;

export interface LimitRefusal {
  ok: false;
  limit: 'concurrency' | 'tokens_per_minute';
  /** Says which limit was hit and what to do; shown to the client. */
  message: string;
  /** Absent when waiting would not help. */
  retryAfterSeconds?: number;
  /** False when the request can never fit, e.g. it needs more tokens than a whole minute's budget. */
  retryable: boolean;
}

/** A running request's hold on its tenant's limits. */
export interface Admission {
  readonly reservedTokens: number;
  /**
   * Frees the concurrency slot and settles the token reservation with the tokens actually used (prompt plus
   * generated). Later calls do nothing, so it is safe in both a success path and a `finally`.
   */
  finish(actualTokens: number): void;
}

function assertTokenCount(tokens: number, what: string): void {
  if (!Number.isSafeInteger(tokens) || tokens < 0) {
    throw new RangeError(`${what} must be a non-negative integer, got ${tokens}`);
  }
}

function neverFits(tokens: number, tokensPerMinute: number): LimitRefusal {
  return {
    ok: false,
    limit: 'tokens_per_minute',
    message:
      `This request may use up to ${tokens} tokens (prompt plus max_tokens), more than the limit of ` +
      `${tokensPerMinute} tokens per minute, so it can never be admitted; lower max_tokens or shorten the prompt.`,
    retryable: false,
  };
}

/** Tokens may be taken while the balance covers them; the balance refills at one minute's budget per minute. */
export class TokenBucket {
  readonly #tokensPerMinute: number;
  readonly #now: Clock;
  #available: number;
  #refilledAt: number;

  constructor(tokensPerMinute: number, now: Clock) {
    this.#tokensPerMinute = tokensPerMinute;
    this.#now = now;
    this.#available = tokensPerMinute;
    this.#refilledAt = now();
  }

  #refill(): void {
    const now = this.#now();
    // Multiply before dividing so whole-second steps land on exact token counts.
    const earned = ((now - this.#refilledAt) * this.#tokensPerMinute) / MS_PER_MINUTE;
    this.#available = Math.min(this.#tokensPerMinute, this.#available + earned);
    this.#refilledAt = now;
  }

  tryTake(tokens: number): LimitRefusal | null {
    this.#refill();
    if (tokens <= this.#available) {
      this.#available -= tokens;
      return null;
    }
    const deficit = tokens - this.#available;
    const retryAfterSeconds = Math.max(1, Math.ceil((deficit * MS_PER_MINUTE) / this.#tokensPerMinute / 1000));
    return {
      ok: false,
      limit: 'tokens_per_minute',
      message:
        `Rate limit of ${this.#tokensPerMinute} tokens per minute reached: this request may use up to ${tokens} ` +
        `tokens (prompt plus max_tokens); retry in ${retryAfterSeconds} s or lower max_tokens.`,
      retryAfterSeconds,
      retryable: true,
    };
  }

  /** Returns `tokens` to the budget (negative charges more), never above one minute's worth. */
  give(tokens: number): void {
    this.#refill();
    this.#available = Math.min(this.#tokensPerMinute, this.#available + tokens);
  }
}

export class TenantLimiter {
  readonly limits: TenantLimits;
  readonly #tokens: TokenBucket;
  #activeRequests = 0;

  constructor(limits: TenantLimits, now: Clock = () => performance.now()) {
    this.limits = limits;
    this.#tokens = new TokenBucket(limits.tokensPerMinute, now);
  }

  get activeRequests(): number {
    return this.#activeRequests;
  }

  /** Admits a request that may use up to `maxTokens` tokens (prompt plus max_tokens), or says why not. */
  admit(maxTokens: number): { ok: true; admission: Admission } | LimitRefusal {
    assertTokenCount(maxTokens, 'maxTokens');
    const { maxConcurrentRequests, tokensPerMinute } = this.limits;
    // Checked first: a request that can never fit must say so even while the tenant is busy.
    if (maxTokens > tokensPerMinute) return neverFits(maxTokens, tokensPerMinute);
    if (this.#activeRequests >= maxConcurrentRequests) {
      return {
        ok: false,
        limit: 'concurrency',
        message:
          `Too many concurrent requests: ${this.#activeRequests} are in progress and the limit ` +
          `(max_concurrent_requests) is ${maxConcurrentRequests}; retry when one finishes.`,
        retryAfterSeconds: CONCURRENCY_RETRY_AFTER_SECONDS,
        retryable: true,
      };
    }
    const tokenRefusal = this.#tokens.tryTake(maxTokens);
    if (tokenRefusal) return tokenRefusal;

    this.#activeRequests += 1;
    let finished = false;
    const admission: Admission = {
      reservedTokens: maxTokens,
      finish: (actualTokens: number) => {
        if (finished) return;
        assertTokenCount(actualTokens, 'actualTokens');
        finished = true;
        this.#activeRequests -= 1;
        this.#tokens.give(maxTokens - actualTokens);
      },
    };
    return { ok: true, admission };
  }
}

/** One limiter per tenant, keyed by tenant name. */
export function createTenantLimiters(tenants: readonly TenantSettings[], now?: Clock): ReadonlyMap<string, TenantLimiter> {
  return new Map(tenants.map((tenant) => [tenant.name, new TenantLimiter(tenant.limits, now)]));
}

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createTenantLimiters, TenantLimiter, type Admission, type LimitRefusal } from '../src/gateway/tenant-limits.ts';

function fakeClock(startMs = 1_000_000) {
  let nowMs = startMs;
  return {
    now: () => nowMs,
    advanceSeconds(seconds: number) {
      nowMs += seconds * 1000;
    },
  };
}

/** A limiter on a fake clock, with concurrency high enough to stay out of the way of token tests. */
function tokenLimiter(tokensPerMinute: number) {
  const clock = fakeClock();
  return { clock, limiter: new TenantLimiter({ maxConcurrentRequests: 10, tokensPerMinute }, clock.now) };
}

function admitted(result: ReturnType<TenantLimiter['admit']>): Admission {
  assert.ok(result.ok, `expected admission, got refusal: ${result.ok ? '' : result.message}`);
  return result.admission;
}

function refused(result: ReturnType<TenantLimiter['admit']>): LimitRefusal {
  assert.ok(!result.ok, 'expected a refusal, got an admission');
  return result;
}

test('concurrency: the limit admits that many requests, refuses the next, and a release frees a slot', () => {
  const limiter = new TenantLimiter({ maxConcurrentRequests: 2, tokensPerMinute: 1000 }, fakeClock().now);
  const first = admitted(limiter.admit(0));
  admitted(limiter.admit(0));
  assert.equal(limiter.activeRequests, 2);

  const refusal = refused(limiter.admit(0));
  assert.equal(refusal.limit, 'concurrency');
  assert.equal(refusal.retryable, true);
  assert.equal(refusal.retryAfterSeconds, 1);
  assert.match(refusal.message, /2 are in progress and the limit \(max_concurrent_requests\) is 2/);

  first.finish(0);
  assert.equal(limiter.activeRequests, 1);
  admitted(limiter.admit(0));
});

test('concurrency: finishing twice frees only one slot', () => {
  const limiter = new TenantLimiter({ maxConcurrentRequests: 2, tokensPerMinute: 1000 }, fakeClock().now);
  const first = admitted(limiter.admit(0));
  admitted(limiter.admit(0));
  first.finish(0);
  first.finish(0);
  assert.equal(limiter.activeRequests, 1);
  admitted(limiter.admit(0));
  refused(limiter.admit(0));
});

test('concurrency: a refusal for tokens does not hold a slot', () => {
  const limiter = new TenantLimiter({ maxConcurrentRequests: 1, tokensPerMinute: 600 }, fakeClock().now);
  admitted(limiter.admit(600)).finish(600);
  assert.equal(refused(limiter.admit(10)).limit, 'tokens_per_minute');
  assert.equal(limiter.activeRequests, 0);
});

test('tokens per minute: a refusal says when enough budget will have returned, and that moment admits', () => {
  // 600 tokens per minute refill at 10 per second.
  const { clock, limiter } = tokenLimiter(600);
  admitted(limiter.admit(600)).finish(600);

  const refusal = refused(limiter.admit(300));
  assert.equal(refusal.limit, 'tokens_per_minute');
  assert.equal(refusal.retryable, true);
  assert.equal(refusal.retryAfterSeconds, 30);
  assert.match(refusal.message, /600 tokens per minute.*up to 300 tokens.*retry in 30 s/);

  clock.advanceSeconds(29);
  assert.equal(refused(limiter.admit(300)).retryAfterSeconds, 1);
  clock.advanceSeconds(1);
  admitted(limiter.admit(300));
});

test('tokens per minute: the whole budget is back one minute after it was spent, and no more', () => {
  const { clock, limiter } = tokenLimiter(600);
  admitted(limiter.admit(600)).finish(600);
  clock.advanceSeconds(60);
  admitted(limiter.admit(600)).finish(600);
  // Idle time beyond a minute does not bank extra budget.
  clock.advanceSeconds(600);
  admitted(limiter.admit(600)).finish(600);
  assert.equal(refused(limiter.admit(1)).retryAfterSeconds, 1);
});

test('tokens per minute: settling returns the unused part of the reservation at once', () => {
  const { limiter } = tokenLimiter(1000);
  const big = admitted(limiter.admit(800));
  assert.equal(big.reservedTokens, 800);
  assert.equal(refused(limiter.admit(500)).limit, 'tokens_per_minute');

  big.finish(100);
  const next = admitted(limiter.admit(900));
  next.finish(900);
  refused(limiter.admit(1));
});

test('tokens per minute: using more than reserved is charged', () => {
  const { limiter } = tokenLimiter(600);
  admitted(limiter.admit(100)).finish(400);
  assert.equal(refused(limiter.admit(300)).retryAfterSeconds, 10);
  admitted(limiter.admit(200));
});

test('a request larger than a whole minute of budget is refused as never retryable, even when busy', () => {
  const limiter = new TenantLimiter({ maxConcurrentRequests: 1, tokensPerMinute: 1000 }, fakeClock().now);
  admitted(limiter.admit(1000));
  const refusal = refused(limiter.admit(1001));
  assert.equal(refusal.limit, 'tokens_per_minute');
  assert.equal(refusal.retryable, false);
  assert.equal(refusal.retryAfterSeconds, undefined);
  assert.match(refusal.message, /up to 1001 tokens .* limit of 1000 tokens per minute, so it can never be admitted; lower max_tokens/);
});

test('token counts must be non-negative integers', () => {
  const limiter = new TenantLimiter({ maxConcurrentRequests: 1, tokensPerMinute: 1000 }, fakeClock().now);
  assert.throws(() => limiter.admit(-1), RangeError);
  assert.throws(() => limiter.admit(1.5), RangeError);
  const admission = admitted(limiter.admit(10));
  assert.throws(() => admission.finish(Number.NaN), /actualTokens must be a non-negative integer/);
  admission.finish(10);
  assert.equal(limiter.activeRequests, 0);
});

test('each tenant has its own limiter', () => {
  const clock = fakeClock();
  const limiters = createTenantLimiters(
    [
      { name: 'acme', keyDigests: [], limits: { maxConcurrentRequests: 1, tokensPerMinute: 100 } },
      { name: 'globex', keyDigests: [], limits: { maxConcurrentRequests: 1, tokensPerMinute: 100 } },
    ],
    clock.now,
  );
  admitted(limiters.get('acme')!.admit(100));
  refused(limiters.get('acme')!.admit(1));
  admitted(limiters.get('globex')!.admit(100));
  assert.equal(limiters.get('nobody'), undefined);
});

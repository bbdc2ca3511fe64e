import { describe, expect, it } from '@jest/globals';
import type { ExecutionContext } from '@nestjs/common';
import { RateLimiterMemory } from 'rate-limiter-flexible';
import { ErrorCode } from '@chat/protocol';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import { inMemoryRateLimiters, type RateLimiterFactory } from '../common/rate-limiter.js';
import { RelayException } from '../common/relay.exception.js';
import { loadConfig } from '../config/relay-config.js';
import { BundleFetchLimitGuard } from './bundle-fetch-limit.guard.js';

const config = loadConfig({
  JWT_SECRET: 'unit-test-secret-unit-test-secret-0123',
  BUNDLE_FETCHES_PER_PAIR: '2',
  BUNDLE_FETCH_PAIR_WINDOW_SECONDS: '60',
  BUNDLE_FETCHES_PER_REQUESTER: '3',
  BUNDLE_FETCH_REQUESTER_WINDOW_SECONDS: '600',
});

const device = (accountId: string): AuthenticatedDevice => ({ accountId, username: accountId, deviceId: 1, credentialVersion: 0, expiresAt: 0 });
const fetchOf = (accountId: string, username: string) =>
  ({ switchToHttp: () => ({ getRequest: () => ({ user: device(accountId), params: { username } }) }) }) as unknown as ExecutionContext;

async function outcome(guard: BundleFetchLimitGuard, accountId: string, username: string): Promise<true | RelayException> {
  return guard.canActivate(fetchOf(accountId, username)).then(
    (allowed) => allowed as true,
    (error: unknown) => {
      if (error instanceof RelayException) return error;
      throw error;
    },
  );
}

describe('BundleFetchLimitGuard', () => {
  it('refuses a pair over its limit with RATE_LIMITED and the seconds left in the window; other pairs go on', async () => {
    const guard = new BundleFetchLimitGuard(config, inMemoryRateLimiters);
    expect(await outcome(guard, 'acc-a', 'bob')).toBe(true);
    expect(await outcome(guard, 'acc-a', 'BOB')).toBe(true); // the same target: usernames are case-insensitive
    const refused = await outcome(guard, 'acc-a', 'bob');
    expect(refused).toBeInstanceOf(RelayException);
    expect(refused).toMatchObject({ code: ErrorCode.RateLimited });
    expect((refused as RelayException).retryAfter).toBeGreaterThan(55);
    expect((refused as RelayException).retryAfter).toBeLessThanOrEqual(60);
    expect((refused as RelayException).toBody()).toEqual({
      code: ErrorCode.RateLimited,
      message: expect.any(String),
      retryAfter: (refused as RelayException).retryAfter,
    });
    expect(await outcome(guard, 'acc-b', 'bob')).toBe(true);
    expect(await outcome(guard, 'acc-a', 'carol')).toBe(true);
  });

  it('refuses a requester over its limit across targets, with the requester window', async () => {
    const guard = new BundleFetchLimitGuard(config, inMemoryRateLimiters);
    for (const target of ['t1', 't2', 't3']) expect(await outcome(guard, 'acc-a', target)).toBe(true);
    const refused = await outcome(guard, 'acc-a', 't4');
    expect(refused).toMatchObject({ code: ErrorCode.RateLimited });
    expect((refused as RelayException).retryAfter).toBeGreaterThan(595);
    expect(await outcome(guard, 'acc-b', 't4')).toBe(true);
  });

  it('keeps a failing counter store an error, not a refusal', async () => {
    const broken: RateLimiterFactory = (rule) =>
      Object.assign(new RateLimiterMemory({ points: rule.points, duration: rule.windowSeconds }), {
        consume: () => Promise.reject(new Error('store unreachable')),
      });
    const guard = new BundleFetchLimitGuard(config, broken);
    await expect(guard.canActivate(fetchOf('acc-a', 'bob'))).rejects.toThrow('store unreachable');
  });
});

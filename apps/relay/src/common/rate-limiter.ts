import type { Redis } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible';
import { ErrorCode } from '@chat/protocol';
import type { RateLimit } from '../config/relay-config.js';
import { RelayException } from './relay.exception.js';

/** One named limit: its counters are kept apart from other limits' by `name`. */
export interface RateLimitRule extends RateLimit {
  readonly name: string;
}

/**
 * Builds the counter store of a rule. Counting is rate-limiter-flexible's
 * fixed window: a key's window opens at its first request and lasts
 * `windowSeconds`; `msBeforeNext` of a refusal says when it ends.
 */
export type RateLimiterFactory = (rule: RateLimitRule) => RateLimiterAbstract;

/** Injection token of the `RateLimiterFactory`. */
export const RATE_LIMITER_FACTORY = Symbol('RateLimiterFactory');

/**
 * Counters in this process's memory: with several relay instances each
 * counts alone, so a requester gets up to N times the limit. Used without
 * REDIS_URL (one instance).
 */
export const inMemoryRateLimiters: RateLimiterFactory = (rule) =>
  new RateLimiterMemory({ keyPrefix: rule.name, points: rule.points, duration: rule.windowSeconds });

/**
 * Counters in Redis under `<keyPrefix>:<rule name>:<key>`, one atomic
 * INCRBY-with-expiry script per request, so that every instance on the same
 * Redis counts against the same budget. While Redis is unreachable each
 * instance counts in its own memory instead (the insurance limiter): the
 * limits hold per instance rather than failing every request, as
 * Signal-Server's fail-open limiters do.
 */
export function redisRateLimiters(client: Redis, keyPrefix: string): RateLimiterFactory {
  return (rule) =>
    new RateLimiterRedis({
      storeClient: client,
      useRedisPackage: false,
      rejectIfRedisNotReady: true,
      keyPrefix: `${keyPrefix}:${rule.name}`,
      points: rule.points,
      duration: rule.windowSeconds,
      insuranceLimiter: inMemoryRateLimiters(rule),
    });
}

/**
 * Counts `points` against `key` and throws the wire refusal when the window
 * has no room left: RATE_LIMITED with `retryAfter`, the whole seconds until
 * the window ends (at least 1). A refused request consumes nothing more
 * than its attempt.
 *
 * @throws RelayException RATE_LIMITED
 */
export async function consumeOrRefuse(limiter: RateLimiterAbstract, key: string, refusal: string, points = 1): Promise<void> {
  try {
    await limiter.consume(key, points);
  } catch (rejection) {
    // A refusal is a RateLimiterRes; anything else is the store failing, and stays an error.
    if (!(rejection instanceof RateLimiterRes)) throw rejection;
    const retryAfter = Math.max(1, Math.ceil(rejection.msBeforeNext / 1000));
    throw new RelayException(ErrorCode.RateLimited, refusal, undefined, retryAfter);
  }
}

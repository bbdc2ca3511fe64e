import { RateLimiterMemory, type RateLimiterAbstract } from 'rate-limiter-flexible';
import type { RateLimit } from '../config/relay-config.js';

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
 * counts alone, so a requester gets up to N times the limit. A shared store
 * (rate-limiter-flexible's RateLimiterRedis, same interface) replaces this
 * factory when the relay runs as several instances.
 */
export const inMemoryRateLimiters: RateLimiterFactory = (rule) =>
  new RateLimiterMemory({ keyPrefix: rule.name, points: rule.points, duration: rule.windowSeconds });

import { Global, Module } from '@nestjs/common';
import { APP_INTERCEPTOR } from '@nestjs/core';
import { RELAY_CONFIG, type RelayConfig } from '../config/relay-config.js';
import { REDIS_CLIENT, type OptionalRedis } from '../redis/redis.module.js';
import { InboundBytesInterceptor } from './inbound-bytes.interceptor.js';
import { RateLimitGuard } from './rate-limit.guard.js';
import { inMemoryRateLimiters, RATE_LIMITER_FACTORY, redisRateLimiters, type RateLimiterFactory } from './rate-limiter.js';
import { RateLimits } from './rate-limits.js';

/**
 * Every rate limit's counter store, chosen once: Redis (shared by all
 * instances) when REDIS_URL is set, this process's memory otherwise; plus
 * the limits, their guard, and the inbound byte budget of every HTTP request.
 */
@Global()
@Module({
  providers: [
    {
      provide: RATE_LIMITER_FACTORY,
      inject: [RELAY_CONFIG, REDIS_CLIENT],
      useFactory: (config: RelayConfig, redis: OptionalRedis): RateLimiterFactory =>
        redis ? redisRateLimiters(redis, config.rateLimits.keyPrefix) : inMemoryRateLimiters,
    },
    RateLimits,
    RateLimitGuard,
    { provide: APP_INTERCEPTOR, useClass: InboundBytesInterceptor },
  ],
  exports: [RATE_LIMITER_FACTORY, RateLimits, RateLimitGuard],
})
export class RateLimitModule {}

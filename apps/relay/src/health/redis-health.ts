import { Inject, Injectable, type OnModuleDestroy } from '@nestjs/common';
import { Redis } from 'ioredis';
import { RELAY_CONFIG, type RelayConfig } from '../config/relay-config.js';

/**
 * A connection of the readiness probe's own to REDIS_URL, so that the probe
 * tells whether Redis answers, whatever the bus and the rate limiter do with
 * theirs. Commands fail at once while it is disconnected (no offline queue);
 * ioredis keeps reconnecting in the background.
 */
@Injectable()
export class RedisHealthProbe implements OnModuleDestroy {
  private readonly redis?: Redis;

  constructor(@Inject(RELAY_CONFIG) config: RelayConfig) {
    if (config.redisUrl !== undefined) {
      this.redis = new Redis(config.redisUrl, {
        lazyConnect: true,
        enableOfflineQueue: false,
        maxRetriesPerRequest: 0,
        connectionName: 'relay-health',
      });
      // Errors show up as a failing check; ioredis would otherwise print each reconnect failure.
      this.redis.on('error', () => undefined);
    }
  }

  get configured(): boolean {
    return this.redis !== undefined;
  }

  /** @throws when Redis does not answer PING with PONG */
  async ping(): Promise<void> {
    if (!this.redis) return;
    if (this.redis.status === 'wait') await this.redis.connect();
    const answer = await this.redis.ping();
    if (answer !== 'PONG') throw new Error(`Redis answered PING with ${answer}`);
  }

  onModuleDestroy(): void {
    this.redis?.disconnect();
  }
}

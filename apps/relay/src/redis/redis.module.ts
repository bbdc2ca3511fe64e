import { Global, Inject, Injectable, Logger, Module, type OnApplicationShutdown } from '@nestjs/common';
import { Redis } from 'ioredis';
import { RELAY_CONFIG, type RelayConfig } from '../config/relay-config.js';

/**
 * Injection token of the relay's shared ioredis connection: a `Redis` when
 * REDIS_URL is set, `null` otherwise (one instance, everything in process).
 * It is a command connection; a subscriber needs a connection of its own
 * (`client.duplicate()`), since a subscribed connection runs no other command.
 */
export const REDIS_CLIENT = Symbol('RedisClient');

/** What `@Inject(REDIS_CLIENT)` gives. */
export type OptionalRedis = Redis | null;

/**
 * Opens the connection at start-up and waits until it is ready, so that the
 * first request already counts in Redis; an unreachable Redis stops the
 * start-up with an error. Later outages are ridden out by ioredis's
 * reconnection; users of the connection decide what to do meanwhile.
 */
async function connect(config: RelayConfig): Promise<OptionalRedis> {
  if (config.redisUrl === undefined) return null;
  const client = new Redis(config.redisUrl, { lazyConnect: true });
  const logger = new Logger('Redis');
  // Without a listener ioredis prints every connection error; the URL (which may hold a password) is never logged.
  client.on('error', (error: Error & { code?: string }) => logger.warn(`Redis connection error (${error.code ?? error.name})`));
  try {
    await client.connect();
  } catch (error) {
    client.disconnect();
    throw new Error(`Cannot connect to the Redis of REDIS_URL (${(error as { code?: string }).code ?? (error as Error).name})`, { cause: error });
  }
  return client;
}

/** Closes the connection after every module has stopped using it. */
@Injectable()
class RedisConnectionCloser implements OnApplicationShutdown {
  constructor(@Inject(REDIS_CLIENT) private readonly client: OptionalRedis) {}

  async onApplicationShutdown(): Promise<void> {
    if (this.client === null || this.client.status === 'end') return;
    await this.client.quit().catch(() => this.client?.disconnect());
  }
}

/** The one ioredis command connection of this relay instance, shared by every feature that needs Redis. */
@Global()
@Module({
  providers: [{ provide: REDIS_CLIENT, inject: [RELAY_CONFIG], useFactory: connect }, RedisConnectionCloser],
  exports: [REDIS_CLIENT],
})
export class RedisModule {}

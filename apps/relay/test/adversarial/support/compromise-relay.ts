/**
 * The built relay as a child process (@chat/relay-harness's `startRelay`) at
 * its most verbose log level, keeping every byte it writes to stdout and
 * stderr, and able to dump every row of every table it stored and every file
 * of its data directory: what an attacker who took the relay's machine would
 * hold.
 *
 * The database is the run's: a scratch database on DATABASE_URL's server
 * (with the run's REDIS_URL, as deployed: the dump then has a table of its
 * Redis keys and values too), else the relay's own embedded PGlite in a
 * temporary DATA_DIR, read once the relay has stopped (PGlite is
 * single-user).
 */
import { Redis } from 'ioredis';
import { startRelay, type DataFile, type TestRelayProcess } from '@chat/relay-harness';
import type { DumpTable } from './compromise-scan.js';

export interface CompromisedRelay {
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  readonly database: 'postgres' | 'embedded';
  /** Whether the relay runs with Redis (the run's REDIS_URL, on Postgres only). */
  readonly redis: boolean;
  /** Stops the relay (SIGTERM) and waits for it to exit. */
  stop(): Promise<void>;
  /** Everything the relay wrote to stdout and stderr. */
  logs(): string;
  /**
   * Every file under the relay's DATA_DIR, once it has stopped: the embedded
   * database's own files (its pages, dead rows and write-ahead log included),
   * and the development sealed-sender keys.
   */
  dataFiles(): Promise<DataFile[]>;
  /**
   * Every row of every table in the public schema, every value as text
   * (bytea as `\x` hex and as escaped text); with Redis, a table `redis` of
   * every key under this relay's prefix, its type and its value.
   */
  databaseTables(): Promise<DumpTable[]>;
  /** Stops the relay if it runs, drops its database, removes its data directory. */
  close(): Promise<void>;
}

async function redisValue(redis: Redis, key: string, type: string): Promise<string> {
  switch (type) {
    case 'string':
      return (await redis.get(key)) ?? 'NULL';
    case 'hash':
      return JSON.stringify(await redis.hgetall(key));
    case 'list':
      return JSON.stringify(await redis.lrange(key, 0, -1));
    case 'set':
      return JSON.stringify(await redis.smembers(key));
    case 'zset':
      return JSON.stringify(await redis.zrange(key, 0, -1, 'WITHSCORES'));
    default:
      return `(${type})`;
  }
}

/** Every key under `prefix` (the relay's rate-limit counters), with its type and its value as text. */
async function readRedis(url: string, prefix: string): Promise<DumpTable> {
  const redis = new Redis(url);
  try {
    const rows: string[][] = [];
    for (let cursor = '0'; ; ) {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      for (const key of keys) {
        const type = await redis.type(key);
        rows.push([key, type, await redisValue(redis, key, type)]);
      }
      if (next === '0') break;
      cursor = next;
    }
    return { name: 'redis', columns: ['key', 'type', 'value'], rows };
  } finally {
    redis.disconnect();
  }
}

export async function startCompromisedRelay(): Promise<CompromisedRelay> {
  // LOG_LEVEL verbose (the harness's default) is the most the relay logs: "all relay logs" is everything it can write.
  // Redis only beside Postgres, as deployed: the embedded database is one process's.
  const relay: TestRelayProcess = await startRelay({ logLevel: 'verbose', redis: Boolean(process.env.DATABASE_URL) });
  const { redisUrl, redisKeyPrefix } = relay;
  return {
    url: relay.url,
    database: relay.database,
    redis: redisUrl !== undefined,
    stop: async () => void (await relay.stop()),
    logs: () => relay.logs(),
    dataFiles: () => relay.dataFiles(),
    async databaseTables() {
      const tables = await relay.databaseTables();
      return redisUrl ? [...tables, await readRedis(redisUrl, redisKeyPrefix)] : tables;
    },
    close: () => relay.close(),
  };
}

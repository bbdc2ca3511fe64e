/**
 * The built relay (`apps/relay/dist/main.js`) as a child process at its most
 * verbose log level, keeping every byte it writes to stdout and stderr, and
 * able to dump every row of every table it stored: what an attacker who took
 * the relay's machine would hold.
 *
 * The database is the run's: a scratch database on DATABASE_URL's server
 * (with the run's REDIS_URL, as deployed: the dump then has a table of its
 * Redis keys and values too), else the relay's own embedded PGlite in a
 * temporary DATA_DIR, read once the relay has stopped (PGlite is
 * single-user).
 *
 * The shape is that of @chat/relay-harness's `startRelay`; the relay's
 * tests cannot import that library while it declares an implicit
 * dependency on the relay (a cycle in Nx's project and task graphs).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PGlite } from '@electric-sql/pglite';
import { Redis } from 'ioredis';
import pg from 'pg';
import { GENEROUS_TEST_LIMITS } from '../../support/test-relay.js';
import type { DumpTable } from './compromise-scan.js';

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '../../../dist/main.js');

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
  dataFiles(): Promise<Array<{ path: string; bytes: Buffer }>>;
  /**
   * Every row of every table in the public schema, every value as text
   * (bytea as `\x` hex and as escaped text); with Redis, a table `redis` of
   * every key under this relay's prefix, its type and its value.
   */
  databaseTables(): Promise<DumpTable[]>;
  /** Stops the relay if it runs, drops its database, removes its data directory. */
  close(): Promise<void>;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function runOnce(connectionString: string, statement: string): Promise<void> {
  const client = new pg.Client({ connectionString });
  await client.connect();
  try {
    await client.query(statement);
  } finally {
    await client.end();
  }
}

const ident = (name: string) => `"${name.replaceAll('"', '""')}"`;

async function readTables(query: (sql: string) => Promise<Array<Record<string, unknown>>>): Promise<DumpTable[]> {
  const columns = await query(
    `SELECT table_name, column_name, data_type FROM information_schema.columns
      WHERE table_schema = 'public' ORDER BY table_name, ordinal_position`,
  );
  const byTable = new Map<string, Array<{ name: string; bytea: boolean }>>();
  for (const column of columns) {
    const table = String(column['table_name']);
    byTable.set(table, [...(byTable.get(table) ?? []), { name: String(column['column_name']), bytea: column['data_type'] === 'bytea' }]);
  }
  const tables: DumpTable[] = [];
  for (const [name, tableColumns] of byTable) {
    // bytea::text is hex; `escape` keeps printable bytes as they are, so text kept in a bytea shows either way.
    const selected = tableColumns.flatMap(({ name: column, bytea }) =>
      bytea ? [`${ident(column)}::text`, `encode(${ident(column)}, 'escape')`] : [`${ident(column)}::text`],
    );
    const rows = await query(`SELECT ${selected.map((expression, i) => `${expression} AS c${i}`).join(', ')} FROM ${ident(name)}`);
    tables.push({
      name,
      columns: tableColumns.flatMap(({ name: column, bytea }) => (bytea ? [column, `${column} (escaped)`] : [column])),
      rows: rows.map((row) => selected.map((_, i) => (row[`c${i}`] === null ? 'NULL' : String(row[`c${i}`])))),
    });
  }
  return tables;
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
  const dataDir = await mkdtemp(join(tmpdir(), 'compromised-relay-'));
  const serverUrl = process.env.DATABASE_URL;
  let databaseUrl: string | undefined;
  let dropDatabase = async () => undefined as void;
  if (serverUrl) {
    const name = `relay_compromise_${randomBytes(6).toString('hex')}`;
    await runOnce(serverUrl, `CREATE DATABASE ${name}`);
    dropDatabase = () => runOnce(serverUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    const url = new URL(serverUrl);
    url.pathname = `/${name}`;
    databaseUrl = url.toString();
  }
  const redisUrl = databaseUrl ? process.env.REDIS_URL : undefined;
  const redisPrefix = `compromise-${randomBytes(6).toString('hex')}`;
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    NODE_ENV: 'test',
    HOST: '127.0.0.1',
    PORT: String(port),
    DATA_DIR: dataDir,
    JWT_SECRET: randomBytes(32).toString('base64url'),
    ARGON2_MEMORY_KIB: '1024',
    ARGON2_TIME_COST: '1',
    ARGON2_PARALLELISM: '1',
    // The most the relay logs: "all relay logs" is everything it can write.
    LOG_LEVEL: 'verbose',
    ...GENEROUS_TEST_LIMITS,
    RATE_LIMIT_KEY_PREFIX: redisPrefix,
    ...(databaseUrl && { DATABASE_URL: databaseUrl }),
    ...(redisUrl && { REDIS_URL: redisUrl }),
  };

  const output: string[] = [];
  const child: ChildProcess = spawn(process.execPath, [MAIN], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => output.push(chunk));
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => output.push(chunk));
  let running = true;
  const exited = new Promise<void>((resolve) =>
    child.once('exit', () => {
      running = false;
      resolve();
    }),
  );
  const stop = async () => {
    if (running) child.kill('SIGTERM');
    await exited;
  };
  const close = async () => {
    if (running) child.kill('SIGKILL');
    await exited;
    await dropDatabase().catch(() => undefined);
    await rm(dataDir, { recursive: true, force: true });
  };

  try {
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (!running) throw new Error(`the relay exited during start-up:\n${output.join('').slice(-4_000)}`);
      const ready = await fetch(`${url}/health/ready`, { signal: AbortSignal.timeout(2_000) }).then(
        async (response) => (await response.arrayBuffer(), response.ok),
        () => false,
      );
      if (ready) break;
      if (Date.now() > deadline) throw new Error(`the relay was not ready within 60 s:\n${output.join('').slice(-4_000)}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  } catch (error) {
    await close();
    throw error;
  }

  return {
    url,
    database: databaseUrl ? 'postgres' : 'embedded',
    redis: redisUrl !== undefined,
    stop,
    logs: () => output.join(''),
    async dataFiles() {
      if (running) throw new Error('stop the relay before reading its data directory');
      const entries = await readdir(dataDir, { recursive: true, withFileTypes: true });
      const files = entries.filter((entry) => entry.isFile()).map((entry) => join(entry.parentPath, entry.name));
      return Promise.all(files.map(async (path) => ({ path: path.slice(dataDir.length + 1), bytes: await readFile(path) })));
    },
    async databaseTables() {
      if (databaseUrl) {
        const client = new pg.Client({ connectionString: databaseUrl });
        await client.connect();
        try {
          const tables = await readTables(async (sql) => (await client.query<Record<string, unknown>>(sql)).rows);
          return redisUrl ? [...tables, await readRedis(redisUrl, redisPrefix)] : tables;
        } finally {
          await client.end();
        }
      }
      if (running) throw new Error('stop the relay before reading its embedded database');
      const db = await PGlite.create(join(dataDir, 'pglite'));
      try {
        return await readTables(async (sql) => (await db.query<Record<string, unknown>>(sql)).rows);
      } finally {
        await db.close();
      }
    },
    close,
  };
}

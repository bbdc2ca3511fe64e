// The built relay (apps/relay/dist/main.js) as a child process on a free
// loopback port, for whole-system tests (the CLI driven as a person would) and
// benchmarks: a scratch database on DATABASE_URL's server when it is set, else
// the relay's embedded PGlite in a temporary DATA_DIR. It can be stopped and
// started again on the same port and database (a relay restart as clients see
// it), and it keeps everything the relay printed and can dump everything it
// stored (every table, every file of its data directory; with Redis, the key
// prefix to read there), so that a test can show none holds a message's plaintext.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PGlite } from '@electric-sql/pglite';
import pg from 'pg';

/** Found relative to this file, from src/ (Jest) and from dist/ alike. */
export const RELAY_MAIN = resolve(dirname(fileURLToPath(import.meta.url)), '../../../apps/relay/dist/main.js');

/** Limits far above anything a test does, so that no test trips a rate limit by accident. */
const UNLIMITED = '1000000000';
const RELAY_TEST_ENV: Record<string, string> = {
  NODE_ENV: 'test',
  HOST: '127.0.0.1',
  // Argon2id at its cheapest: registering and logging in take milliseconds.
  ARGON2_MEMORY_KIB: '1024',
  ARGON2_TIME_COST: '1',
  ARGON2_PARALLELISM: '1',
  ...Object.fromEntries(
    [
      'BUNDLE_FETCHES_PER_PAIR',
      'BUNDLE_FETCHES_PER_REQUESTER',
      'PROVISIONING_SLOTS_PER_IP',
      'PROVISIONING_RECEIVES_PER_IP',
      'REGISTRATIONS_PER_IP',
      'LOGINS_PER_USERNAME',
      'LOGINS_PER_IP',
      'REFRESHES_PER_IP',
      'PASSWORD_CHECKS_PER_ACCOUNT',
      'SENDS_PER_DEVICE',
      'SENDS_PER_PAIR',
      'SEALED_SENDS_PER_IP',
      'INBOUND_BYTES_PER_ACCOUNT',
      'INBOUND_BYTES_PER_IP',
    ].map((name) => [name, UNLIMITED]),
  ),
};

export interface RelayOptions {
  /** Extra or overriding relay variables. */
  env?: Record<string, string>;
  /**
   * The relay's LOG_LEVEL. The default, `verbose`, is the most it logs: what a
   * no-plaintext check reads. Benchmarks pass `warn`, so logging does not dominate.
   */
  logLevel?: string;
  /** Flags for the relay's node, before its main: `--expose-gc`, `--inspect=127.0.0.1:0`, `--cpu-prof`. */
  nodeFlags?: string[];
  /** How long start() waits for /health/ready (default 60 s). */
  readyTimeoutMs?: number;
  /** How often start() asks /health/ready (default 100 ms); a cold-start measurement asks more often. */
  readyPollMs?: number;
  /** The embedded database even when DATABASE_URL is set. */
  embedded?: boolean;
  /**
   * A Postgres database the caller owns, used as it is (the relay migrates
   * it) and left in place by `close()`: several relays on one database, as
   * instances of one deployment, or a database reached through a proxy.
   */
  databaseUrl?: string;
  /**
   * Keep the run's REDIS_URL, when it has one (by default the relay runs
   * without Redis): rate-limit counters and live deliveries then go through
   * Redis, as deployed, under this relay's own key prefix (`redisKeyPrefix`).
   */
  redis?: boolean;
}

/** One file of the relay's data directory. */
export interface DataFile {
  /** Relative to the data directory: `sealed-sender-keys.json`, `pglite/base/…`. */
  path: string;
  bytes: Buffer;
}

/** One table of the relay's database, every value as text (bytea also as hex and as escaped text). */
export interface DatabaseTable {
  name: string;
  columns: string[];
  rows: string[][];
}

/** How the relay process ended: its exit code, the signal that ended it, or undefined when it was not running. */
export type RelayExit = number | string | null | undefined;

export interface TestRelayProcess {
  /** http://127.0.0.1:<port>, the same across restarts. */
  readonly url: string;
  /** Where the relay keeps its data: its scratch Postgres database, or PGlite under DATA_DIR. */
  readonly database: 'postgres' | 'embedded';
  /** The Redis the relay uses (the run's REDIS_URL, with `redis: true`), else undefined. */
  readonly redisUrl: string | undefined;
  /** The relay's RATE_LIMIT_KEY_PREFIX: its keys in Redis start with it. */
  readonly redisKeyPrefix: string;
  /** The running relay's process id (for /proc/<pid>/status), undefined while it is stopped. */
  readonly pid: number | undefined;
  /** The last start(): milliseconds from spawning the process to its first ready answer. */
  readonly readyAfterMs: number;
  /** Starts the relay (again) on the same port and database; resolves when it is ready. */
  start(): Promise<void>;
  /** SIGTERM, as an orchestrator stops it; resolves when it exited, with its exit code (or signal; undefined if it was not running). */
  stop(): Promise<RelayExit>;
  /** SIGKILL, a crash; resolves when it exited, as `stop()`. */
  kill(): Promise<RelayExit>;
  /** Everything the relay wrote to stdout and stderr, across every start. */
  logs(): string;
  /** Every row of every table. The embedded database is read only while the relay is stopped. */
  databaseTables(): Promise<DatabaseTable[]>;
  /** `databaseTables()` as one text to search. */
  databaseText(): Promise<string>;
  /**
   * Every file under the relay's DATA_DIR, read while the relay is stopped:
   * the development sealed-sender keys and, with the embedded database, its
   * own files (pages, dead rows and write-ahead log included).
   */
  dataFiles(): Promise<DataFile[]>;
  /** Stops the relay and removes its database and data directory. */
  close(): Promise<void>;
}

/** Starts the built relay; `close()` it at the end. */
export async function startRelay(options: RelayOptions = {}): Promise<TestRelayProcess> {
  const cleanups: Array<() => Promise<void>> = [];
  const cleanUp = async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    cleanups.length = 0;
  };
  try {
    const dataDir = await mkdtemp(join(tmpdir(), 'relay-harness-'));
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    const serverUrl = options.embedded ? undefined : process.env.DATABASE_URL;
    const databaseUrl = options.databaseUrl ?? (serverUrl ? await createScratchDatabase(serverUrl, cleanups) : undefined);
    const redisUrl = (options.redis && process.env.REDIS_URL) || undefined;
    const port = await freeLoopbackPort();
    const url = `http://127.0.0.1:${port}`;
    const env: Record<string, string> = {
      ...inheritedEnv(),
      ...RELAY_TEST_ENV,
      LOG_LEVEL: options.logLevel ?? 'verbose',
      PORT: String(port),
      DATA_DIR: dataDir,
      JWT_SECRET: randomBytes(32).toString('base64url'),
      RATE_LIMIT_KEY_PREFIX: `relay-harness-${randomBytes(6).toString('hex')}`,
      ...(databaseUrl && { DATABASE_URL: databaseUrl }),
      ...(redisUrl && { REDIS_URL: redisUrl }),
      ...options.env,
    };
    const output: string[] = [];
    let child: SpawnedServer | null = null;
    let readyAfterMs = Number.NaN;

    const start = async () => {
      if (child) throw new Error('the relay is already running');
      const relay = await spawnUntilReady({
        name: 'the relay',
        args: [...(options.nodeFlags ?? []), RELAY_MAIN],
        env,
        readyUrl: `${url}/health/ready`,
        output,
        readyTimeoutMs: options.readyTimeoutMs,
        readyPollMs: options.readyPollMs,
      });
      child = relay;
      readyAfterMs = relay.readyAfterMs;
      void relay.exited.then(() => {
        if (child === relay) child = null;
      });
    };
    const sendSignal = async (name: NodeJS.Signals): Promise<RelayExit> => {
      const running = child;
      if (!running) return undefined;
      running.process.kill(name);
      return running.exited;
    };
    cleanups.push(async () => void (await sendSignal('SIGKILL')));

    const databaseTables = async () => {
      if (databaseUrl) {
        const client = new pg.Client({ connectionString: databaseUrl });
        await client.connect();
        try {
          return await readTables(async (sql) => (await client.query<Record<string, unknown>>(sql)).rows);
        } finally {
          await client.end();
        }
      }
      // PGlite is single-user: its files are ours only while the relay is down.
      if (child) throw new Error('stop the relay before reading its embedded database');
      const db = await PGlite.create(join(dataDir, 'pglite'));
      try {
        return await readTables(async (sql) => (await db.query<Record<string, unknown>>(sql)).rows);
      } finally {
        await db.close();
      }
    };

    const dataFiles = async () => {
      if (child) throw new Error('stop the relay before reading its data directory');
      const entries = await readdir(dataDir, { recursive: true, withFileTypes: true });
      const paths = entries.filter((entry) => entry.isFile()).map((entry) => join(entry.parentPath, entry.name));
      return Promise.all(paths.map(async (path) => ({ path: relative(dataDir, path), bytes: await readFile(path) })));
    };

    await start();
    return {
      url,
      database: databaseUrl ? 'postgres' : 'embedded',
      redisUrl: env['REDIS_URL'],
      redisKeyPrefix: env['RATE_LIMIT_KEY_PREFIX'] ?? '',
      get pid() {
        return child?.process.pid;
      },
      get readyAfterMs() {
        return readyAfterMs;
      },
      start,
      stop: () => sendSignal('SIGTERM'),
      kill: () => sendSignal('SIGKILL'),
      logs: () => output.join(''),
      databaseTables,
      databaseText: async () =>
        (await databaseTables())
          .map((table) => [`-- ${table.name} (${table.columns.join(', ')})`, ...table.rows.map((row) => row.join(' | '))].join('\n'))
          .join('\n'),
      dataFiles,
      close: cleanUp,
    };
  } catch (error) {
    await cleanUp();
    throw error;
  }
}

export interface SpawnOptions {
  /** For error messages: 'the relay', 'the bare server'. */
  name: string;
  /** node's arguments: flags, then a script (or `-e <code>`) and its arguments. */
  args: string[];
  env: Record<string, string>;
  /** Polled until it answers 2xx. */
  readyUrl: string;
  /** Receives everything the process writes to stdout and stderr. */
  output?: string[];
  /** Default 60 s. */
  readyTimeoutMs?: number;
  /** Default 100 ms. */
  readyPollMs?: number;
}

export interface SpawnedServer {
  readonly process: ChildProcess;
  /** Milliseconds from spawn() to the first ready answer. */
  readonly readyAfterMs: number;
  /** Resolves with the exit code (or signal) when the process has exited. */
  readonly exited: Promise<number | string | null>;
}

/**
 * Spawns a node process and resolves once `readyUrl` answers: how the relay is
 * started, and how a benchmark starts a baseline server the same way. It
 * rejects, with the tail of the output, if the process exits first or is not
 * ready in time (it is then killed).
 */
export async function spawnUntilReady(options: SpawnOptions): Promise<SpawnedServer> {
  const output = options.output ?? [];
  const began = performance.now();
  const child = spawn(process.execPath, options.args, { env: options.env, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => output.push(chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => output.push(chunk));
  let exitCode: number | string | null = null;
  let hasExited = false;
  const exited = new Promise<number | string | null>((resolveExit) =>
    child.once('exit', (code, signal) => {
      exitCode = code ?? signal;
      hasExited = true;
      resolveExit(exitCode);
    }),
  );
  const deadline = Date.now() + (options.readyTimeoutMs ?? 60_000);
  for (;;) {
    if (hasExited) throw new Error(`${options.name} exited (${exitCode}) before it was ready:\n${tail(output.join(''))}`);
    if (await isReady(options.readyUrl)) return { process: child, readyAfterMs: performance.now() - began, exited };
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      await exited;
      throw new Error(`${options.name} was not ready on ${options.readyUrl} in time:\n${tail(output.join(''))}`);
    }
    await sleep(options.readyPollMs ?? 100);
  }
}

/** A process's resident set size in KiB, from /proc/<pid>/status (Linux). */
export async function residentSetKiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const match = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status);
  if (!match) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(match[1]);
}

/** Every table of the public schema (the relay's, and Prisma's migration log), every column as text. */
async function readTables(query: (sql: string) => Promise<Array<Record<string, unknown>>>): Promise<DatabaseTable[]> {
  const columns = await query(
    `SELECT table_name, column_name, data_type FROM information_schema.columns
     WHERE table_schema = 'public' ORDER BY table_name, ordinal_position`,
  );
  const byTable = new Map<string, Array<{ name: string; bytea: boolean }>>();
  for (const column of columns) {
    const table = String(column['table_name']);
    byTable.set(table, [...(byTable.get(table) ?? []), { name: String(column['column_name']), bytea: column['data_type'] === 'bytea' }]);
  }
  const tables: DatabaseTable[] = [];
  for (const [name, tableColumns] of byTable) {
    // bytea::text is hex; `escape` keeps printable bytes as they are, so stored text shows either way.
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

/** A database of its own on the server, dropped by the cleanup. */
async function createScratchDatabase(serverUrl: string, cleanups: Array<() => Promise<void>>): Promise<string> {
  const name = `relay_harness_${randomBytes(6).toString('hex')}`;
  const admin = async (sql: string) => {
    const client = new pg.Client({ connectionString: serverUrl });
    await client.connect();
    try {
      await client.query(sql);
    } finally {
      await client.end();
    }
  };
  await admin(`CREATE DATABASE ${ident(name)}`);
  cleanups.push(() => admin(`DROP DATABASE IF EXISTS ${ident(name)} WITH (FORCE)`));
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

/** This process's environment without the relay's own variables (a DATABASE_URL of the run, say). */
export function inheritedEnv(): Record<string, string> {
  const relayVariables = /^(DATABASE_URL|REDIS_URL|DATA_DIR|PORT|HOST|JWT_|LOG_LEVEL|NODE_ENV|SEALED_SENDER_|TRUST_PROXY)/;
  return Object.fromEntries(
    Object.entries(process.env).filter((entry): entry is [string, string] => entry[1] !== undefined && !relayVariables.test(entry[0])),
  );
}

async function isReady(readyUrl: string): Promise<boolean> {
  try {
    const response = await fetch(readyUrl, { signal: AbortSignal.timeout(2_000) });
    await response.arrayBuffer();
    return response.ok;
  } catch {
    return false;
  }
}

export function freeLoopbackPort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolvePort(address.port) : reject(new Error('no port'))));
    });
  });
}

const ident = (name: string) => `"${name.replaceAll('"', '""')}"`;
const sleep = (ms: number) => new Promise((resolveSleep) => setTimeout(resolveSleep, ms));
const tail = (text: string) => text.split('\n').slice(-40).join('\n');

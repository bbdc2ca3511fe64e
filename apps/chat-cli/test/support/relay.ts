// The built relay (apps/relay/dist/main.js) as a child process on a free
// loopback port, for tests that drive the CLI as a person would: a scratch
// database on DATABASE_URL's server when it is set, else the relay's embedded
// PGlite in a temporary DATA_DIR. It can be stopped and started again on the
// same port and database (a relay restart as clients see it), and it keeps
// everything the relay printed and can dump everything it stored, so that a
// test can show neither holds a message's plaintext.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PGlite } from '@electric-sql/pglite';
import pg from 'pg';

export const RELAY_MAIN = resolve(dirname(fileURLToPath(import.meta.url)), '../../../relay/dist/main.js');

/** Limits far above anything a test does, so that no test trips a rate limit by accident. */
const UNLIMITED = '1000000000';
const RELAY_TEST_ENV: Record<string, string> = {
  NODE_ENV: 'test',
  HOST: '127.0.0.1',
  // The most the relay logs: what the no-plaintext check reads.
  LOG_LEVEL: 'verbose',
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
  /** How long start() waits for /health/ready (default 60 s). */
  readyTimeoutMs?: number;
}

/** One table of the relay's database, every value as text (bytea also as hex and as escaped text). */
export interface DatabaseTable {
  name: string;
  columns: string[];
  rows: string[][];
}

export interface TestRelayProcess {
  /** http://127.0.0.1:<port>, the same across restarts. */
  readonly url: string;
  /** Starts the relay (again) on the same port and database; resolves when it is ready. */
  start(): Promise<void>;
  /** SIGTERM, as an orchestrator stops it; resolves when it exited. */
  stop(): Promise<void>;
  /** SIGKILL, a crash; resolves when it exited. */
  kill(): Promise<void>;
  /** Everything the relay wrote to stdout and stderr, across every start. */
  logs(): string;
  /** Every row of every table. The embedded database is read only while the relay is stopped. */
  databaseTables(): Promise<DatabaseTable[]>;
  /** `databaseTables()` as one text to search. */
  databaseText(): Promise<string>;
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
    const dataDir = await mkdtemp(join(tmpdir(), 'chat-cli-relay-'));
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    const serverUrl = process.env.DATABASE_URL;
    const databaseUrl = serverUrl ? await createScratchDatabase(serverUrl, cleanups) : undefined;
    const port = await freeLoopbackPort();
    const url = `http://127.0.0.1:${port}`;
    const env: Record<string, string> = {
      ...inheritedEnv(),
      ...RELAY_TEST_ENV,
      PORT: String(port),
      DATA_DIR: dataDir,
      JWT_SECRET: randomBytes(32).toString('base64url'),
      RATE_LIMIT_KEY_PREFIX: `chat-cli-test-${randomBytes(6).toString('hex')}`,
      ...(databaseUrl && { DATABASE_URL: databaseUrl }),
      ...options.env,
    };
    const output: string[] = [];
    let child: ChildProcess | null = null;
    let exited: Promise<void> = Promise.resolve();

    const start = async () => {
      if (child) throw new Error('the relay is already running');
      const relay = spawn(process.execPath, [RELAY_MAIN], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      child = relay;
      relay.stdout.setEncoding('utf8').on('data', (chunk: string) => output.push(chunk));
      relay.stderr.setEncoding('utf8').on('data', (chunk: string) => output.push(chunk));
      let exitCode: number | string | null = null;
      exited = new Promise((resolveExit) =>
        relay.once('exit', (code, signal) => {
          exitCode = code ?? signal;
          if (child === relay) child = null;
          resolveExit();
        }),
      );
      const deadline = Date.now() + (options.readyTimeoutMs ?? 60_000);
      for (;;) {
        if (exitCode !== null) throw new Error(`the relay exited (${exitCode}) before it was ready:\n${tail(output.join(''))}`);
        if (await isReady(url)) return;
        if (Date.now() > deadline) {
          relay.kill('SIGKILL');
          throw new Error(`the relay was not ready on ${url} in time:\n${tail(output.join(''))}`);
        }
        await sleep(100);
      }
    };
    const sendSignal = async (name: NodeJS.Signals) => {
      const running = child;
      if (!running) return;
      running.kill(name);
      await exited;
    };
    cleanups.push(() => sendSignal('SIGKILL'));

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

    await start();
    return {
      url,
      start,
      stop: () => sendSignal('SIGTERM'),
      kill: () => sendSignal('SIGKILL'),
      logs: () => output.join(''),
      databaseTables,
      databaseText: async () =>
        (await databaseTables())
          .map((table) => [`-- ${table.name} (${table.columns.join(', ')})`, ...table.rows.map((row) => row.join(' | '))].join('\n'))
          .join('\n'),
      close: cleanUp,
    };
  } catch (error) {
    await cleanUp();
    throw error;
  }
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
  const name = `chat_cli_e2e_${randomBytes(6).toString('hex')}`;
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

/** The test process's environment without the relay's own variables (a DATABASE_URL of the run, say). */
function inheritedEnv(): Record<string, string> {
  const relayVariables = /^(DATABASE_URL|REDIS_URL|DATA_DIR|PORT|HOST|JWT_|LOG_LEVEL|NODE_ENV|SEALED_SENDER_|TRUST_PROXY)/;
  return Object.fromEntries(
    Object.entries(process.env).filter((entry): entry is [string, string] => entry[1] !== undefined && !relayVariables.test(entry[0])),
  );
}

async function isReady(url: string): Promise<boolean> {
  try {
    const response = await fetch(`${url}/health/ready`, { signal: AbortSignal.timeout(2_000) });
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

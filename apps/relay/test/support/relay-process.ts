/**
 * The built relay (`apps/relay/dist/main.js`) as a child process, for specs
 * that kill it: SIGKILL, then start it again on the same port and the same
 * database, as a supervisor (Docker, systemd) would.
 *
 * - `DATABASE_URL` set: a scratch database on that server, dropped by `close()`
 *   (or `options.databaseUrl`, a database the caller owns: several relay
 *   processes on one database, as instances of one deployment).
 * - unset: the relay's own embedded PGlite in a temporary DATA_DIR, which
 *   outlives each kill (PGlite commits survive SIGKILL) and is removed by `close()`.
 *
 * The relay's `test` target builds the relay first (apps/relay/package.json, nx dependsOn).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createScratchDatabase, type ScratchDatabase } from './scratch-database.js';
import { GENEROUS_TEST_LIMITS, TEST_JWT_SECRET, type RelayEnvOverrides } from './test-relay.js';

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '../../dist/main.js');

export interface RelayProcess {
  /** `http://127.0.0.1:<port>`, the same across restarts. */
  readonly baseUrl: string;
  readonly port: number;
  /** Times the process was started. */
  readonly starts: number;
  /** Resolves once the relay answers HTTP. */
  start(): Promise<void>;
  /** SIGKILL: no shutdown hook runs, open sockets die with the process. */
  kill(): Promise<void>;
  /** SIGTERM: the relay shuts down gracefully; resolves with its exit code once it has exited. */
  terminate(): Promise<number | null>;
  close(): Promise<void>;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export interface RelayProcessOptions {
  /** A Postgres database to use as it is (migrated by the relay); left in place by `close()`. */
  databaseUrl?: string;
}

export async function startRelayProcess(overrides: RelayEnvOverrides = {}, options: RelayProcessOptions = {}): Promise<RelayProcess> {
  const port = await freePort();
  const baseUrl = `http://127.0.0.1:${port}`;
  let scratch: ScratchDatabase | undefined;
  let dataDir: string | undefined;
  if (options.databaseUrl === undefined) {
    if (process.env.DATABASE_URL) scratch = await createScratchDatabase();
    else dataDir = await mkdtemp(join(tmpdir(), 'relay-process-'));
  }

  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    NODE_ENV: 'test',
    HOST: '127.0.0.1',
    PORT: String(port),
    JWT_SECRET: TEST_JWT_SECRET,
    ARGON2_MEMORY_KIB: '1024',
    ARGON2_TIME_COST: '1',
    ARGON2_PARALLELISM: '1',
    HEARTBEAT_INTERVAL_MS: '1000',
    LOG_LEVEL: 'error',
    ...GENEROUS_TEST_LIMITS,
    ...(options.databaseUrl !== undefined ? { DATABASE_URL: options.databaseUrl } : scratch ? { DATABASE_URL: scratch.url } : { DATA_DIR: dataDir }),
    ...overrides,
  };

  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let starts = 0;
  let stderr = '';

  const answers = async () => {
    try {
      await fetch(`${baseUrl}/v1/auth/me`, { signal: AbortSignal.timeout(1_000) });
      return true;
    } catch {
      return false;
    }
  };

  const relay: RelayProcess = {
    baseUrl,
    port,
    get starts() {
      return starts;
    },
    async start() {
      if (child) throw new Error('the relay process is already running');
      stderr = '';
      const started = spawn(process.execPath, [MAIN], { env, stdio: ['ignore', 'ignore', 'pipe'] });
      child = started;
      starts++;
      started.stderr?.on('data', (chunk: Buffer) => {
        stderr = (stderr + chunk.toString('utf8')).slice(-4_000);
      });
      exited = new Promise((resolve) => started.once('exit', () => resolve()));
      let gone = false;
      void exited.then(() => {
        gone = true;
        if (child === started) child = undefined;
      });
      const deadline = Date.now() + 60_000;
      while (!(await answers())) {
        if (gone) throw new Error(`the relay process exited during start-up: ${stderr}`);
        if (Date.now() > deadline) throw new Error(`the relay process did not answer within 60 s: ${stderr}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    },
    async kill() {
      const running = child;
      if (!running) return;
      running.kill('SIGKILL');
      await exited;
      child = undefined;
    },
    async terminate() {
      const running = child;
      if (!running) throw new Error('the relay process is not running');
      const exitCode = new Promise<number | null>((resolve) => running.once('exit', (code) => resolve(code)));
      running.kill('SIGTERM');
      await exited;
      child = undefined;
      return exitCode;
    },
    async close() {
      await relay.kill();
      await scratch?.close();
      if (dataDir) await rm(dataDir, { recursive: true, force: true });
    },
  };
  return relay;
}

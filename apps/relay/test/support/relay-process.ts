/**
 * The built relay as a child process, through @chat/relay-harness's
 * `startRelay`, for specs that kill it: SIGKILL, then start it again on the
 * same port and the same database, as a supervisor (Docker, systemd) would.
 *
 * - `DATABASE_URL` set: a scratch database on that server, dropped by `close()`
 *   (or `options.databaseUrl`, or an overriding DATABASE_URL: a database the
 *   caller owns, left in place: several relay processes on one database, as
 *   instances of one deployment, or one reached through a proxy).
 * - unset: the relay's own embedded PGlite in a temporary DATA_DIR, which
 *   outlives each kill (PGlite commits survive SIGKILL) and is removed by `close()`.
 *
 * The relay's `test` target builds the relay first (apps/relay/package.json, nx dependsOn).
 */
import { startRelay, type TestRelayProcess } from '@chat/relay-harness';
import { TEST_JWT_SECRET, type RelayEnvOverrides } from './test-relay.js';

export interface RelayProcess {
  /** `http://127.0.0.1:<port>`, the same across restarts. */
  readonly baseUrl: string;
  readonly port: number;
  /** Times the process was started. */
  readonly starts: number;
  /** Resolves once the relay is ready (/health/ready). */
  start(): Promise<void>;
  /** SIGKILL: no shutdown hook runs, open sockets die with the process. */
  kill(): Promise<void>;
  /** SIGTERM: the relay shuts down gracefully; resolves with its exit code once it has exited. */
  terminate(): Promise<number | null>;
  close(): Promise<void>;
}

export interface RelayProcessOptions {
  /** A Postgres database to use as it is (migrated by the relay); left in place by `close()`. */
  databaseUrl?: string;
}

const definedOnly = (env: RelayEnvOverrides): Record<string, string> =>
  Object.fromEntries(Object.entries(env).filter((entry): entry is [string, string] => entry[1] !== undefined));

/** A relay process, not yet started: `start()` it (the first start creates its database and port). */
export async function startRelayProcess(overrides: RelayEnvOverrides = {}, options: RelayProcessOptions = {}): Promise<RelayProcess> {
  const { DATABASE_URL: databaseUrl = options.databaseUrl, ...env } = overrides;
  let relay: TestRelayProcess | undefined;
  let starts = 0;
  const started = () => {
    if (!relay) throw new Error('start() the relay process first');
    return relay;
  };
  return {
    get baseUrl() {
      return started().url;
    },
    get port() {
      return Number(new URL(started().url).port);
    },
    get starts() {
      return starts;
    },
    async start() {
      if (relay) await relay.start();
      else
        relay = await startRelay({
          databaseUrl,
          logLevel: 'error',
          env: { JWT_SECRET: TEST_JWT_SECRET, HEARTBEAT_INTERVAL_MS: '1000', ...definedOnly(env) },
        });
      starts++;
    },
    async kill() {
      await relay?.kill();
    },
    async terminate() {
      const exit = await relay?.stop();
      if (exit === undefined) throw new Error('the relay process is not running');
      return typeof exit === 'number' ? exit : null;
    },
    async close() {
      await relay?.close();
    },
  };
}

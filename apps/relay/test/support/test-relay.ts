/**
 * E2E harness: boots the real relay (AppModule through `createRelayApp`, the
 * same wiring as main.ts) on 127.0.0.1, on a free port, on a database of its own.
 *
 * - `DATABASE_URL` set (a Postgres server): a fresh database `relay_test_<random>`
 *   is created on that server, migrated by the relay's start-up, and dropped by `close()`.
 * - `DATABASE_URL` unset: the relay's embedded PGlite, with its files in a
 *   temporary DATA_DIR that `close()` removes.
 *
 * Sealed sender: a fresh trust root certifies the relay's server key;
 * `trustRoot` is its public key, to configure SDK clients with (an
 * override of SEALED_SENDER_SERVER_CERTIFICATE replaces them: '' makes the
 * relay generate its development pair, whose trust root `trustRoot` then is).
 *
 * Argon2 is cheap, the heartbeat short and every rate limit nearly
 * unlimited; pass `overrides` (environment variables, as strings; '' for the
 * relay's own default) to change any setting. With `REDIS_URL` in the
 * environment the relay uses that Redis (rate-limit counters under a key
 * prefix of its own unless `RATE_LIMIT_KEY_PREFIX` is passed). One relay per test file
 * (`beforeAll`/`afterAll`) keeps suites fast.
 *
 *   const relay = await startTestRelay();
 *   const alice = await registerUser(relay, 'alice');
 *   const { status, body } = await httpJson(relay, 'GET', '/v1/keys', { token: alice.accessToken });
 *   await relay.close();
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { INestApplication } from '@nestjs/common';
import pg from 'pg';
import type { AuthResponse, ErrorBody } from '@chat/protocol';
import { createRelayApp } from '../../src/app.factory.js';
import { DeviceKeys } from './libsignal-keys.js';
import { loadConfig, type RelayConfig } from '../../src/config/relay-config.js';
import type { RelayEnv } from '../../src/config/relay-env.js';
import { PrismaService } from '../../src/prisma/prisma.service.js';
import { generateTrustRootAndKeys } from '../../src/sealed/sealed-sender-keys.js';

/** Relay environment variables (string values, as in `process.env`). */
export type RelayEnvOverrides = Partial<Record<keyof RelayEnv, string>>;

export interface TestRelay {
  app: INestApplication;
  config: RelayConfig;
  /** `http://127.0.0.1:<port>` */
  baseUrl: string;
  /** `ws://127.0.0.1:<port>/v1/ws` */
  wsUrl: string;
  prisma: PrismaService;
  /**
   * Base64 public key of the trust root that signed the relay's server
   * certificate (the SDK's `trustRoot` option); '' when an override put in
   * a certificate of another trust root.
   */
  trustRoot: string;
  /** Raw SQL on the relay's database ($1, $2... placeholders), for scans the API does not offer. */
  sql<Row = Record<string, unknown>>(query: string, ...params: unknown[]): Promise<Row[]>;
  close(): Promise<void>;
}

/** A secret the tests know, so they can forge tokens signed with it (expired ones, wrong audience...). */
export const TEST_JWT_SECRET = 'test-secret-of-the-relay-e2e-harness-0123456789';

/**
 * Every rate limit far above what specs do: they fetch bundles, register and
 * send many times, all from 127.0.0.1. The rate-limit specs set tight limits
 * (or '' for the defaults) themselves.
 */
export const GENEROUS_TEST_LIMITS = {
  BUNDLE_FETCHES_PER_PAIR: '100000',
  BUNDLE_FETCHES_PER_REQUESTER: '100000',
  PROVISIONING_SLOTS_PER_IP: '100000',
  PROVISIONING_RECEIVES_PER_IP: '100000',
  REGISTRATIONS_PER_IP: '100000',
  LOGINS_PER_USERNAME: '100000',
  LOGINS_PER_IP: '100000',
  REFRESHES_PER_IP: '100000',
  PASSWORD_CHECKS_PER_ACCOUNT: '100000',
  SENDS_PER_DEVICE: '1000000',
  SENDS_PER_PAIR: '1000000',
  SEALED_SENDS_PER_IP: '1000000',
  INBOUND_BYTES_PER_ACCOUNT: String(2 ** 40),
  INBOUND_BYTES_PER_IP: String(2 ** 40),
} satisfies RelayEnvOverrides;

export async function startTestRelay(overrides: RelayEnvOverrides = {}): Promise<TestRelay> {
  const cleanups: Array<() => Promise<void>> = [];
  const cleanUp = async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  };
  try {
    const dataDir = await mkdtemp(join(tmpdir(), 'relay-test-'));
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    const serverUrl = overrides.DATABASE_URL ?? process.env.DATABASE_URL;
    const sealedSender = generateTrustRootAndKeys();
    const env: Record<string, string | undefined> = {
      NODE_ENV: 'test',
      HOST: '127.0.0.1',
      PORT: '0',
      DATA_DIR: dataDir,
      JWT_SECRET: TEST_JWT_SECRET,
      // Far below the OWASP defaults: tests hash hundreds of passwords.
      ARGON2_MEMORY_KIB: '1024',
      ARGON2_TIME_COST: '1',
      ARGON2_PARALLELISM: '1',
      HEARTBEAT_INTERVAL_MS: '500',
      LOG_LEVEL: 'error',
      ...GENEROUS_TEST_LIMITS,
      // With REDIS_URL (below) counters live in that Redis, under a prefix of
      // this relay's own (pass one to share counters between two relays).
      RATE_LIMIT_KEY_PREFIX: `relay-test-${randomBytes(6).toString('hex')}`,
      SEALED_SENDER_SERVER_CERTIFICATE: sealedSender.serverCertificate,
      SEALED_SENDER_SERVER_PRIVATE_KEY: sealedSender.serverPrivateKey,
      // The run's Redis, when it has one: live deliveries then go through the Redis bus, as with many instances.
      REDIS_URL: process.env.REDIS_URL,
      ...overrides,
      DATABASE_URL: serverUrl ? await createTestDatabase(serverUrl, cleanups) : undefined,
    };
    const config = loadConfig(env);
    const app = await createRelayApp(config);
    cleanups.push(() => app.close());
    await app.listen(config.port, config.host);
    const { port } = app.getHttpServer().address() as AddressInfo;
    const prisma = app.get(PrismaService);
    return {
      app,
      config,
      baseUrl: `http://127.0.0.1:${port}`,
      wsUrl: `ws://127.0.0.1:${port}/v1/ws`,
      prisma,
      trustRoot:
        config.sealedSender.trustRoot ??
        (config.sealedSender.serverCertificate === sealedSender.serverCertificate ? sealedSender.trustRoot : ''),
      sql: <Row>(query: string, ...params: unknown[]) => prisma.$queryRawUnsafe<Row[]>(query, ...params),
      close: cleanUp,
    };
  } catch (error) {
    await cleanUp();
    throw error;
  }
}

/** Creates `relay_test_<random>` on the server of `serverUrl`; returns its URL and registers its drop. */
async function createTestDatabase(serverUrl: string, cleanups: Array<() => Promise<void>>): Promise<string> {
  const name = `relay_test_${randomBytes(6).toString('hex')}`;
  const admin = async (statement: string) => {
    const client = new pg.Client({ connectionString: serverUrl });
    await client.connect();
    try {
      await client.query(statement);
    } finally {
      await client.end();
    }
  };
  await admin(`CREATE DATABASE ${name}`);
  cleanups.push(() => admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

export interface HttpResult<Body = unknown> {
  status: number;
  /** The answer's JSON; on a refusal, an `ErrorBody` instead. */
  body: Body & Partial<ErrorBody>;
  headers: Headers;
}

export interface HttpOptions {
  /** Sent as `Authorization: Bearer <token>`. */
  token?: string;
  /** Serialized as JSON. */
  body?: unknown;
  /** Sent as is, with `Content-Type: application/json` (malformed or oversize bodies). */
  rawBody?: string | Uint8Array<ArrayBuffer>;
  headers?: Record<string, string>;
}

/** One HTTP request to the relay; `body` is the parsed JSON answer (undefined when empty). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- a test asserts on whatever JSON came back
export async function httpJson<Body = any>(
  relay: Pick<TestRelay, 'baseUrl'>,
  method: string,
  path: string,
  options: HttpOptions = {},
): Promise<HttpResult<Body>> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
  let body: string | Uint8Array<ArrayBuffer> | undefined;
  if (options.rawBody !== undefined) body = options.rawBody;
  else if (options.body !== undefined) body = JSON.stringify(options.body);
  if (body !== undefined) headers['content-type'] ??= 'application/json';
  const response = await fetch(`${relay.baseUrl}${path}`, { method, headers, body });
  const text = await response.text();
  return { status: response.status, body: (text ? JSON.parse(text) : undefined) as Body & Partial<ErrorBody>, headers: response.headers };
}

export const DEFAULT_TEST_PASSWORD = 'correct horse battery staple';

/** Registers `username` over HTTP; fails the test unless the relay answers 201. */
export async function registerUser(
  relay: Pick<TestRelay, 'baseUrl'>,
  username: string,
  password: string = DEFAULT_TEST_PASSWORD,
): Promise<AuthResponse> {
  const { status, body } = await httpJson<AuthResponse>(relay, 'POST', '/v1/auth/register', { body: { username, password } });
  if (status !== 201) throw new Error(`register ${username}: HTTP ${status} ${JSON.stringify(body)}`);
  return body;
}

/**
 * A new account whose device 1 has uploaded `keys` (a full set by default),
 * so that it can receive: what most messaging specs start from.
 */
export async function registerKeyedUser(
  relay: Pick<TestRelay, 'baseUrl'>,
  prefix: string,
  keys: DeviceKeys = new DeviceKeys(),
): Promise<{ user: AuthResponse; keys: DeviceKeys }> {
  const user = await registerUser(relay, uniqueUsername(prefix));
  const { status, body } = await httpJson(relay, 'PUT', '/v1/keys', { token: user.accessToken, body: keys.uploadRequest() });
  if (status !== 204) throw new Error(`upload keys of ${user.username}: HTTP ${status} ${JSON.stringify(body)}`);
  return { user, keys };
}

/** A username unique within the run (usernames are global on one database). */
export function uniqueUsername(prefix = 'user'): string {
  return `${prefix}_${randomBytes(4).toString('hex')}`;
}

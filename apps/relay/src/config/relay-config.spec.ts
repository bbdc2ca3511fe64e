import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from '@jest/globals';
import { PublicKey, ServerCertificate } from '@signalapp/libsignal-client';
import {
  BUNDLE_FETCH_PAIR_WINDOW_SECONDS,
  BUNDLE_FETCH_REQUESTER_WINDOW_SECONDS,
  BUNDLE_FETCHES_PER_PAIR,
  BUNDLE_FETCHES_PER_REQUESTER,
  USERNAME_COOLING_OFF_DAYS,
} from '@chat/protocol';
import { generateTrustRootAndKeys } from '../sealed/sealed-sender-keys.js';
import {
  ConfigError,
  loadConfig as loadConfigWithFiles,
  readOrCreateDevelopmentSealedSenderKeys,
  readOrCreateDevelopmentSecret,
  type LoadConfigOptions,
} from './relay-config.js';

const SECRET = 'a'.repeat(32);
const noSecretFile = () => ({ secret: 'generated-development-secret-0123456789', created: true });
const DEVELOPMENT_SEALED_SENDER = generateTrustRootAndKeys();
const noSealedSenderFile = () => ({ keys: DEVELOPMENT_SEALED_SENDER, created: true });
/** `loadConfig` without files: the development sealed-sender keys come from memory unless `options` say otherwise. */
const loadConfig = (env: Record<string, string | undefined>, options: LoadConfigOptions = {}) =>
  loadConfigWithFiles(env, { developmentSealedSenderKeys: noSealedSenderFile, ...options });

describe('loadConfig', () => {
  it('fills the documented defaults and picks the embedded database without DATABASE_URL', () => {
    const config = loadConfig({ JWT_SECRET: SECRET, DATA_DIR: '/var/lib/relay' });
    expect(config).toMatchObject({
      port: 8080,
      host: '127.0.0.1',
      nodeEnv: 'development',
      database: { mode: 'embedded', dataDir: '/var/lib/relay/pglite' },
      jwt: { secret: SECRET, ttlSeconds: 900 },
      refreshTokenTtlDays: 30,
      argon2: { memoryKib: 19456, timeCost: 2, parallelism: 1 },
      heartbeatIntervalMs: 30000,
      usernameCoolingOffDays: USERNAME_COOLING_OFF_DAYS,
      bundleFetchLimits: {
        perPair: { points: BUNDLE_FETCHES_PER_PAIR, windowSeconds: BUNDLE_FETCH_PAIR_WINDOW_SECONDS },
        perRequester: { points: BUNDLE_FETCHES_PER_REQUESTER, windowSeconds: BUNDLE_FETCH_REQUESTER_WINDOW_SECONDS },
      },
    });
    // 6 per hour per pair, 100 per hour per requester.
    expect([BUNDLE_FETCHES_PER_PAIR, BUNDLE_FETCH_PAIR_WINDOW_SECONDS, BUNDLE_FETCHES_PER_REQUESTER, BUNDLE_FETCH_REQUESTER_WINDOW_SECONDS]).toEqual([6, 3600, 100, 3600]);
  });

  it('parses numbers and the database URL', () => {
    const config = loadConfig({
      JWT_SECRET: SECRET,
      PORT: '9000',
      DATABASE_URL: 'postgresql://relay@db.internal:5432/relay',
      ARGON2_MEMORY_KIB: '1024',
      USERNAME_COOLING_OFF_DAYS: '0',
      BUNDLE_FETCHES_PER_PAIR: '2',
      BUNDLE_FETCH_PAIR_WINDOW_SECONDS: '60',
      BUNDLE_FETCHES_PER_REQUESTER: '30',
      BUNDLE_FETCH_REQUESTER_WINDOW_SECONDS: '600',
    });
    expect(config.bundleFetchLimits).toEqual({ perPair: { points: 2, windowSeconds: 60 }, perRequester: { points: 30, windowSeconds: 600 } });
    expect(config.port).toBe(9000);
    expect(config.argon2.memoryKib).toBe(1024);
    expect(config.usernameCoolingOffDays).toBe(0);
    expect(config.database).toEqual({ mode: 'postgres', url: 'postgresql://relay@db.internal:5432/relay' });
  });

  it('takes REDIS_URL for many instances, and has none by default (one instance, in-process bus)', () => {
    expect(loadConfig({ JWT_SECRET: SECRET }).redisUrl).toBeUndefined();
    expect(loadConfig({ JWT_SECRET: SECRET, REDIS_URL: '' }).redisUrl).toBeUndefined();
    expect(loadConfig({ JWT_SECRET: SECRET, REDIS_URL: 'rediss://:pw@cache.internal:6380/2' }).redisUrl).toBe('rediss://:pw@cache.internal:6380/2');
  });

  it('takes TRUST_PROXY as hops or as a list of proxy addresses and ranges, and trusts none by default', () => {
    expect(loadConfig({ JWT_SECRET: SECRET }).trustProxy).toBeUndefined();
    expect(loadConfig({ JWT_SECRET: SECRET, TRUST_PROXY: '2' }).trustProxy).toBe(2);
    expect(loadConfig({ JWT_SECRET: SECRET, TRUST_PROXY: 'loopback, 10.0.0.0/8,fd00::1' }).trustProxy).toBe('loopback,10.0.0.0/8,fd00::1');
  });

  it.each([
    ['TRUST_PROXY', 'true'],
    ['TRUST_PROXY', 'everyone'],
    ['PORT', 'eighty'],
    ['PORT', '70000'],
    ['NODE_ENV', 'staging'],
    ['DATABASE_URL', 'mysql://localhost/relay'],
    ['REDIS_URL', 'localhost:6379'],
    ['JWT_SECRET', 'too-short'],
    ['JWT_TTL_SECONDS', '0'],
    ['ARGON2_PARALLELISM', '1.5'],
    ['HEARTBEAT_INTERVAL_MS', '-1'],
    ['LOG_LEVEL', 'loud'],
    ['USERNAME_COOLING_OFF_DAYS', '-1'],
    ['BUNDLE_FETCHES_PER_PAIR', '0'],
    ['BUNDLE_FETCH_PAIR_WINDOW_SECONDS', 'hourly'],
    ['BUNDLE_FETCHES_PER_REQUESTER', '2.5'],
    ['BUNDLE_FETCH_REQUESTER_WINDOW_SECONDS', '0'],
    ['USERNAME_COOLING_OFF_DAYS', '1.5'],
    ['WS_MAX_CONNECTIONS_PER_IP', '0'],
    ['HTTP_HEADERS_TIMEOUT_MS', '0'],
    ['HTTP_REQUEST_TIMEOUT_MS', 'soon'],
    ['HTTP_CONNECTIONS_CHECK_INTERVAL_MS', '0'],
  ])('refuses %s=%s with a message naming the variable', (name, value) => {
    const load = () => loadConfig({ JWT_SECRET: SECRET, [name]: value }, { developmentSecret: noSecretFile });
    expect(load).toThrow(ConfigError);
    expect(load).toThrow(new RegExp(`^${name}: `, 'm'));
  });

  it('has slowloris timeouts and a per-address WebSocket cap by default, and takes configured ones', () => {
    expect(loadConfig({ JWT_SECRET: SECRET })).toMatchObject({
      http: { headersTimeoutMs: 15000, requestTimeoutMs: 60000, connectionsCheckIntervalMs: 1000 },
      maxWebSocketsPerIp: 256,
    });
    const config = loadConfig({
      JWT_SECRET: SECRET,
      HTTP_HEADERS_TIMEOUT_MS: '500',
      HTTP_REQUEST_TIMEOUT_MS: '800',
      HTTP_CONNECTIONS_CHECK_INTERVAL_MS: '50',
      WS_MAX_CONNECTIONS_PER_IP: '20000',
    });
    expect(config).toMatchObject({ http: { headersTimeoutMs: 500, requestTimeoutMs: 800, connectionsCheckIntervalMs: 50 }, maxWebSocketsPerIp: 20000 });
  });

  it('refuses a headers timeout longer than the request timeout, naming both', () => {
    const load = () => loadConfig({ JWT_SECRET: SECRET, HTTP_HEADERS_TIMEOUT_MS: '30000', HTTP_REQUEST_TIMEOUT_MS: '20000' });
    expect(load).toThrow(ConfigError);
    expect(load).toThrow(/HTTP_HEADERS_TIMEOUT_MS must not be greater than HTTP_REQUEST_TIMEOUT_MS/);
  });

  it('refuses to start in production without JWT_SECRET, naming it', () => {
    const load = () => loadConfig({ NODE_ENV: 'production' }, { developmentSecret: noSecretFile });
    expect(load).toThrow(ConfigError);
    expect(load).toThrow(/JWT_SECRET is required/);
  });

  it('uses the stored development secret when JWT_SECRET is unset outside production, and warns without it', () => {
    const warnings: string[] = [];
    const config = loadConfig({}, { developmentSecret: noSecretFile, warn: (message) => warnings.push(message) });
    expect(config.jwt.secret).toBe('generated-development-secret-0123456789');
    const jwtWarnings = warnings.filter((warning) => warning.includes('JWT_SECRET'));
    expect(jwtWarnings).toHaveLength(1);
    expect(warnings.join('\n')).not.toContain(config.jwt.secret);
  });

  it('treats empty variables as unset', () => {
    expect(loadConfig({ JWT_SECRET: SECRET, PORT: '', DATABASE_URL: '' }).port).toBe(8080);
  });

  it('returns a frozen object', () => {
    const config = loadConfig({ JWT_SECRET: SECRET });
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.jwt)).toBe(true);
  });
});

describe('loadConfig: sealed sender', () => {
  const production = { NODE_ENV: 'production', JWT_SECRET: SECRET };
  const keys = generateTrustRootAndKeys(7);

  it('takes the configured server certificate and key, with SENDER_CERTIFICATE_TTL_DAYS (default 7)', () => {
    const env = { ...production, SEALED_SENDER_SERVER_CERTIFICATE: keys.serverCertificate, SEALED_SENDER_SERVER_PRIVATE_KEY: keys.serverPrivateKey };
    expect(loadConfig(env).sealedSender).toEqual({
      serverCertificate: keys.serverCertificate,
      serverPrivateKey: keys.serverPrivateKey,
      certificateTtlDays: 7,
    });
    expect(loadConfig({ ...env, SENDER_CERTIFICATE_TTL_DAYS: '2' }).sealedSender.certificateTtlDays).toBe(2);
  });

  it('refuses to start in production without both, naming them', () => {
    expect(() => loadConfig(production)).toThrow(/SEALED_SENDER_SERVER_CERTIFICATE and SEALED_SENDER_SERVER_PRIVATE_KEY are required/);
    expect(() => loadConfig({ ...production, SEALED_SENDER_SERVER_CERTIFICATE: keys.serverCertificate })).toThrow(
      /SEALED_SENDER_SERVER_PRIVATE_KEY is required/,
    );
    expect(() => loadConfig({ JWT_SECRET: SECRET, SEALED_SENDER_SERVER_PRIVATE_KEY: keys.serverPrivateKey })).toThrow(
      /SEALED_SENDER_SERVER_CERTIFICATE is required/,
    );
  });

  it.each([
    ['SEALED_SENDER_SERVER_CERTIFICATE', { SEALED_SENDER_SERVER_CERTIFICATE: Buffer.from('not a certificate').toString('base64') }],
    ['SEALED_SENDER_SERVER_PRIVATE_KEY', { SEALED_SENDER_SERVER_PRIVATE_KEY: Buffer.alloc(32, 0xff).toString('base64') }],
    ['SEALED_SENDER_SERVER_PRIVATE_KEY', { SEALED_SENDER_SERVER_PRIVATE_KEY: generateTrustRootAndKeys().serverPrivateKey }],
    ['SEALED_SENDER_SERVER_CERTIFICATE', { SEALED_SENDER_SERVER_CERTIFICATE: 'not base64!' }],
    ['SENDER_CERTIFICATE_TTL_DAYS', { SENDER_CERTIFICATE_TTL_DAYS: '0' }],
  ])('refuses a bad %s, naming it', (name, bad) => {
    const load = () =>
      loadConfig({ ...production, SEALED_SENDER_SERVER_CERTIFICATE: keys.serverCertificate, SEALED_SENDER_SERVER_PRIVATE_KEY: keys.serverPrivateKey, ...bad });
    expect(load).toThrow(ConfigError);
    expect(load).toThrow(new RegExp(`^${name}`, 'm'));
  });

  it('uses the development pair outside production and names its (public) trust root in a warning', () => {
    const warnings: string[] = [];
    const config = loadConfig({ JWT_SECRET: SECRET }, { warn: (message) => warnings.push(message) });
    expect(config.sealedSender).toEqual({ ...noSealedSenderFile().keys, certificateTtlDays: 7 });
    expect(warnings).toEqual([expect.stringContaining(DEVELOPMENT_SEALED_SENDER.trustRoot)]);
    expect(warnings[0]).not.toContain(DEVELOPMENT_SEALED_SENDER.serverPrivateKey);
  });
});

describe('readOrCreateDevelopmentSealedSenderKeys', () => {
  it('creates a 0600 file once, certified by the trust root it names, and reads the same keys afterwards', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'relay-config-'));
    try {
      const first = readOrCreateDevelopmentSealedSenderKeys(dataDir);
      const second = readOrCreateDevelopmentSealedSenderKeys(dataDir);
      expect(first.created).toBe(true);
      expect(second).toEqual({ keys: first.keys, created: false });
      const certificate = ServerCertificate.deserialize(new Uint8Array(Buffer.from(first.keys.serverCertificate, 'base64')));
      expect(PublicKey.deserialize(new Uint8Array(Buffer.from(first.keys.trustRoot, 'base64'))).verify(certificate.certificateData(), certificate.signature())).toBe(true);
      const file = join(dataDir, 'sealed-sender-keys.json');
      expect(JSON.parse(await readFile(file, 'utf8'))).toEqual(first.keys);
      expect((await stat(file)).mode & 0o777).toBe(0o600);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it('refuses a damaged file instead of silently changing the trust root', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'relay-config-'));
    try {
      const { keys } = readOrCreateDevelopmentSealedSenderKeys(dataDir);
      await writeFile(join(dataDir, 'sealed-sender-keys.json'), JSON.stringify({ ...keys, trustRoot: generateTrustRootAndKeys().trustRoot }));
      expect(() => readOrCreateDevelopmentSealedSenderKeys(dataDir)).toThrow(/does not hold valid sealed-sender keys/);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

describe('readOrCreateDevelopmentSecret', () => {
  it('creates a 0600 secret file once and reads the same secret afterwards', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'relay-config-'));
    try {
      const first = readOrCreateDevelopmentSecret(join(dataDir, 'nested'));
      const second = readOrCreateDevelopmentSecret(join(dataDir, 'nested'));
      expect(first.created).toBe(true);
      expect(first.secret.length).toBeGreaterThanOrEqual(32);
      expect(second).toEqual({ secret: first.secret, created: false });
      const file = join(dataDir, 'nested', 'jwt-secret');
      expect((await readFile(file, 'utf8')).trim()).toBe(first.secret);
      expect((await stat(file)).mode & 0o777).toBe(0o600);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { plainToInstance } from 'class-transformer';
import { validateSync, type ValidationError } from 'class-validator';
import {
  generateTrustRootAndKeys,
  parseSealedSenderKeys,
  type GeneratedSealedSenderKeys,
  certifiedBy,
} from '../sealed/sealed-sender-keys.js';
import { JWT_SECRET_MIN_LENGTH, RelayEnv, type NodeEnvironment, type RelayLogLevel } from './relay-env.js';

/** The relay's settings, validated once at start-up and frozen. */
export interface RelayConfig {
  readonly port: number;
  readonly host: string;
  readonly nodeEnv: NodeEnvironment;
  readonly logLevel: RelayLogLevel;
  readonly dataDir: string;
  readonly database:
    | { readonly mode: 'postgres'; readonly url: string }
    | { readonly mode: 'embedded'; readonly dataDir: string };
  /** Absent: a single instance with the in-process delivery bus. */
  readonly redisUrl?: string;
  /** Express's `trust proxy`: hops, or the proxies' addresses and ranges; absent: trust none. */
  readonly trustProxy?: number | string;
  readonly jwt: { readonly secret: string; readonly ttlSeconds: number };
  readonly refreshTokenTtlDays: number;
  readonly argon2: { readonly memoryKib: number; readonly timeCost: number; readonly parallelism: number };
  readonly heartbeatIntervalMs: number;
  /** Node's HTTP server timeouts against connections that never finish a request (slowloris). */
  readonly http: {
    readonly headersTimeoutMs: number;
    readonly requestTimeoutMs: number;
    readonly connectionsCheckIntervalMs: number;
  };
  /** Open WebSockets one client address may hold on this instance. */
  readonly maxWebSocketsPerIp: number;
  readonly usernameCoolingOffDays: number;
  readonly bundleFetchLimits: { readonly perPair: RateLimit; readonly perRequester: RateLimit };
  /** Devices one account may have, the primary included. */
  readonly maxDevicesPerAccount: number;
  /** Per client IP: provisioning slots created, and reads of slots (receive and link). */
  readonly provisioningLimits: { readonly slotsPerIp: RateLimit; readonly receivesPerIp: RateLimit };
  /** The other rate limits (docs/protocol.md, "Rate limits"). */
  readonly rateLimits: {
    /** Prefix of the counters' keys in Redis. */
    readonly keyPrefix: string;
    readonly registerPerIp: RateLimit;
    readonly loginPerUsername: RateLimit;
    readonly loginPerIp: RateLimit;
    readonly refreshPerIp: RateLimit;
    /** Password changes and account deletions of one account, together. */
    readonly passwordChecksPerAccount: RateLimit;
    readonly sendsPerDevice: RateLimit;
    /** Sends of one account to one recipient account. */
    readonly sendsPerPair: RateLimit;
    readonly sealedSendsPerIp: RateLimit;
    /** Points are bytes of request bodies and WebSocket frames. */
    readonly inboundBytesPerAccount: RateLimit;
    /** Points are bytes of request bodies to unauthenticated endpoints. */
    readonly inboundBytesPerIp: RateLimit;
  };
  /** Message frames a connection may hold sent and unacked. */
  readonly maxInflightDeliveries: number;
  readonly retention: { readonly messageDays: number; readonly sweepIntervalMs: number };
  readonly sealedSender: {
    /** Base64 libsignal `ServerCertificate`. */
    readonly serverCertificate: string;
    /** Base64 libsignal `PrivateKey` of the certificate's key. */
    readonly serverPrivateKey: string;
    /**
     * The trust root's public key (base64), known only for keys generated
     * in development; served at `GET /v1/certificate/trust-root` then.
     */
    readonly trustRoot?: string;
    readonly certificateTtlDays: number;
  };
  /** `/health/ready`: how long a dependency may take to answer. */
  readonly healthCheckTimeoutMs: number;
  /** SIGTERM: how long in-flight work and closing sockets are waited for. */
  readonly shutdownTimeoutMs: number;
}

/** At most `points` requests per fixed window of `windowSeconds`. */
export interface RateLimit {
  readonly points: number;
  readonly windowSeconds: number;
}

/** Injection token of the `RelayConfig`. */
export const RELAY_CONFIG = Symbol('RelayConfig');

/** A variable that cannot be used; the message names it. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

export interface LoadConfigOptions {
  /**
   * Where a development relay without JWT_SECRET keeps its generated secret.
   * Returns the secret and whether it was just created.
   */
  developmentSecret?: (dataDir: string) => { secret: string; created: boolean };
  /** Told (without the secret) when a development secret is in use. */
  warn?: (message: string) => void;
  /**
   * Where a development relay without SEALED_SENDER_SERVER_CERTIFICATE and
   * SEALED_SENDER_SERVER_PRIVATE_KEY keeps its generated ones.
   */
  developmentSealedSenderKeys?: (dataDir: string) => { keys: GeneratedSealedSenderKeys; created: boolean };
}

type Env = Record<string, string | undefined>;

/**
 * Validates the environment into a `RelayConfig`. Throws `ConfigError` naming
 * every bad variable. Apart from `developmentSecret`, it has no side effects.
 */
export function loadConfig(env: Env, options: LoadConfigOptions = {}): RelayConfig {
  // Empty variables count as unset, as most shells and .env loaders mean them.
  const raw = Object.fromEntries(
    RELAY_VARIABLES.filter((name) => env[name] !== undefined && env[name] !== '').map((name) => [name, env[name]]),
  );
  const parsed = plainToInstance(RelayEnv, raw, { exposeDefaultValues: true });
  const errors = validateSync(parsed, { whitelist: true, forbidUnknownValues: true });
  if (errors.length > 0) throw new ConfigError(`Invalid relay configuration:\n${describe(errors)}`);
  // One past the request timeout would never apply (Node's createServer refuses it).
  if (parsed.HTTP_HEADERS_TIMEOUT_MS > parsed.HTTP_REQUEST_TIMEOUT_MS) {
    throw new ConfigError('Invalid relay configuration:\nHTTP_HEADERS_TIMEOUT_MS must not be greater than HTTP_REQUEST_TIMEOUT_MS');
  }

  const dataDir = resolve(parsed.DATA_DIR);
  let secret = parsed.JWT_SECRET;
  if (secret === undefined) {
    if (parsed.NODE_ENV === 'production') {
      throw new ConfigError(
        `Invalid relay configuration:\nJWT_SECRET is required when NODE_ENV=production (at least ${JWT_SECRET_MIN_LENGTH} characters)`,
      );
    }
    const stored = (options.developmentSecret ?? readOrCreateDevelopmentSecret)(dataDir);
    secret = stored.secret;
    options.warn?.(
      `JWT_SECRET is not set; using the ${stored.created ? 'newly generated' : 'stored'} development secret in ${join(dataDir, DEVELOPMENT_SECRET_FILE)}. Set JWT_SECRET in production.`,
    );
  }

  const sealedSender = sealedSenderKeysOf(parsed, dataDir, options);

  return deepFreeze<RelayConfig>({
    port: parsed.PORT,
    host: parsed.HOST,
    nodeEnv: parsed.NODE_ENV,
    logLevel: parsed.LOG_LEVEL,
    dataDir,
    database: parsed.DATABASE_URL
      ? { mode: 'postgres', url: parsed.DATABASE_URL }
      : { mode: 'embedded', dataDir: join(dataDir, 'pglite') },
    redisUrl: parsed.REDIS_URL,
    ...(parsed.TRUST_PROXY !== undefined && {
      trustProxy: /^\d+$/.test(parsed.TRUST_PROXY) ? Number(parsed.TRUST_PROXY) : parsed.TRUST_PROXY.split(',').map((part) => part.trim()).join(','),
    }),
    jwt: { secret, ttlSeconds: parsed.JWT_TTL_SECONDS },
    refreshTokenTtlDays: parsed.REFRESH_TOKEN_TTL_DAYS,
    argon2: {
      memoryKib: parsed.ARGON2_MEMORY_KIB,
      timeCost: parsed.ARGON2_TIME_COST,
      parallelism: parsed.ARGON2_PARALLELISM,
    },
    heartbeatIntervalMs: parsed.HEARTBEAT_INTERVAL_MS,
    http: {
      headersTimeoutMs: parsed.HTTP_HEADERS_TIMEOUT_MS,
      requestTimeoutMs: parsed.HTTP_REQUEST_TIMEOUT_MS,
      connectionsCheckIntervalMs: parsed.HTTP_CONNECTIONS_CHECK_INTERVAL_MS,
    },
    maxWebSocketsPerIp: parsed.WS_MAX_CONNECTIONS_PER_IP,
    usernameCoolingOffDays: parsed.USERNAME_COOLING_OFF_DAYS,
    bundleFetchLimits: {
      perPair: { points: parsed.BUNDLE_FETCHES_PER_PAIR, windowSeconds: parsed.BUNDLE_FETCH_PAIR_WINDOW_SECONDS },
      perRequester: { points: parsed.BUNDLE_FETCHES_PER_REQUESTER, windowSeconds: parsed.BUNDLE_FETCH_REQUESTER_WINDOW_SECONDS },
    },
    maxDevicesPerAccount: parsed.MAX_DEVICES_PER_ACCOUNT,
    provisioningLimits: {
      slotsPerIp: { points: parsed.PROVISIONING_SLOTS_PER_IP, windowSeconds: parsed.PROVISIONING_SLOT_WINDOW_SECONDS },
      receivesPerIp: { points: parsed.PROVISIONING_RECEIVES_PER_IP, windowSeconds: parsed.PROVISIONING_RECEIVE_WINDOW_SECONDS },
    },
    rateLimits: {
      keyPrefix: parsed.RATE_LIMIT_KEY_PREFIX,
      registerPerIp: { points: parsed.REGISTRATIONS_PER_IP, windowSeconds: parsed.REGISTRATION_WINDOW_SECONDS },
      loginPerUsername: { points: parsed.LOGINS_PER_USERNAME, windowSeconds: parsed.LOGIN_USERNAME_WINDOW_SECONDS },
      loginPerIp: { points: parsed.LOGINS_PER_IP, windowSeconds: parsed.LOGIN_IP_WINDOW_SECONDS },
      refreshPerIp: { points: parsed.REFRESHES_PER_IP, windowSeconds: parsed.REFRESH_WINDOW_SECONDS },
      passwordChecksPerAccount: { points: parsed.PASSWORD_CHECKS_PER_ACCOUNT, windowSeconds: parsed.PASSWORD_CHECK_WINDOW_SECONDS },
      sendsPerDevice: { points: parsed.SENDS_PER_DEVICE, windowSeconds: parsed.SEND_DEVICE_WINDOW_SECONDS },
      sendsPerPair: { points: parsed.SENDS_PER_PAIR, windowSeconds: parsed.SEND_PAIR_WINDOW_SECONDS },
      sealedSendsPerIp: { points: parsed.SEALED_SENDS_PER_IP, windowSeconds: parsed.SEALED_SEND_WINDOW_SECONDS },
      inboundBytesPerAccount: { points: parsed.INBOUND_BYTES_PER_ACCOUNT, windowSeconds: parsed.INBOUND_BYTES_ACCOUNT_WINDOW_SECONDS },
      inboundBytesPerIp: { points: parsed.INBOUND_BYTES_PER_IP, windowSeconds: parsed.INBOUND_BYTES_IP_WINDOW_SECONDS },
    },
    maxInflightDeliveries: parsed.MAX_INFLIGHT_DELIVERIES,
    retention: { messageDays: parsed.MESSAGE_RETENTION_DAYS, sweepIntervalMs: parsed.RETENTION_SWEEP_INTERVAL_MS },
    sealedSender: { ...sealedSender, certificateTtlDays: parsed.SENDER_CERTIFICATE_TTL_DAYS },
    healthCheckTimeoutMs: parsed.HEALTH_CHECK_TIMEOUT_MS,
    shutdownTimeoutMs: parsed.SHUTDOWN_TIMEOUT_MS,
  });
}

/**
 * The configured server certificate and key (both, or neither outside
 * production: then the development pair of DATA_DIR), checked to parse and
 * to belong together.
 */
function sealedSenderKeysOf(
  parsed: RelayEnv,
  dataDir: string,
  options: LoadConfigOptions,
): { serverCertificate: string; serverPrivateKey: string; trustRoot?: string } {
  const certificate = parsed.SEALED_SENDER_SERVER_CERTIFICATE;
  const privateKey = parsed.SEALED_SENDER_SERVER_PRIVATE_KEY;
  const invalid = (line: string) => new ConfigError(`Invalid relay configuration:\n${line}`);
  if (certificate !== undefined || privateKey !== undefined) {
    if (certificate === undefined) throw invalid('SEALED_SENDER_SERVER_CERTIFICATE is required with SEALED_SENDER_SERVER_PRIVATE_KEY');
    if (privateKey === undefined) throw invalid('SEALED_SENDER_SERVER_PRIVATE_KEY is required with SEALED_SENDER_SERVER_CERTIFICATE');
    const keys = { serverCertificate: certificate, serverPrivateKey: privateKey };
    try {
      parseSealedSenderKeys(keys);
    } catch (error) {
      throw invalid((error as Error).message);
    }
    return keys;
  }
  if (parsed.NODE_ENV === 'production') {
    throw invalid(
      'SEALED_SENDER_SERVER_CERTIFICATE and SEALED_SENDER_SERVER_PRIVATE_KEY are required when NODE_ENV=production (npm run -w apps/relay sealed-sender-keys)',
    );
  }
  const stored = (options.developmentSealedSenderKeys ?? readOrCreateDevelopmentSealedSenderKeys)(dataDir);
  options.warn?.(
    `SEALED_SENDER_SERVER_CERTIFICATE is not set; using the ${stored.created ? 'newly generated' : 'stored'} development server certificate in ${join(dataDir, DEVELOPMENT_SEALED_SENDER_FILE)}, ` +
      `signed by the trust root ${stored.keys.trustRoot} (public; configure clients with it). Set both SEALED_SENDER_* variables in production.`,
  );
  return stored.keys;
}

const RELAY_VARIABLES = [
  ...Object.keys(new RelayEnv()),
  'DATABASE_URL',
  'REDIS_URL',
  'TRUST_PROXY',
  'JWT_SECRET',
  'SEALED_SENDER_SERVER_CERTIFICATE',
  'SEALED_SENDER_SERVER_PRIVATE_KEY',
];

const DEVELOPMENT_SECRET_FILE = 'jwt-secret';

/** Keeps one random secret per data directory so that tokens survive a restart. */
export function readOrCreateDevelopmentSecret(dataDir: string): { secret: string; created: boolean } {
  const file = join(dataDir, DEVELOPMENT_SECRET_FILE);
  try {
    const secret = readFileSync(file, 'utf8').trim();
    if (secret.length >= JWT_SECRET_MIN_LENGTH) return { secret, created: false };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  mkdirSync(dataDir, { recursive: true });
  const secret = randomBytes(48).toString('base64url');
  writeFileSync(file, `${secret}\n`, { mode: 0o600 });
  // `mode` applies only when the file is created; an old, too short file keeps its bits.
  chmodSync(file, 0o600);
  return { secret, created: true };
}

const DEVELOPMENT_SEALED_SENDER_FILE = 'sealed-sender-keys.json';

/**
 * Keeps one generated trust root's server certificate and key per data
 * directory (the trust root's private key is not kept: nothing certifies
 * another key with it), so that clients configured with its public key go
 * on working after a restart.
 */
export function readOrCreateDevelopmentSealedSenderKeys(dataDir: string): { keys: GeneratedSealedSenderKeys; created: boolean } {
  const file = join(dataDir, DEVELOPMENT_SEALED_SENDER_FILE);
  let text: string | undefined;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  if (text !== undefined) {
    let keys: GeneratedSealedSenderKeys | undefined;
    try {
      const stored = JSON.parse(text) as Record<string, unknown>;
      const { trustRoot, serverCertificate, serverPrivateKey } = stored;
      if (typeof trustRoot === 'string' && typeof serverCertificate === 'string' && typeof serverPrivateKey === 'string') {
        const candidate = { trustRoot, serverCertificate, serverPrivateKey };
        if (certifiedBy(parseSealedSenderKeys(candidate).certificate, trustRoot)) keys = candidate;
      }
    } catch {
      keys = undefined;
    }
    // Replacing it would silently change the trust root that clients were configured with.
    if (!keys) throw new ConfigError(`Invalid relay configuration:\n${file} does not hold valid sealed-sender keys; delete it to generate new ones`);
    return { keys, created: false };
  }
  mkdirSync(dataDir, { recursive: true });
  const { trustRoot, serverCertificate, serverPrivateKey } = generateTrustRootAndKeys();
  const keys = { trustRoot, serverCertificate, serverPrivateKey };
  writeFileSync(file, `${JSON.stringify(keys, null, 2)}\n`, { mode: 0o600 });
  chmodSync(file, 0o600);
  return { keys, created: true };
}

function describe(errors: ValidationError[]): string {
  return errors
    .flatMap((error) => Object.values(error.constraints ?? {}).map((message) => `${error.property}: ${message}`))
    .join('\n');
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    for (const inner of Object.values(value)) deepFreeze(inner);
    Object.freeze(value);
  }
  return value;
}

import 'reflect-metadata';
import { Type } from 'class-transformer';
import { IsBase64, IsIn, IsInt, IsOptional, IsString, Matches, Max, Min, MinLength } from 'class-validator';
import {
  BUNDLE_FETCH_PAIR_WINDOW_SECONDS,
  BUNDLE_FETCH_REQUESTER_WINDOW_SECONDS,
  BUNDLE_FETCHES_PER_PAIR,
  BUNDLE_FETCHES_PER_REQUESTER,
  DEFAULT_MAX_DEVICES_PER_ACCOUNT,
  DEFAULT_MAX_INFLIGHT_DELIVERIES,
  DEFAULT_MESSAGE_RETENTION_DAYS,
  DEFAULT_SENDER_CERTIFICATE_TTL_DAYS,
  MAX_DEVICES_PER_ACCOUNT,
  USERNAME_COOLING_OFF_DAYS,
} from '@chat/protocol';

export const NODE_ENVIRONMENTS = ['development', 'production', 'test'] as const;
export type NodeEnvironment = (typeof NODE_ENVIRONMENTS)[number];

export const LOG_LEVELS = ['error', 'warn', 'log', 'debug', 'verbose'] as const;
export type RelayLogLevel = (typeof LOG_LEVELS)[number];

/** Shortest JWT secret accepted: 256 bits of HS256 key, as RFC 7518 section 3.2 requires. */
export const JWT_SECRET_MIN_LENGTH = 32;

/**
 * The relay's environment variables, as strings in and typed values out.
 * Property names are the variable names so that a validation error names the variable.
 */
export class RelayEnv {
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(0)
  @Max(65535)
  PORT = 8080;

  @IsOptional()
  @IsString()
  @MinLength(1)
  HOST = '127.0.0.1';

  @IsOptional()
  @IsIn(NODE_ENVIRONMENTS)
  NODE_ENV: NodeEnvironment = 'development';

  /** Absent: the embedded PGlite database under DATA_DIR. */
  @IsOptional()
  @Matches(/^postgres(?:ql)?:\/\/\S+$/, { message: 'DATABASE_URL must be a postgres:// or postgresql:// URL' })
  DATABASE_URL?: string;

  /**
   * Absent: one instance, live deliveries routed in-process. Set: instances
   * sharing DATABASE_URL route them through this Redis (pub/sub).
   */
  @IsOptional()
  @Matches(/^rediss?:\/\/\S+$/, { message: 'REDIS_URL must be a redis:// or rediss:// URL' })
  REDIS_URL?: string;

  /**
   * Which proxies in front of the relay to believe about the client's
   * address (`X-Forwarded-For`), for the per-IP limits: a number of hops,
   * or a comma-separated list of `loopback`, `linklocal`, `uniquelocal`,
   * addresses and CIDR ranges (Express's `trust proxy`). Unset: none, the
   * TCP peer is the client.
   */
  @IsOptional()
  @Matches(/^(\d{1,2}|(loopback|linklocal|uniquelocal|[0-9a-fA-F.:]+(\/\d{1,3})?)(\s*,\s*(loopback|linklocal|uniquelocal|[0-9a-fA-F.:]+(\/\d{1,3})?))*)$/, {
    message: 'TRUST_PROXY must be a number of hops or a comma-separated list of loopback, linklocal, uniquelocal, addresses and CIDR ranges',
  })
  TRUST_PROXY?: string;

  @IsOptional()
  @IsString()
  @MinLength(1)
  DATA_DIR = './data';

  @IsOptional()
  @IsString()
  @MinLength(JWT_SECRET_MIN_LENGTH)
  JWT_SECRET?: string;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  JWT_TTL_SECONDS = 900;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  REFRESH_TOKEN_TTL_DAYS = 30;

  // OWASP Password Storage Cheat Sheet, argon2id: m=19 MiB, t=2, p=1.
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(8)
  ARGON2_MEMORY_KIB = 19456;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  ARGON2_TIME_COST = 2;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  @Max(16)
  ARGON2_PARALLELISM = 1;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(10)
  HEARTBEAT_INTERVAL_MS = 30000;

  @IsOptional()
  @IsIn(LOG_LEVELS)
  LOG_LEVEL: RelayLogLevel = 'log';

  // Connections that never finish a request (slowloris): Node's HTTP server
  // answers 408 and closes a connection whose request headers (or whole
  // request) took longer than these, checked every
  // HTTP_CONNECTIONS_CHECK_INTERVAL_MS. An upgraded WebSocket is no longer an
  // HTTP request and is not affected (its liveness is the heartbeat's).

  /**
   * Request headers, counted from the connection's first byte (or from the
   * connection itself, when nothing comes). Headers fit in one packet; 15 s
   * outlasts four TCP retransmissions (1 + 2 + 4 + 8 s) on a lossy link.
   */
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(100)
  @Max(600000)
  HTTP_HEADERS_TIMEOUT_MS = 15000;

  /**
   * A whole request, body included (at least HTTP_HEADERS_TIMEOUT_MS): the
   * largest body (512 KiB) takes about 42 s at 100 kbit/s.
   */
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(100)
  @Max(3600000)
  HTTP_REQUEST_TIMEOUT_MS = 60000;

  /** How often the HTTP server looks for connections past those timeouts (Node's `connectionsCheckingInterval`). */
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(10)
  @Max(60000)
  HTTP_CONNECTIONS_CHECK_INTERVAL_MS = 1000;

  /**
   * Open WebSockets per client address (the address the per-IP rate limits
   * see, so TRUST_PROXY applies), counted from the upgrade request, before
   * its token is checked, until the connection closes; per instance.
   */
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  WS_MAX_CONNECTIONS_PER_IP = 256;

  // Bundle fetches (GET /v1/keys/:username) allowed per window: per pair of
  // requesting and target account, and per requesting account over all targets.
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  BUNDLE_FETCHES_PER_PAIR = BUNDLE_FETCHES_PER_PAIR;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  BUNDLE_FETCH_PAIR_WINDOW_SECONDS = BUNDLE_FETCH_PAIR_WINDOW_SECONDS;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  BUNDLE_FETCHES_PER_REQUESTER = BUNDLE_FETCHES_PER_REQUESTER;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  BUNDLE_FETCH_REQUESTER_WINDOW_SECONDS = BUNDLE_FETCH_REQUESTER_WINDOW_SECONDS;

  /** Days a deleted account's username stays unavailable; 0 frees it at once. */
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(0)
  @Max(36500)
  USERNAME_COOLING_OFF_DAYS = USERNAME_COOLING_OFF_DAYS;

  /** Devices one account may have (the primary included); at most the wire's cap. */
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  @Max(MAX_DEVICES_PER_ACCOUNT)
  MAX_DEVICES_PER_ACCOUNT = DEFAULT_MAX_DEVICES_PER_ACCOUNT;

  // Unauthenticated provisioning requests allowed per client IP and window:
  // slots created (POST /v1/provisioning), and reads of a slot
  // (POST /v1/provisioning/:id/receive and POST /v1/devices/link together).
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  PROVISIONING_SLOTS_PER_IP = 10;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  PROVISIONING_SLOT_WINDOW_SECONDS = 600;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  PROVISIONING_RECEIVES_PER_IP = 120;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  PROVISIONING_RECEIVE_WINDOW_SECONDS = 60;

  // Rate limits: at most N requests (bytes, for the inbound budgets) per fixed
  // window of seconds, counted in Redis when REDIS_URL is set (shared by all
  // instances), else in this process. Defaults follow Signal-Server's
  // limiters (RateLimiters.For) where one fits; README lists which.

  /** Prefix of the counters' Redis keys, so that relays of different deployments can share one Redis. */
  @IsOptional()
  @Matches(/^[\w:.-]{1,64}$/, { message: 'RATE_LIMIT_KEY_PREFIX must be 1 to 64 of A-Z a-z 0-9 _ : . -' })
  RATE_LIMIT_KEY_PREFIX = 'relay-rl';

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  REGISTRATIONS_PER_IP = 6;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  REGISTRATION_WINDOW_SECONDS = 180;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  LOGINS_PER_USERNAME = 10;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  LOGIN_USERNAME_WINDOW_SECONDS = 3600;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  LOGINS_PER_IP = 100;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  LOGIN_IP_WINDOW_SECONDS = 900;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  REFRESHES_PER_IP = 100;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  REFRESH_WINDOW_SECONDS = 900;

  /** Password checks of an authenticated account: password changes and account deletions together. */
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  PASSWORD_CHECKS_PER_ACCOUNT = 10;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  PASSWORD_CHECK_WINDOW_SECONDS = 86400;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  SENDS_PER_DEVICE = 300;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  SEND_DEVICE_WINDOW_SECONDS = 60;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  SENDS_PER_PAIR = 60;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  SEND_PAIR_WINDOW_SECONDS = 60;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  SEALED_SENDS_PER_IP = 600;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  SEALED_SEND_WINDOW_SECONDS = 60;

  /** Bytes of request bodies and WebSocket frames one account may send per window. */
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  INBOUND_BYTES_PER_ACCOUNT = 134_217_728;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  INBOUND_BYTES_ACCOUNT_WINDOW_SECONDS = 60;

  /** Bytes of request bodies one client IP may send to unauthenticated endpoints per window. */
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  INBOUND_BYTES_PER_IP = 134_217_728;

  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  INBOUND_BYTES_IP_WINDOW_SECONDS = 60;

  /** Message frames sent to one connection and not yet acked, at most (the delivery window). */
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  @Max(10000)
  MAX_INFLIGHT_DELIVERIES = DEFAULT_MAX_INFLIGHT_DELIVERIES;

  /** Days an undelivered message (and the answer to an idempotent send) is kept. */
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  @Max(36500)
  MESSAGE_RETENTION_DAYS = DEFAULT_MESSAGE_RETENTION_DAYS;

  /** How often the retention sweep runs. */
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1000)
  RETENTION_SWEEP_INTERVAL_MS = 3_600_000;

  /**
   * Sealed sender: the relay's server certificate (base64 libsignal
   * `ServerCertificate`, signed by the trust root that clients are
   * configured with) and its private key (base64 libsignal `PrivateKey`).
   * Both required when NODE_ENV=production; elsewhere, when unset, a pair
   * is generated once and kept in DATA_DIR. `npm run -w apps/relay
   * sealed-sender-keys` prints a fresh set.
   */
  @IsOptional()
  @IsBase64()
  SEALED_SENDER_SERVER_CERTIFICATE?: string;

  @IsOptional()
  @IsBase64()
  SEALED_SENDER_SERVER_PRIVATE_KEY?: string;

  /** Days a sender certificate (GET /v1/certificate/delivery) is valid. */
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  @Max(365)
  SENDER_CERTIFICATE_TTL_DAYS = DEFAULT_SENDER_CERTIFICATE_TTL_DAYS;

  // Operations: readiness checks and graceful shutdown.
  /** How long `/health/ready` waits for the database (and Redis) before reporting it down. */
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(100)
  @Max(60000)
  HEALTH_CHECK_TIMEOUT_MS = 1000;

  /**
   * On SIGTERM, how long the relay waits for in-flight requests, frames and
   * closing sockets before it closes what is left; below the usual 30 s
   * that an orchestrator allows between SIGTERM and SIGKILL.
   */
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(0)
  @Max(600000)
  SHUTDOWN_TIMEOUT_MS = 20000;
}

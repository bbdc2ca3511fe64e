import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { DynamicModule } from '@nestjs/common';
import type { Request } from 'express';
import { LoggerModule } from 'nestjs-pino';
import type { LevelWithSilent } from 'pino';
import type { RelayConfig } from '../config/relay-config.js';
import type { RelayLogLevel } from '../config/relay-env.js';

const PINO_LEVEL_OF: Record<RelayLogLevel, LevelWithSilent> = {
  error: 'error',
  warn: 'warn',
  log: 'info',
  debug: 'debug',
  verbose: 'trace',
};

/** Header carrying a request's id: taken from a proxy in front when well-formed, else made here; echoed in the answer. */
export const REQUEST_ID_HEADER = 'x-request-id';
const WELL_FORMED_REQUEST_ID = /^[A-Za-z0-9._-]{8,64}$/;

/**
 * Fields that are replaced with `[redacted]` wherever a log call passes them
 * (one level deep, and under `req`/`res`/`err`). The relay's own log lines
 * never pass such objects (request lines carry the method, the route pattern
 * and the status only); this catches a careless `logger.debug(request.body)`.
 */
const SECRET_FIELDS = [
  'authorization',
  'cookie',
  'password',
  'newPassword',
  'currentPassword',
  'accessToken',
  'refreshToken',
  'token',
  'secret',
  'accessKey',
  'unidentifiedAccessKey',
  '"unidentified-access-key"',
  'privateKey',
  'identityKey',
  'identityPublicKey',
  'identityPrivateKey',
  'signedPreKey',
  'pqLastResortPreKey',
  'preKeys',
  'pqPreKeys',
  'publicKey',
  'signature',
  'ciphertext',
  'payload',
  'content',
  'data',
  'certificate',
];
export const REDACTED_PATHS = [
  ...SECRET_FIELDS,
  ...SECRET_FIELDS.map((field) => `*.${field}`),
  'req.headers',
  'req.body',
  'req.query',
  'res.headers',
];

/**
 * The matched route's pattern (`/v1/accounts/:accountId`), so that what a
 * path names (whom a device looked up, whose keys it fetched) stays out of
 * the log; for a request no route matched, its path with every segment
 * after `/v1/<feature>` elided.
 */
export function routeOf(request: Request): string {
  const route = (request as Request & { route?: { path?: unknown } }).route;
  if (route && typeof route.path === 'string') return `${request.baseUrl}${route.path}`;
  const segments = request.originalUrl.split('?')[0]?.split('/') ?? [];
  return segments.length > 3 ? `${segments.slice(0, 3).join('/')}/…` : segments.join('/');
}

/**
 * JSON logs through pino for everything Nest logs, and one line per HTTP
 * request (at debug; 5xx at error): `msg` "METHOD /route/:pattern STATUS",
 * `req: { id, method }`, `res: { statusCode }`, `responseTime`.
 * Every line logged while a request is handled carries its `req.id`.
 * Never a header, body, query string or client address.
 */
export function loggingModule(config: Pick<RelayConfig, 'logLevel'>): DynamicModule {
  return LoggerModule.forRoot({
    pinoHttp: [
      {
        level: PINO_LEVEL_OF[config.logLevel],
        redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
        genReqId: (request: IncomingMessage, response: ServerResponse) => {
          const offered = request.headers[REQUEST_ID_HEADER];
          const id = typeof offered === 'string' && WELL_FORMED_REQUEST_ID.test(offered) ? offered : randomUUID();
          response.setHeader('X-Request-Id', id);
          return id;
        },
        serializers: {
          // Serialized when the request starts, before routing: the route pattern is in `msg`.
          req: (request: IncomingMessage & { id?: unknown }) => ({ id: request.id, method: request.method }),
          res: (response: ServerResponse) => ({ statusCode: response.statusCode }),
          err: (error: Error) => ({ type: error.name, message: error.message, stack: error.stack }),
        },
        wrapSerializers: false,
        customLogLevel: (_request, response, error) => (error || response.statusCode >= 500 ? 'error' : 'debug'),
        customSuccessMessage: (request, response) => `${request.method} ${routeOf(request as Request)} ${response.statusCode}`,
        customErrorMessage: (request, response) => `${request.method} ${routeOf(request as Request)} ${response.statusCode}`,
        // Lines logged while handling a request carry only its id; the request line itself carries the rest.
        quietReqLogger: true,
        customAttributeKeys: { reqId: 'requestId' },
      },
      // process.stdout rather than pino's own file descriptor writer: synchronous for files and pipes on Linux, and what a test can watch.
      process.stdout,
    ],
  });
}

import type { Server } from 'node:http';
import { Logger, type INestApplication, type LogLevel } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { NestExpressApplication } from '@nestjs/platform-express';
import { MAX_HTTP_BODY_BYTES } from '@chat/protocol';
import { Logger as PinoLogger } from 'nestjs-pino';
import { AppModule } from './app.module.js';
import { HttpExceptionFilter } from './common/http-exception.filter.js';
import { createValidationPipe } from './common/validation.js';
import { RelayWsAdapter } from './gateway/relay-ws.adapter.js';
import { RelayMetrics } from './metrics/relay-metrics.js';
import { countInFlightRequests, drain, DrainingExpressAdapter } from './shutdown/graceful-shutdown.js';
import { ShutdownState } from './shutdown/shutdown-state.js';
import { setUpOpenApi } from './openapi/openapi.js';
import type { RelayConfig } from './config/relay-config.js';
import type { RelayLogLevel } from './config/relay-env.js';

const LOG_LEVELS_FROM: Record<RelayLogLevel, LogLevel[]> = {
  error: ['fatal', 'error'],
  warn: ['fatal', 'error', 'warn'],
  log: ['fatal', 'error', 'warn', 'log'],
  debug: ['fatal', 'error', 'warn', 'log', 'debug'],
  verbose: ['fatal', 'error', 'warn', 'log', 'debug', 'verbose'],
};

/**
 * Builds the relay exactly as it runs: body limit, validation, error mapping,
 * WebSocket adapter and shutdown hooks. `main.ts` and the e2e harness both use
 * it, so tests exercise the production wiring. The caller calls `listen`.
 */
export async function createRelayApp(config: RelayConfig): Promise<INestApplication> {
  const logLevels = LOG_LEVELS_FROM[config.logLevel];
  Logger.overrideLogger(logLevels);
  const httpAdapter = new DrainingExpressAdapter();
  const app = await NestFactory.create<NestExpressApplication>(AppModule.forRoot(config), httpAdapter, {
    bodyParser: false,
    logger: logLevels,
    // Held until pino takes over below, so that start-up lines are JSON too.
    bufferLogs: true,
  });
  app.useLogger(app.get(PinoLogger));
  // The client's address behind a reverse proxy (per-IP limits); off unless TRUST_PROXY says which proxies to believe.
  if (config.trustProxy !== undefined) app.set('trust proxy', config.trustProxy);
  // Slowloris: a connection that has not sent its request headers (or whole request) in time gets 408 and is closed.
  // Node reads these when the server starts listening (the check interval) and at each check (the timeouts).
  // (`connectionsCheckingInterval` is a createServer option that @types/node does not list as a property.)
  const httpServer = app.getHttpServer() as Server & { connectionsCheckingInterval: number };
  httpServer.headersTimeout = config.http.headersTimeoutMs;
  httpServer.requestTimeout = config.http.requestTimeoutMs;
  httpServer.connectionsCheckingInterval = config.http.connectionsCheckIntervalMs;
  // Only JSON bodies: anything larger than a full key upload is refused with 413 before parsing.
  app.useBodyParser('json', { limit: MAX_HTTP_BODY_BYTES });
  app.useGlobalPipes(createValidationPipe());
  app.useGlobalFilters(new HttpExceptionFilter());
  const wsAdapter = new RelayWsAdapter(app);
  app.useWebSocketAdapter(wsAdapter);
  app.get(RelayMetrics).countSocketsOf(() => wsAdapter.servers);
  // Graceful shutdown (shutdown/graceful-shutdown.ts): app.close(), and so SIGTERM
  // and SIGINT, first drain requests, frames and sockets (1001), then run Nest's
  // hooks; after a signal the process exits 0 rather than re-raising it.
  const shutdownState = app.get(ShutdownState);
  app.use(countInFlightRequests(shutdownState));
  httpAdapter.drain = () =>
    drain({
      state: shutdownState,
      httpServer: app.getHttpServer(),
      webSocketServers: () => wsAdapter.servers,
      timeoutMs: config.shutdownTimeoutMs,
    });
  app.enableShutdownHooks(['SIGTERM', 'SIGINT'], { useProcessExit: true });
  // GET /v1/openapi.json and the UI at /v1/docs: the document of the routes above.
  setUpOpenApi(app);
  return app;
}

import { Logger, type INestApplication, type LogLevel } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { NestExpressApplication } from '@nestjs/platform-express';
import { MAX_HTTP_BODY_BYTES } from '@chat/protocol';
import { AppModule } from './app.module.js';
import { HttpExceptionFilter } from './common/http-exception.filter.js';
import { createValidationPipe } from './common/validation.js';
import { RelayWsAdapter } from './gateway/relay-ws.adapter.js';
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
  const app = await NestFactory.create<NestExpressApplication>(AppModule.forRoot(config), {
    bodyParser: false,
    logger: logLevels,
  });
  // Only JSON bodies: anything larger than a full key upload is refused with 413 before parsing.
  app.useBodyParser('json', { limit: MAX_HTTP_BODY_BYTES });
  app.useGlobalPipes(createValidationPipe());
  app.useGlobalFilters(new HttpExceptionFilter());
  app.useWebSocketAdapter(new RelayWsAdapter(app));
  app.enableShutdownHooks();
  // GET /v1/openapi.json and the UI at /v1/docs: the document of the routes above.
  setUpOpenApi(app);
  return app;
}

import 'reflect-metadata';
import { Logger } from '@nestjs/common';
import { createRelayApp } from './app.factory.js';
import { ConfigError, loadConfig } from './config/relay-config.js';

const logger = new Logger('Relay');

let config;
try {
  config = loadConfig(process.env, { warn: (message) => logger.warn(message) });
} catch (error) {
  if (!(error instanceof ConfigError)) throw error;
  logger.error(error.message);
  process.exit(1);
}

const app = await createRelayApp(config);
await app.listen(config.port, config.host);
const database = config.database.mode === 'postgres' ? 'PostgreSQL (DATABASE_URL)' : `embedded PGlite in ${config.database.dataDir}`;
logger.log(`Relay listening on ${await app.getUrl()} (database: ${database})`);

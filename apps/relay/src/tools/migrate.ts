// `npm run migrate`: applies pending migrations to the configured database
// (DATABASE_URL, or the embedded one under DATA_DIR) and exits. Stop the relay
// first when it uses the embedded database: PGlite opens its files exclusively.
import { Logger } from '@nestjs/common';
import { loadConfig } from '../config/relay-config.js';
import { openDatabase } from '../prisma/database-connection.js';
import { applyMigrations } from '../prisma/migrator.js';

const logger = new Logger('Migrate');
try {
  const config = loadConfig(process.env, { warn: (message) => logger.warn(message) });
  const database = await openDatabase(config.database);
  try {
    const applied = await applyMigrations(database.url, { log: (message) => logger.log(message) });
    logger.log(applied.length ? `${applied.length} migration(s) applied` : 'Database is up to date');
  } finally {
    await database.close();
  }
} catch (error) {
  logger.error(error instanceof Error ? error.message : String(error));
  process.exitCode = 1;
}

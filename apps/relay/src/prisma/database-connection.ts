import type { RelayConfig } from '../config/relay-config.js';
import { startEmbeddedDatabase } from './embedded-database.js';

/** Where the relay's data lives: a Postgres server, or PGlite in-process. */
export interface DatabaseConnection {
  readonly mode: RelayConfig['database']['mode'];
  readonly url: string;
  /** Connections the pool may open; the embedded database serves one at a time. */
  readonly poolMax: number;
  close(): Promise<void>;
}

export async function openDatabase(database: RelayConfig['database']): Promise<DatabaseConnection> {
  if (database.mode === 'postgres') {
    return { mode: 'postgres', url: database.url, poolMax: 10, close: async () => undefined };
  }
  const embedded = await startEmbeddedDatabase(database.dataDir);
  return { mode: 'embedded', url: embedded.url, poolMax: 1, close: () => embedded.close() };
}

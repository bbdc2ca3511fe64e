import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { startEmbeddedDatabase } from '../../src/prisma/embedded-database.js';

/** An empty database of the kind the run uses (DATABASE_URL's server, else in-memory PGlite). */
export interface ScratchDatabase {
  url: string;
  query<Row extends pg.QueryResultRow = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<Row[]>;
  close(): Promise<void>;
}

export async function createScratchDatabase(): Promise<ScratchDatabase> {
  const serverUrl = process.env.DATABASE_URL;
  let url: string;
  let dispose: () => Promise<void>;
  if (serverUrl) {
    const name = `relay_test_${randomBytes(6).toString('hex')}`;
    await runOnce(serverUrl, `CREATE DATABASE ${name}`);
    const scratch = new URL(serverUrl);
    scratch.pathname = `/${name}`;
    url = scratch.toString();
    dispose = () => runOnce(serverUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  } else {
    const embedded = await startEmbeddedDatabase('memory://');
    url = embedded.url;
    dispose = () => embedded.close();
  }
  return {
    url,
    query: async <Row extends pg.QueryResultRow>(sql: string, params: unknown[] = []) => {
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      try {
        return (await client.query<Row>(sql, params)).rows;
      } finally {
        await client.end();
      }
    },
    close: dispose,
  };
}

async function runOnce(connectionString: string, statement: string): Promise<void> {
  const client = new pg.Client({ connectionString });
  await client.connect();
  try {
    await client.query(statement);
  } finally {
    await client.end();
  }
}

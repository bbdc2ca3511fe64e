import { access, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { PGlite } from '@electric-sql/pglite';
import { PGLiteSocketServer } from '@electric-sql/pglite-socket';
import { readEmbeddedTemplate } from './embedded-template.js';

/** A PGlite database served over the Postgres wire protocol on loopback. */
export interface EmbeddedDatabase {
  /** postgresql:// URL of the loopback socket. */
  readonly url: string;
  close(): Promise<void>;
}

/**
 * Starts PGlite with its files in `dataDir` (created if missing, from the
 * build's initdb template when there is one; `memory://` keeps it in memory)
 * and serves it on 127.0.0.1 on a free port, so that the relay reaches it
 * through the same `pg` driver and Prisma adapter as a real Postgres server.
 */
export async function startEmbeddedDatabase(dataDir: string): Promise<EmbeddedDatabase> {
  let template: Blob | null = null;
  if (!dataDir.startsWith('memory://')) {
    await mkdir(dataDir, { recursive: true });
    if (!(await holdsDatabase(dataDir))) template = await readEmbeddedTemplate();
  }
  const db = await PGlite.create(dataDir, template ? { loadDataDir: template } : {});
  // PGlite is single-user: the server runs one query at a time whatever the
  // connection count. Two connections let the migrator's client and the
  // Prisma pool (max 1) overlap for the moment one closes as the other opens.
  const server = new PGLiteSocketServer({ db, host: '127.0.0.1', port: 0, maxConnections: 2 });
  try {
    await server.start();
  } catch (error) {
    await db.close();
    throw error;
  }
  return {
    url: `postgresql://postgres@${server.getServerConn()}/postgres?sslmode=disable`,
    async close() {
      await server.stop();
      await db.close();
    },
  };
}

/** PG_VERSION is the first file initdb writes into a data directory. */
async function holdsDatabase(dataDir: string): Promise<boolean> {
  try {
    await access(join(dataDir, 'PG_VERSION'));
    return true;
  } catch {
    return false;
  }
}

import { mkdir } from 'node:fs/promises';
import { PGlite } from '@electric-sql/pglite';
import { PGLiteSocketServer } from '@electric-sql/pglite-socket';

/** A PGlite database served over the Postgres wire protocol on loopback. */
export interface EmbeddedDatabase {
  /** postgresql:// URL of the loopback socket. */
  readonly url: string;
  close(): Promise<void>;
}

/**
 * Starts PGlite with its files in `dataDir` (created if missing; `memory://`
 * keeps it in memory) and serves it on 127.0.0.1 on a free port, so that the
 * relay reaches it through the same `pg` driver and Prisma adapter as a real
 * Postgres server.
 */
export async function startEmbeddedDatabase(dataDir: string): Promise<EmbeddedDatabase> {
  if (!dataDir.startsWith('memory://')) await mkdir(dataDir, { recursive: true });
  const db = await PGlite.create(dataDir);
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

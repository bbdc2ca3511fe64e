import { Logger, type OnApplicationShutdown } from '@nestjs/common';
import { PrismaPg } from '@prisma/adapter-pg';
import pg from 'pg';
import type { RelayConfig } from '../config/relay-config.js';
import { openDatabase, type DatabaseConnection } from './database-connection.js';
import { PrismaClient } from './generated/client.js';
import { applyMigrations } from './migrator.js';

/**
 * The relay's Prisma client over `@prisma/adapter-pg`, on Postgres or on the
 * embedded PGlite. Only repositories use it. `connect` opens the database and
 * applies pending migrations before the first query.
 *
 * `pool` is the adapter's own `pg` pool, for the few hot-path statements
 * (storing, reading and deleting queued messages) that repositories run as
 * plain SQL: Prisma's per-query work costs more than those statements do.
 * Sharing the pool keeps the embedded database's one connection the only one.
 */
export class PrismaService extends PrismaClient implements OnApplicationShutdown {
  private static readonly logger = new Logger('Database');

  private constructor(
    readonly database: DatabaseConnection,
    readonly pool: pg.Pool,
  ) {
    super({ adapter: new PrismaPg(pool, { disposeExternalPool: true }) });
  }

  static async connect(config: Pick<RelayConfig, 'database'>): Promise<PrismaService> {
    const database = await openDatabase(config.database);
    try {
      await applyMigrations(database.url, { log: (message) => PrismaService.logger.log(message) });
      const prisma = new PrismaService(database, PrismaService.createPool(database));
      await prisma.$connect();
      return prisma;
    } catch (error) {
      await database.close();
      throw error;
    }
  }

  /**
   * The embedded database is one PGlite session behind a socket server: a
   * connection the pool opens later (after an error, or pg's idle timeout)
   * lands in the same session, where the statements the earlier connection
   * prepared still exist, and pg would prepare its named statements again
   * (`42P05 prepared statement ... already exists` on every one). So that
   * connection is kept while idle, and a replacement starts by deallocating
   * what the session holds; pg runs a client's queries in order, so that
   * comes before anything the pool hands it out for.
   */
  private static createPool(database: DatabaseConnection): pg.Pool {
    if (database.mode !== 'embedded') return new pg.Pool({ connectionString: database.url, max: database.poolMax });
    const pool = new pg.Pool({ connectionString: database.url, max: database.poolMax, idleTimeoutMillis: 0 });
    pool.on('connect', (client) => {
      client.query('DEALLOCATE ALL').catch((error: unknown) => PrismaService.logger.error(`DEALLOCATE ALL failed: ${String(error)}`));
    });
    return pool;
  }

  async onApplicationShutdown(): Promise<void> {
    await this.$disconnect();
    await this.database.close();
  }
}

import { createHash, randomUUID } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';

/** prisma/migrations at the workspace root, from src/prisma or dist/prisma alike. */
export const MIGRATIONS_DIR = fileURLToPath(new URL('../../../../prisma/migrations', import.meta.url));

/**
 * The key `prisma migrate` locks (schema-engine, sql-schema-connector
 * `acquire_lock`), so this migrator and `prisma migrate deploy` exclude each other too.
 */
export const PRISMA_MIGRATE_ADVISORY_LOCK = 72707369;

// The DDL of prisma's schema-engine `create_migrations_table` for PostgreSQL.
const CREATE_MIGRATIONS_TABLE = `
CREATE TABLE _prisma_migrations (
    id                      VARCHAR(36) PRIMARY KEY NOT NULL,
    checksum                VARCHAR(64) NOT NULL,
    finished_at             TIMESTAMPTZ,
    migration_name          VARCHAR(255) NOT NULL,
    logs                    TEXT,
    rolled_back_at          TIMESTAMPTZ,
    started_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_steps_count     INTEGER NOT NULL DEFAULT 0
);`;

export interface MigrationFile {
  /** Folder name, `<timestamp>_<name>`. */
  name: string;
  script: string;
  /** Hex SHA-256 of the migration.sql bytes, as prisma records it. */
  checksum: string;
}

export class MigrationError extends Error {
  override name = 'MigrationError';
}

export interface MigrateOptions {
  migrationsDir?: string;
  log?: (message: string) => void;
}

/** Reads prisma/migrations/<name>/migration.sql in name (= timestamp) order. */
export async function readMigrations(migrationsDir: string = MIGRATIONS_DIR): Promise<MigrationFile[]> {
  const entries = await readdir(migrationsDir, { withFileTypes: true });
  const names = entries
    .filter((entry) => entry.isDirectory())
    .map((entry) => entry.name)
    .sort();
  return Promise.all(
    names.map(async (name) => {
      const bytes = await readFile(join(migrationsDir, name, 'migration.sql'));
      return { name, script: bytes.toString('utf8'), checksum: createHash('sha256').update(bytes).digest('hex') };
    }),
  );
}

interface AppliedMigration {
  migration_name: string;
  checksum: string;
  finished_at: Date | null;
  rolled_back_at: Date | null;
}

/**
 * Applies the pending migrations in order, each in its own transaction, and
 * records them in `_prisma_migrations` as `prisma migrate deploy` does, so that
 * prisma's own tools read this history. Refuses to run when a recorded
 * migration failed or was edited after it was applied. Returns the names applied.
 */
export async function applyMigrations(connectionString: string, options: MigrateOptions = {}): Promise<string[]> {
  const migrations = await readMigrations(options.migrationsDir);
  const client = new pg.Client({ connectionString });
  await client.connect();
  try {
    await client.query('SELECT pg_advisory_lock($1)', [PRISMA_MIGRATE_ADVISORY_LOCK]);
    try {
      return await applyPending(client, migrations, options.log ?? (() => undefined));
    } finally {
      await client.query('SELECT pg_advisory_unlock($1)', [PRISMA_MIGRATE_ADVISORY_LOCK]);
    }
  } finally {
    await client.end();
  }
}

async function applyPending(client: pg.Client, migrations: MigrationFile[], log: (message: string) => void): Promise<string[]> {
  const { rows: exists } = await client.query<{ found: boolean }>(
    `SELECT to_regclass('_prisma_migrations') IS NOT NULL AS found`,
  );
  if (!exists[0]?.found) await client.query(CREATE_MIGRATIONS_TABLE);

  const { rows: applied } = await client.query<AppliedMigration>(
    'SELECT migration_name, checksum, finished_at, rolled_back_at FROM _prisma_migrations ORDER BY started_at',
  );
  const failed = applied.find((row) => row.finished_at === null && row.rolled_back_at === null);
  if (failed) {
    throw new MigrationError(
      `Migration ${failed.migration_name} failed before and is recorded as unfinished in _prisma_migrations; ` +
        'repair the database, then mark it rolled back (prisma migrate resolve --rolled-back) or applied.',
    );
  }
  const done = new Map(applied.filter((row) => row.finished_at !== null).map((row) => [row.migration_name, row.checksum]));
  for (const migration of migrations) {
    const recorded = done.get(migration.name);
    if (recorded !== undefined && recorded !== migration.checksum) {
      throw new MigrationError(
        `Migration ${migration.name} was modified after it was applied (checksum ${recorded} recorded, ${migration.checksum} on disk); ` +
          'add a new migration instead of editing an applied one.',
      );
    }
  }
  const local = new Set(migrations.map((migration) => migration.name));
  for (const name of done.keys()) {
    if (!local.has(name)) log(`Migration ${name} is recorded in the database but missing from the migrations folder.`);
  }

  const appliedNow: string[] = [];
  for (const migration of migrations.filter((candidate) => !done.has(candidate.name))) {
    const id = randomUUID();
    // The row is written before the script, as prisma does, so that a failure
    // stays recorded (with its logs) and stops the next run.
    await client.query('INSERT INTO _prisma_migrations (id, checksum, migration_name) VALUES ($1, $2, $3)', [
      id,
      migration.checksum,
      migration.name,
    ]);
    try {
      await client.query('BEGIN');
      await client.query(migration.script);
      await client.query(
        'UPDATE _prisma_migrations SET finished_at = now(), applied_steps_count = applied_steps_count + 1 WHERE id = $1',
        [id],
      );
      await client.query('COMMIT');
    } catch (error) {
      await client.query('ROLLBACK');
      const message = error instanceof Error ? error.message : String(error);
      await client.query('UPDATE _prisma_migrations SET logs = $2 WHERE id = $1', [id, message]);
      throw new MigrationError(`Migration ${migration.name} failed: ${message}`, { cause: error });
    }
    log(`Applied migration ${migration.name}`);
    appliedNow.push(migration.name);
  }
  return appliedNow;
}

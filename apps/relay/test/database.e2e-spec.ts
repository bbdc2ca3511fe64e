import { createHash } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { appendFile, cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from '@jest/globals';
import { applyMigrations, MIGRATIONS_DIR, MigrationError } from '../src/prisma/migrator.js';
import { loadDatamodel, type Datamodel, type DmmfField, type DmmfModel } from './support/prisma-dmmf.js';
import { createScratchDatabase, type ScratchDatabase } from './support/scratch-database.js';

const INIT = '20261126000000_init';
/** Every migration folder of prisma/migrations, in the order they apply (name = timestamp order). */
const MIGRATIONS = readdirSync(MIGRATIONS_DIR, { withFileTypes: true })
  .filter((entry) => entry.isDirectory())
  .map((entry) => entry.name)
  .sort();

describe('migrations', () => {
  let db: ScratchDatabase;
  let migrationsDir: string;

  beforeEach(async () => {
    db = await createScratchDatabase();
    migrationsDir = await mkdtemp(join(tmpdir(), 'relay-migrations-'));
    await cp(MIGRATIONS_DIR, migrationsDir, { recursive: true });
  });

  afterEach(async () => {
    await db.close();
    await rm(migrationsDir, { recursive: true, force: true });
  });

  it('applies once, in timestamp order, then finds nothing to do, recording rows as prisma migrate deploy does', async () => {
    expect(MIGRATIONS[0]).toBe(INIT);
    expect(await applyMigrations(db.url, { migrationsDir })).toEqual(MIGRATIONS);
    expect(await applyMigrations(db.url, { migrationsDir })).toEqual([]);

    const rows = await db.query(
      `SELECT id, checksum, migration_name, logs, rolled_back_at, applied_steps_count,
              finished_at IS NOT NULL AS finished, finished_at >= started_at AS ordered
         FROM _prisma_migrations ORDER BY started_at, migration_name`,
    );
    const expected = [];
    for (const name of MIGRATIONS) {
      const sql = await readFile(join(MIGRATIONS_DIR, name, 'migration.sql'));
      expected.push({
        id: expect.stringMatching(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/),
        checksum: createHash('sha256').update(sql).digest('hex'),
        migration_name: name,
        logs: null,
        rolled_back_at: null,
        applied_steps_count: 1,
        finished: true,
        ordered: true,
      });
    }
    expect(rows).toEqual(expected);
  });

  it('creates _prisma_migrations with the DDL of prisma schema-engine', async () => {
    await applyMigrations(db.url, { migrationsDir });
    const columns = await db.query(
      `SELECT column_name, data_type, character_maximum_length AS length, is_nullable, column_default
         FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = '_prisma_migrations'
        ORDER BY ordinal_position`,
    );
    expect(columns).toEqual([
      { column_name: 'id', data_type: 'character varying', length: 36, is_nullable: 'NO', column_default: null },
      { column_name: 'checksum', data_type: 'character varying', length: 64, is_nullable: 'NO', column_default: null },
      { column_name: 'finished_at', data_type: 'timestamp with time zone', length: null, is_nullable: 'YES', column_default: null },
      { column_name: 'migration_name', data_type: 'character varying', length: 255, is_nullable: 'NO', column_default: null },
      { column_name: 'logs', data_type: 'text', length: null, is_nullable: 'YES', column_default: null },
      { column_name: 'rolled_back_at', data_type: 'timestamp with time zone', length: null, is_nullable: 'YES', column_default: null },
      { column_name: 'started_at', data_type: 'timestamp with time zone', length: null, is_nullable: 'NO', column_default: 'now()' },
      { column_name: 'applied_steps_count', data_type: 'integer', length: null, is_nullable: 'NO', column_default: '0' },
    ]);
  });

  it('gives messages queued before account deletion existed their sender username, and an empty one when the sender is gone', async () => {
    const deletion = '20261126020100_account_deletion';
    const earlier = MIGRATIONS.filter((name) => name < deletion);
    const partial = await mkdtemp(join(tmpdir(), 'relay-migrations-'));
    try {
      for (const name of earlier) await cp(join(MIGRATIONS_DIR, name), join(partial, name), { recursive: true });
      await applyMigrations(db.url, { migrationsDir: partial });
      const [account] = await db.query<{ id: string }>(
        `INSERT INTO accounts (id, username, password_hash) VALUES (gen_random_uuid(), 'old_sender', 'x') RETURNING id`,
      );
      const [device] = await db.query<{ id: string }>(
        `INSERT INTO devices (id, account_id, device_id) VALUES (gen_random_uuid(), $1::uuid, 1) RETURNING id`,
        [account!.id],
      );
      await db.query(
        `INSERT INTO messages (id, recipient_device_row_id, sender_account_id, sender_device_id, type, ciphertext)
         VALUES ('00000000-0000-4000-8000-000000000001', $1::uuid, $2::uuid, 1, 'signal', '\\x01'),
                ('00000000-0000-4000-8000-000000000002', $1::uuid, gen_random_uuid(), 1, 'signal', '\\x02')`,
        [device!.id, account!.id],
      );
    } finally {
      await rm(partial, { recursive: true, force: true });
    }
    expect(await applyMigrations(db.url, { migrationsDir })).toEqual(MIGRATIONS.filter((name) => name >= deletion));
    expect(await db.query('SELECT id, sender_username FROM messages ORDER BY id')).toEqual([
      { id: '00000000-0000-4000-8000-000000000001', sender_username: 'old_sender' },
      { id: '00000000-0000-4000-8000-000000000002', sender_username: '' },
    ]);
  });

  it('refuses to run when an applied migration was edited afterwards', async () => {
    await applyMigrations(db.url, { migrationsDir });
    await appendFile(join(migrationsDir, INIT, 'migration.sql'), '\n-- edited\n');
    await expect(applyMigrations(db.url, { migrationsDir })).rejects.toThrow(MigrationError);
    await expect(applyMigrations(db.url, { migrationsDir })).rejects.toThrow(/modified after it was applied/);
  });

  it('rolls a failing migration back, records it with its error, and refuses to continue past it', async () => {
    // Later than every real migration, so that all of them apply before it.
    const failing = '99991231000000_failing';
    await mkdir(join(migrationsDir, failing));
    await writeFile(join(migrationsDir, failing, 'migration.sql'), 'CREATE TABLE "half_done" ("id" INTEGER);\nSELECT 1 / 0;\n');

    await expect(applyMigrations(db.url, { migrationsDir })).rejects.toThrow(/99991231000000_failing failed: division by zero/);

    const recorded = await db.query(
      'SELECT migration_name, finished_at IS NULL AS unfinished, logs FROM _prisma_migrations ORDER BY started_at, migration_name',
    );
    expect(recorded).toEqual([
      ...MIGRATIONS.map((name) => ({ migration_name: name, unfinished: false, logs: null })),
      { migration_name: failing, unfinished: true, logs: expect.stringContaining('division by zero') },
    ]);
    expect(await db.query(`SELECT to_regclass('half_done') AS half_done`)).toEqual([{ half_done: null }]);
    await expect(applyMigrations(db.url, { migrationsDir })).rejects.toThrow(/failed before/);
  });
});

/**
 * The migrated database is what prisma/schema.prisma describes: `prisma migrate
 * diff` would find nothing. The expected side is Prisma's own DMMF of the schema.
 */
describe('migrated schema matches prisma/schema.prisma', () => {
  let db: ScratchDatabase;
  let datamodel: Datamodel;

  beforeAll(async () => {
    datamodel = loadDatamodel();
    db = await createScratchDatabase();
    await applyMigrations(db.url);
  });

  afterAll(async () => {
    await db?.close();
  });

  const tableOf = (model: DmmfModel) => model.dbName ?? model.name;
  const columnOf = (field: DmmfField) => field.dbName ?? field.name;
  const scalarFields = (model: DmmfModel) => model.fields.filter((field) => field.kind === 'scalar');
  const modelNamed = (name: string) => datamodel.models.find((model) => model.name === name) as DmmfModel;
  const columnsOf = (model: DmmfModel, fields: string[]) =>
    fields.map((name) => columnOf(model.fields.find((field) => field.name === name) as DmmfField));

  it('has exactly the tables of the models, plus _prisma_migrations', async () => {
    const rows = await db.query<{ table_name: string }>(
      `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'`,
    );
    const expected = [...datamodel.models.map(tableOf), '_prisma_migrations'].sort();
    expect(rows.map((row) => row.table_name).sort()).toEqual(expected);
  });

  it('has exactly the columns of the scalar fields, with their types, nullability and defaults', async () => {
    const rows = await db.query<ColumnRow>(
      `SELECT table_name, column_name, data_type, character_maximum_length AS length,
              datetime_precision AS precision, is_nullable, column_default
         FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name <> '_prisma_migrations'`,
    );
    const actual = rows.map(describeColumn).sort();
    const expected = datamodel.models
      .flatMap((model) => scalarFields(model).map((field) => expectedColumn(tableOf(model), field)))
      .sort();
    expect(actual).toEqual(expected);
  });

  it('has the primary keys of @id and @@id', async () => {
    const actual = await constraints('p');
    const expected = datamodel.models.map((model) => {
      const fields = model.primaryKey?.fields ?? model.fields.filter((field) => field.isId).map((field) => field.name);
      const columns = columnsOf(model, fields);
      return `${tableOf(model)}(${columns.join(',')}) ${model.primaryKey?.name ?? `${tableOf(model)}_pkey`}`;
    });
    expect(actual.sort()).toEqual(expected.sort());
  });

  it('has the unique and plain indexes of @unique, @@unique and @@index, with prisma default names', async () => {
    const rows = await db.query<{ table_name: string; index_name: string; is_unique: boolean; columns: string }>(
      `SELECT t.relname AS table_name, i.relname AS index_name, x.indisunique AS is_unique,
              (SELECT string_agg(a.attname, ',' ORDER BY k.ord)
                 FROM unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum) AS columns
         FROM pg_index x
         JOIN pg_class t ON t.oid = x.indrelid
         JOIN pg_class i ON i.oid = x.indexrelid
         JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE n.nspname = current_schema() AND NOT x.indisprimary AND t.relname <> '_prisma_migrations'`,
    );
    const actual = rows.map((row) => `${row.is_unique ? 'unique' : 'index'} ${row.table_name}(${row.columns}) ${row.index_name}`);
    const expected = datamodel.indexes
      .filter((index) => index.type === 'unique' || index.type === 'normal')
      .map((index) => {
        const model = modelNamed(index.model);
        const columns = columnsOf(
          model,
          index.fields.map((field) => field.name),
        );
        const name = index.dbName ?? `${tableOf(model)}_${columns.join('_')}_${index.type === 'unique' ? 'key' : 'idx'}`;
        return `${index.type === 'unique' ? 'unique' : 'index'} ${tableOf(model)}(${columns.join(',')}) ${name}`;
      });
    expect(actual.sort()).toEqual(expected.sort());
  });

  it('has the foreign keys of the relations, with their referential actions', async () => {
    const rows = await db.query<{ description: string }>(
      `SELECT c.conrelid::regclass::text || '(' ||
              (SELECT string_agg(a.attname, ',' ORDER BY k.ord) FROM unnest(c.conkey) WITH ORDINALITY k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum) || ') -> ' ||
              c.confrelid::regclass::text || '(' ||
              (SELECT string_agg(a.attname, ',' ORDER BY k.ord) FROM unnest(c.confkey) WITH ORDINALITY k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum) || ') ' ||
              c.conname || ' on delete ' || c.confdeltype::text || ' on update ' || c.confupdtype::text AS description
         FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE c.contype = 'f' AND n.nspname = current_schema()`,
    );
    const expected = datamodel.models.flatMap((model) =>
      model.fields
        .filter((field) => field.kind === 'object' && (field.relationFromFields?.length ?? 0) > 0)
        .map((field) => {
          const target = modelNamed(field.type);
          const from = columnsOf(model, field.relationFromFields ?? []);
          const to = columnsOf(target, field.relationToFields ?? []);
          const fromFields = (field.relationFromFields ?? []).map((name) => model.fields.find((f) => f.name === name) as DmmfField);
          // Prisma's defaults: Restrict for a required relation, SetNull for an optional one; Cascade on update.
          const onDelete = field.relationOnDelete ?? (fromFields.every((f) => f.isRequired) ? 'Restrict' : 'SetNull');
          const onUpdate = field.relationOnUpdate ?? 'Cascade';
          return `${tableOf(model)}(${from.join(',')}) -> ${tableOf(target)}(${to.join(',')}) ${tableOf(model)}_${from.join('_')}_fkey on delete ${ACTION_CODE[onDelete]} on update ${ACTION_CODE[onUpdate]}`;
        }),
    );
    expect(rows.map((row) => row.description).sort()).toEqual(expected.sort());
  });

  async function constraints(type: 'p'): Promise<string[]> {
    const rows = await db.query<{ description: string }>(
      `SELECT c.conrelid::regclass::text || '(' ||
              (SELECT string_agg(a.attname, ',' ORDER BY k.ord) FROM unnest(c.conkey) WITH ORDINALITY k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum) || ') ' || c.conname AS description
         FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE c.contype = $1 AND n.nspname = current_schema() AND c.conrelid::regclass::text <> '_prisma_migrations'`,
      [type],
    );
    return rows.map((row) => row.description);
  }
});

/** pg_constraint.confdeltype / confupdtype of each Prisma referential action. */
const ACTION_CODE: Record<string, string> = { Cascade: 'c', Restrict: 'r', NoAction: 'a', SetNull: 'n', SetDefault: 'd' };

interface ColumnRow {
  table_name: string;
  column_name: string;
  data_type: string;
  length: number | null;
  precision: number | null;
  is_nullable: 'YES' | 'NO';
  column_default: string | null;
}

function describeColumn(row: ColumnRow): string {
  const type =
    row.data_type === 'character varying'
      ? `varchar(${row.length})`
      : row.data_type.startsWith('timestamp')
        ? `${row.data_type}(${row.precision})`
        : row.data_type;
  return `${row.table_name}.${row.column_name} ${type} ${row.is_nullable === 'YES' ? 'null' : 'not null'} default ${describeDefault(row.column_default)}`;
}

function describeDefault(columnDefault: string | null): string {
  if (columnDefault === null) return 'none';
  if (columnDefault === 'CURRENT_TIMESTAMP' || columnDefault === 'now()') return 'now';
  if (/^nextval\('.+'::regclass\)$/.test(columnDefault)) return 'autoincrement';
  return columnDefault;
}

/** The Postgres column Prisma's migrate would create for a scalar field. */
function expectedColumn(table: string, field: DmmfField): string {
  const [nativeName, nativeArgs] = field.nativeType ?? [undefined, []];
  let type: string;
  switch (field.type) {
    case 'String':
      type = nativeName === 'Uuid' ? 'uuid' : nativeName === 'VarChar' ? `varchar(${nativeArgs[0]})` : 'text';
      if (nativeName && !['Uuid', 'VarChar', 'Text'].includes(nativeName)) throw new Error(`unmapped native type ${nativeName}`);
      break;
    case 'Int':
      type = 'integer';
      break;
    case 'BigInt':
      type = 'bigint';
      break;
    case 'Bytes':
      type = 'bytea';
      break;
    case 'Boolean':
      type = 'boolean';
      break;
    case 'DateTime':
      type =
        nativeName === 'Timestamptz'
          ? `timestamp with time zone(${nativeArgs[0] ?? 6})`
          : nativeName === undefined
            ? 'timestamp without time zone(3)'
            : (() => {
                throw new Error(`unmapped native type ${nativeName}`);
              })();
      break;
    default:
      throw new Error(`unmapped Prisma type ${field.type} of ${table}.${field.name}`);
  }
  const fieldDefault = field.default;
  let defaultValue = 'none';
  if (typeof fieldDefault === 'object' && fieldDefault !== null) {
    // uuid() and cuid() are filled in by the client, not by the database.
    if (fieldDefault.name === 'now') defaultValue = 'now';
    else if (fieldDefault.name === 'autoincrement') defaultValue = 'autoincrement';
    else if (!['uuid', 'cuid'].includes(fieldDefault.name)) throw new Error(`unmapped default ${fieldDefault.name}`);
  } else if (typeof fieldDefault === 'number' && field.type === 'Int') {
    // information_schema shows an integer literal default as its digits.
    defaultValue = String(fieldDefault);
  } else if (typeof fieldDefault === 'boolean' && field.type === 'Boolean') {
    // ... and a boolean literal default as true or false.
    defaultValue = String(fieldDefault);
  } else if (fieldDefault !== undefined) {
    throw new Error(`unmapped literal default of ${table}.${field.name}`);
  }
  return `${table}.${field.dbName ?? field.name} ${type} ${field.isRequired ? 'not null' : 'null'} default ${defaultValue}`;
}

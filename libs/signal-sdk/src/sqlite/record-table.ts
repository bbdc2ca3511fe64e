import type Database from 'better-sqlite3';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import type { RecordKeys } from './store-crypto.js';

/** What a record is; part of every record's row key and AAD. */
export enum RecordKind {
  LocalIdentity = 'local-identity',
  Identity = 'identity',
  Session = 'session',
  PreKey = 'pre-key',
  SignedPreKey = 'signed-pre-key',
  KyberPreKey = 'kyber-pre-key',
  KyberLastResortUse = 'kyber-last-resort-use',
  SenderKey = 'sender-key',
  Metadata = 'metadata',
  PendingMessage = 'pending-message',
  SentMessage = 'sent-message',
  SentMessageIndex = 'sent-message-index',
  ReceivedMessage = 'received-message',
  /** Receive dedupe: an envelope id already processed; `seq` is the order saved (trimmed oldest first). */
  ProcessedEnvelope = 'processed-envelope',
  /** The outbox; `seq` keeps the order queued (an upsert keeps a row's `seq`). */
  OutgoingMessage = 'outgoing-message',
}

/** An app's own records (`SqliteStores.appRecords`): one kind per collection, never one of the SDK's kinds. */
export type AppRecordKind = `app:${string}`;

type AnyRecordKind = RecordKind | AppRecordKind;

/** A row as stored. */
export interface RecordRow {
  seq: number;
  kind: string;
  lookup: Buffer;
  value: Buffer;
}

/**
 * The `records` table: every record sealed by `RecordKeys`, under its
 * HMAC row key. Calls are synchronous (better-sqlite3), so each one is
 * atomic with respect to other JavaScript.
 */
export class RecordTable {
  private keys: RecordKeys | null;
  private readonly statements: {
    select: Database.Statement<[string, Buffer], { value: Buffer }>;
    upsert: Database.Statement<[string, Buffer, Buffer]>;
    remove: Database.Statement<[string, Buffer]>;
    ofKind: Database.Statement<[string], { lookup: Buffer; value: Buffer }>;
    trim: Database.Statement<[{ kind: string; keep: number }]>;
    all: Database.Statement<[], RecordRow>;
  };

  constructor(
    private readonly db: Database.Database,
    keys: RecordKeys,
  ) {
    this.keys = keys;
    this.statements = {
      select: db.prepare('SELECT value FROM records WHERE kind = ? AND lookup = ?'),
      upsert: db.prepare(
        'INSERT INTO records (kind, lookup, value) VALUES (?, ?, ?) ON CONFLICT (kind, lookup) DO UPDATE SET value = excluded.value',
      ),
      remove: db.prepare('DELETE FROM records WHERE kind = ? AND lookup = ?'),
      ofKind: db.prepare('SELECT lookup, value FROM records WHERE kind = ? ORDER BY seq'),
      // Walks the (kind, seq) index back `keep` rows: cheap enough to run after every insert.
      trim: db.prepare(
        'DELETE FROM records WHERE kind = :kind AND seq < (SELECT seq FROM records WHERE kind = :kind ORDER BY seq DESC LIMIT 1 OFFSET :keep - 1)',
      ),
      all: db.prepare('SELECT seq, kind, lookup, value FROM records ORDER BY seq'),
    };
  }

  /** The payload under (kind, id), or null. @throws {SecureChatError} `StoreTampered`. */
  get(kind: AnyRecordKind, id: string): Buffer | null {
    const keys = this.currentKeys();
    const lookup = keys.lookup(kind, id);
    const row = sqlite(() => this.statements.select.get(kind, lookup));
    return row ? keys.open(kind, lookup, row.value).payload : null;
  }

  put(kind: AnyRecordKind, id: string, payload: Uint8Array): void {
    const { lookup, value } = this.currentKeys().seal(kind, id, payload);
    sqlite(() => this.statements.upsert.run(kind, lookup, value));
  }

  delete(kind: AnyRecordKind, id: string): void {
    const lookup = this.currentKeys().lookup(kind, id);
    sqlite(() => this.statements.remove.run(kind, lookup));
  }

  /** Every record of `kind`, oldest first. @throws {SecureChatError} `StoreTampered`. */
  list(kind: AnyRecordKind): Array<{ id: string; payload: Buffer }> {
    const keys = this.currentKeys();
    return sqlite(() => this.statements.ofKind.all(kind)).map((row) => keys.open(kind, row.lookup, row.value));
  }

  /** Deletes all but the `keep` newest records of `kind`. */
  trimOldest(kind: AnyRecordKind, keep: number): void {
    this.currentKeys();
    sqlite(() => this.statements.trim.run({ kind, keep }));
  }

  rows(): RecordRow[] {
    this.currentKeys();
    return sqlite(() => this.statements.all.all());
  }

  /** Decrypts every row. @throws {SecureChatError} `StoreTampered` at the first that does not authenticate. */
  verifyAll(): void {
    const keys = this.currentKeys();
    for (const row of this.rows()) keys.open(row.kind, row.lookup, row.value);
  }

  /**
   * Seals every record again under `next` (new row keys, new nonces) and
   * returns the keys it replaced. Call inside a SQLite transaction.
   */
  rekey(next: RecordKeys, update: (seq: number, sealed: { lookup: Buffer; value: Buffer }) => void): RecordKeys {
    const previous = this.currentKeys();
    for (const row of this.rows()) {
      const { id, payload } = previous.open(row.kind, row.lookup, row.value);
      update(row.seq, next.seal(row.kind, id, payload));
    }
    return previous;
  }

  /** Starts using `keys` (after a committed `rekey`). */
  useKeys(keys: RecordKeys): void {
    this.keys = keys;
  }

  /** Forgets the keys; every later call fails with `InvalidState`. */
  close(): void {
    this.keys?.destroy();
    this.keys = null;
  }

  private currentKeys(): RecordKeys {
    if (!this.keys || !this.db.open) throw new SecureChatError(SecureChatErrorCode.InvalidState, 'the store is closed');
    return this.keys;
  }
}

/**
 * Runs a better-sqlite3 call, mapping SQLite's errors to the SDK's codes: a
 * corrupt or foreign file is `StoreTampered`, a file another connection
 * holds is `StoreLocked`, anything else `StoreFailure`.
 */
export function sqlite<T>(call: () => T): T {
  try {
    return call();
  } catch (error) {
    throw fromSqliteError(error);
  }
}

export function fromSqliteError(error: unknown): unknown {
  if (SecureChatError.is(error)) return error;
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code !== 'string' || !code.startsWith('SQLITE_')) return error;
  if (code.startsWith('SQLITE_CORRUPT') || code === 'SQLITE_NOTADB') {
    return new SecureChatError(SecureChatErrorCode.StoreTampered, 'the store file is damaged or not a store', { cause: error });
  }
  if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) {
    return new SecureChatError(SecureChatErrorCode.StoreLocked, 'another connection holds the store file', { cause: error });
  }
  return new SecureChatError(SecureChatErrorCode.StoreFailure, `the store's database failed (${code})`, { cause: error });
}

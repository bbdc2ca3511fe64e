import Database from 'better-sqlite3';
import {
  IdentityKeyPair,
  KyberPreKeyRecord,
  PreKeyRecord,
  PreKeyStore,
  ProtocolAddress,
  PublicKey,
  SenderKeyRecord,
  SenderKeyStore,
  SessionRecord,
  SignedPreKeyRecord,
  type Uuid,
} from '@signalapp/libsignal-client';
import { KEY_ID_MAX } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { asDeviceId, asRegistrationId, type DeviceId } from '../ids.js';
import {
  KeyIdKind,
  MAX_PENDING_MESSAGES,
  MAX_PROCESSED_ENVELOPES,
  MAX_RECEIVED_MESSAGES,
  MAX_SENT_MESSAGES_PER_PEER,
  SecureChatIdentityKeyStore,
  SecureChatKyberPreKeyStore,
  SecureChatMetadataStore,
  SecureChatSessionStore,
  SecureChatSignedPreKeyStore,
  type AccountRecord,
  type LocalIdentity,
  type OutgoingMessageRecord,
  type PeerIdentityRecord,
  type PendingMessage,
  type ReceivedMessageRecord,
  type SecureChatStores,
  type SentMessageRecord,
  type SignedKeysState,
} from '../stores/stores.js';
import { receivedMessageKey, sentMessageKey } from '../stores/message-log-keys.js';
import { StoreGate, transactionalStores, type StoreSet } from '../stores/transactional-stores.js';
import { RecordKind, RecordTable, fromSqliteError, sqlite, type AppRecordKind } from './record-table.js';
import type { GroupRecord } from '../groups/group-rules.js';
import type { GroupSendSequence, MessageSequence, SequenceTrack } from '../session/message-sequence.js';
import { groupIdFromString, groupIdToString, type GroupMember } from '../groups/group-wire.js';
import {
  DEFAULT_STORE_KDF,
  STORE_FORMAT_VERSION,
  createKeyHeader,
  isSupportedStoreKdf,
  passphraseBytes,
  unlockKeyHeader,
  type KeyHeader,
  type StoreKdfParams,
} from './store-crypto.js';

// The file's layout is documented in docs/stores.md ("Store format"); change both together.
const SCHEMA = `
CREATE TABLE IF NOT EXISTS store_header (
  id            INTEGER PRIMARY KEY CHECK (id = 1),
  format        INTEGER NOT NULL,
  kdf_algorithm TEXT    NOT NULL,
  kdf_log_n     INTEGER NOT NULL,
  kdf_r         INTEGER NOT NULL,
  kdf_p         INTEGER NOT NULL,
  salt          BLOB    NOT NULL,
  wrapped_key   BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
  seq    INTEGER PRIMARY KEY,
  kind   TEXT NOT NULL,
  lookup BLOB NOT NULL,
  value  BLOB NOT NULL,
  UNIQUE (kind, lookup)
);
CREATE INDEX IF NOT EXISTS records_kind_seq ON records (kind, seq);
`;

export interface SqliteStoreOptions {
  /** The database file. A missing file becomes a new, empty store locked by `passphrase`. */
  path: string;
  /** Strings are NFC-normalised first. */
  passphrase: string | Uint8Array;
  /**
   * scrypt cost when this call creates the store (default `DEFAULT_STORE_KDF`).
   * An existing store uses the cost written in its header. Lower it only in tests.
   */
  kdf?: StoreKdfParams;
}

/**
 * One collection of an app's own records (chat history, settings), kept in
 * the store file and encrypted and authenticated like the SDK's records.
 * Keys and values are the app's; a key is hashed into the row key, never
 * written in the clear.
 */
export interface AppRecordCollection {
  get(key: string): Promise<Uint8Array | null>;
  /** Writes `value` under `key`; replacing a record keeps its place in `list` order. */
  put(key: string, value: Uint8Array): Promise<void>;
  delete(key: string): Promise<void>;
  /** Every record, in the order first written. */
  list(): Promise<Array<{ key: string; value: Uint8Array }>>;
  /** Deletes all but the `count` (at least 1) most recently first-written records. */
  keepNewest(count: number): Promise<void>;
}

/** `appRecords` collection names: short, and plain enough to read in a file listing of kinds. */
const APP_COLLECTION_NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;

export interface ChangePassphraseOptions {
  /** scrypt cost for the new passphrase (default `DEFAULT_STORE_KDF`). */
  kdf?: StoreKdfParams;
}

const bytes = (buffer: Uint8Array): Uint8Array<ArrayBuffer> => new Uint8Array(buffer);
const json = (value: unknown) => Buffer.from(JSON.stringify(value), 'utf8');
const parseJson = <T>(payload: Buffer): T => JSON.parse(payload.toString('utf8')) as T;
const addressId = (address: ProtocolAddress) => `${address.name()}.${address.deviceId()}`;
const notFound = (what: string) => new SecureChatError(SecureChatErrorCode.RecordNotFound, `no ${what}`);

/**
 * Every store the client needs, in one SQLite file, every record encrypted
 * under a key derived from a passphrase (docs/stores.md). Opening checks the
 * whole file; a record that fails authentication is never used.
 *
 *   const stores = await SqliteStores.open({ path: 'alice.db', passphrase });
 *   const client = SecureChatClient.create({ relayUrl, stores });
 *   ...
 *   await client.close();
 *   await stores.close();
 *
 * One process and one `SqliteStores` per file: the file is locked while open.
 * Store calls are queued, so `transaction` is atomic and isolated, and WAL
 * with `synchronous=FULL` makes each commit durable before it returns.
 */
export class SqliteStores implements SecureChatStores {
  readonly session: SecureChatSessionStore;
  readonly identity: SecureChatIdentityKeyStore;
  readonly preKey: PreKeyStore;
  readonly signedPreKey: SecureChatSignedPreKeyStore;
  readonly kyberPreKey: SecureChatKyberPreKeyStore;
  readonly senderKey: SenderKeyStore;
  readonly metadata: SecureChatMetadataStore;
  private readonly gated: SecureChatStores;
  private readonly gate = new StoreGate();

  private constructor(
    private readonly db: Database.Database,
    private readonly records: RecordTable,
  ) {
    const raw: StoreSet = {
      session: new SqliteSessionStore(records),
      identity: new SqliteIdentityKeyStore(records),
      preKey: new SqlitePreKeyStore(records),
      signedPreKey: new SqliteSignedPreKeyStore(records),
      kyberPreKey: new SqliteKyberPreKeyStore(records),
      senderKey: new SqliteSenderKeyStore(records),
      metadata: new SqliteMetadataStore(records),
    };
    this.gated = transactionalStores(
      raw,
      {
        begin: () => {
          sqlite(() => db.exec('BEGIN IMMEDIATE'));
        },
        commit: () => {
          sqlite(() => db.exec('COMMIT'));
        },
        rollback: () => {
          if (db.open && db.inTransaction) sqlite(() => db.exec('ROLLBACK'));
        },
      },
      this.gate,
    );
    ({
      session: this.session,
      identity: this.identity,
      preKey: this.preKey,
      signedPreKey: this.signedPreKey,
      kyberPreKey: this.kyberPreKey,
      senderKey: this.senderKey,
      metadata: this.metadata,
    } = this.gated);
  }

  /**
   * Opens the store at `options.path`, creating it if the file does not
   * exist, and checks it: SQLite's integrity check and every record's
   * authentication.
   * @throws {SecureChatError} `WrongPassphrase`; `StoreTampered` (a record or the file was altered or
   *   damaged); `StoreLocked` (another connection has the file open); `InvalidArgument` (empty
   *   passphrase); `InvalidOptions` (`kdf` outside `STORE_KDF_LIMITS`); `StoreFailure` (the file
   *   cannot be opened or written).
   */
  static async open(options: SqliteStoreOptions): Promise<SqliteStores> {
    const passphrase = passphraseBytes(options.passphrase);
    const kdf = options.kdf ?? DEFAULT_STORE_KDF;
    if (!isSupportedStoreKdf(kdf)) {
      throw new SecureChatError(SecureChatErrorCode.InvalidOptions, 'store scrypt parameters are outside STORE_KDF_LIMITS');
    }
    let db: Database.Database;
    try {
      db = new Database(options.path, { timeout: 0 });
    } catch (error) {
      const mapped = fromSqliteError(error);
      // better-sqlite3 refuses a missing directory with a plain TypeError.
      throw SecureChatError.is(mapped)
        ? mapped
        : new SecureChatError(SecureChatErrorCode.StoreFailure, 'the store file cannot be opened', { cause: error });
    }
    try {
      const header = sqlite(() => prepareFile(db));
      let keys;
      if (header) {
        keys = await unlockKeyHeader(header, passphrase);
      } else {
        const created = await createKeyHeader(passphrase, kdf);
        sqlite(() => writeHeader(db, created.header));
        keys = created.keys;
      }
      const records = new RecordTable(db, keys);
      try {
        const stores = new SqliteStores(db, records);
        stores.verifyNow();
        return stores;
      } catch (error) {
        records.close();
        throw error;
      }
    } catch (error) {
      db.close();
      throw fromSqliteError(error);
    } finally {
      passphrase.fill(0);
    }
  }

  transaction<T>(fn: (stores: SecureChatStores) => Promise<T>): Promise<T> {
    return this.gated.transaction!(fn);
  }

  /**
   * Runs SQLite's integrity check and authenticates every record.
   * @throws {SecureChatError} `StoreTampered`, `InvalidState` after `close`.
   */
  verify(): Promise<void> {
    return this.gate.exclusive(() => this.verifyNow());
  }

  /**
   * Locks the store with a new passphrase: a new salt and a new random data
   * key, and every record encrypted again under it, all in one SQLite
   * transaction (a crash leaves the old passphrase and data key in force).
   * Old record versions are then flushed from the WAL; deleted content is
   * zeroed (`secure_delete`).
   * @throws {SecureChatError} `InvalidArgument`, `InvalidOptions`, `StoreTampered`, `StoreFailure`,
   *   `InvalidState` after `close`.
   */
  changePassphrase(passphrase: string | Uint8Array, options: ChangePassphraseOptions = {}): Promise<void> {
    const newPassphrase = passphraseBytes(passphrase);
    const kdf = options.kdf ?? DEFAULT_STORE_KDF;
    return this.gate.exclusive(async () => {
      try {
        this.assertOpen();
        const { header, keys } = await createKeyHeader(newPassphrase, kdf);
        const update = this.db.prepare('UPDATE records SET lookup = ?, value = ? WHERE seq = ?');
        let previous;
        try {
          previous = sqlite(() =>
            this.db
              .transaction(() => {
                const replaced = this.records.rekey(keys, (seq, sealed) => update.run(sealed.lookup, sealed.value, seq));
                writeHeader(this.db, header);
                return replaced;
              })
              .immediate(),
          );
        } catch (error) {
          keys.destroy();
          throw error;
        }
        this.records.useKeys(keys);
        previous.destroy();
        sqlite(() => this.db.pragma('wal_checkpoint(TRUNCATE)'));
      } finally {
        newPassphrase.fill(0);
      }
    });
  }

  /**
   * The app's collection `name` (lower-case letters, digits and `-`, at most
   * 63), beside the SDK's records. Calls wait for an open transaction.
   * @throws {SecureChatError} `InvalidArgument` (a bad name); the collection's calls throw
   *   `StoreTampered`, `StoreFailure`, `InvalidState` after `close`.
   */
  appRecords(name: string): AppRecordCollection {
    if (!APP_COLLECTION_NAME.test(name)) {
      throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'an app collection name is 1-63 of a-z, 0-9 and -');
    }
    const kind: AppRecordKind = `app:${name}`;
    const run = <T>(task: () => T) =>
      this.gate.exclusive(() => {
        this.assertOpen();
        return task();
      });
    return {
      get: (key) => run(() => this.records.get(kind, key)).then((payload) => (payload ? bytes(payload) : null)),
      put: (key, value) => run(() => this.records.put(kind, key, value)),
      delete: (key) => run(() => this.records.delete(kind, key)),
      list: () => run(() => this.records.list(kind).map(({ id, payload }) => ({ key: id, value: bytes(payload) }))),
      keepNewest: (count) => {
        if (!Number.isInteger(count) || count < 1) {
          return Promise.reject(new SecureChatError(SecureChatErrorCode.InvalidArgument, 'count must be a whole number of at least 1'));
        }
        return run(() => this.records.trimOldest(kind, count));
      },
    };
  }

  /** Waits for queued calls, then closes the file and forgets the keys. Idempotent. */
  close(): Promise<void> {
    return this.gate.exclusive(() => {
      if (!this.db.open) return;
      this.records.close();
      this.db.close();
    });
  }

  private assertOpen(): void {
    if (!this.db.open) throw new SecureChatError(SecureChatErrorCode.InvalidState, 'the store is closed');
  }

  private verifyNow(): void {
    this.assertOpen();
    const result = sqlite(() => this.db.pragma('integrity_check') as Array<{ integrity_check: string }>);
    if (result.length !== 1 || result[0]?.integrity_check !== 'ok') {
      throw new SecureChatError(SecureChatErrorCode.StoreTampered, 'the store file failed SQLite integrity_check');
    }
    this.records.verifyAll();
  }
}

/**
 * Sets the connection up and reads the header (null for a new file).
 *
 * - locking_mode=EXCLUSIVE: the first write takes a lock held until close,
 *   so a second process (or connection) gets SQLITE_BUSY, not a second
 *   writer racing the ratchet; with WAL it also keeps the WAL index in
 *   process memory (no -shm file).
 * - journal_mode=WAL with synchronous=FULL: a transaction is durable once
 *   COMMIT returns. NORMAL would survive a killed process too, but could lose
 *   the last commits on power loss, and the client acks a message to the
 *   relay (which then deletes it) right after its decryption commits.
 * - secure_delete: deleted one-time prekeys and old ratchet states are
 *   overwritten, not left in free pages (forward secrecy on disk).
 */
function prepareFile(db: Database.Database): KeyHeader | null {
  db.pragma('locking_mode = EXCLUSIVE');
  if (db.pragma('journal_mode = WAL', { simple: true }) !== 'wal') {
    throw new SecureChatError(SecureChatErrorCode.StoreFailure, 'the store file cannot use write-ahead logging');
  }
  db.pragma('synchronous = FULL');
  db.pragma('secure_delete = ON');
  // Takes the exclusive lock now, so a second opener fails here.
  db.exec('BEGIN IMMEDIATE');
  try {
    db.exec(SCHEMA);
    const header = readHeader(db);
    db.exec('COMMIT');
    return header;
  } catch (error) {
    if (db.inTransaction) db.exec('ROLLBACK');
    throw error;
  }
}

interface HeaderRow {
  format: unknown;
  kdf_algorithm: unknown;
  kdf_log_n: unknown;
  kdf_r: unknown;
  kdf_p: unknown;
  salt: unknown;
  wrapped_key: unknown;
}

function readHeader(db: Database.Database): KeyHeader | null {
  const row = db.prepare('SELECT * FROM store_header WHERE id = 1').get() as HeaderRow | undefined;
  if (!row) {
    const records = db.prepare('SELECT count(*) AS n FROM records').get() as { n: number };
    if (records.n > 0) throw new SecureChatError(SecureChatErrorCode.StoreTampered, 'the store has records but no key header');
    return null;
  }
  const integer = (value: unknown) => (typeof value === 'number' && Number.isInteger(value) ? value : Number.NaN);
  if (row.kdf_algorithm !== 'scrypt' || !Buffer.isBuffer(row.salt) || !Buffer.isBuffer(row.wrapped_key)) {
    throw new SecureChatError(SecureChatErrorCode.StoreTampered, 'the store header is not one this version writes');
  }
  return {
    format: integer(row.format),
    kdf: { logN: integer(row.kdf_log_n), r: integer(row.kdf_r), p: integer(row.kdf_p) },
    salt: row.salt,
    wrappedKey: row.wrapped_key,
  };
}

function writeHeader(db: Database.Database, header: KeyHeader): void {
  db.prepare(
    `INSERT INTO store_header (id, format, kdf_algorithm, kdf_log_n, kdf_r, kdf_p, salt, wrapped_key)
     VALUES (1, ?, 'scrypt', ?, ?, ?, ?, ?)
     ON CONFLICT (id) DO UPDATE SET format = excluded.format, kdf_algorithm = excluded.kdf_algorithm,
       kdf_log_n = excluded.kdf_log_n, kdf_r = excluded.kdf_r, kdf_p = excluded.kdf_p,
       salt = excluded.salt, wrapped_key = excluded.wrapped_key`,
  ).run(STORE_FORMAT_VERSION, header.kdf.logN, header.kdf.r, header.kdf.p, header.salt, header.wrappedKey);
}

// --- the stores -------------------------------------------------------------
// Records hold `serialize()` bytes (libsignal `TestStores.ts`); the policies
// are the memory stores' (see memory-stores.ts), kept here on disk.

class SqliteSessionStore extends SecureChatSessionStore {
  constructor(private readonly records: RecordTable) {
    super();
  }

  async saveSession(address: ProtocolAddress, record: SessionRecord): Promise<void> {
    this.records.put(RecordKind.Session, addressId(address), record.serialize());
  }

  async getSession(address: ProtocolAddress): Promise<SessionRecord | null> {
    const payload = this.records.get(RecordKind.Session, addressId(address));
    return payload ? SessionRecord.deserialize(bytes(payload)) : null;
  }

  async removeSession(address: ProtocolAddress): Promise<void> {
    this.records.delete(RecordKind.Session, addressId(address));
  }

  async getExistingSessions(addresses: ProtocolAddress[]): Promise<SessionRecord[]> {
    return addresses.map((address) => {
      const payload = this.records.get(RecordKind.Session, addressId(address));
      if (!payload) throw notFound(`session for ${addressId(address)}`);
      return SessionRecord.deserialize(bytes(payload));
    });
  }
}

const LOCAL_IDENTITY_ID = 'local';

/** Keyed by username; the trust policy is the base class's. */
class SqliteIdentityKeyStore extends SecureChatIdentityKeyStore {
  constructor(private readonly records: RecordTable) {
    super();
  }

  async getLocalIdentity(): Promise<LocalIdentity | null> {
    const payload = this.records.get(RecordKind.LocalIdentity, LOCAL_IDENTITY_ID);
    if (!payload) return null;
    return {
      registrationId: asRegistrationId(payload.readUInt16BE(0)),
      identityKeyPair: IdentityKeyPair.deserialize(bytes(payload.subarray(2))),
    };
  }

  async saveLocalIdentity(identity: LocalIdentity): Promise<void> {
    const registrationId = Buffer.alloc(2);
    registrationId.writeUInt16BE(identity.registrationId);
    this.records.put(RecordKind.LocalIdentity, LOCAL_IDENTITY_ID, Buffer.concat([registrationId, identity.identityKeyPair.serialize()]));
  }

  async getPeerIdentity(username: string): Promise<PeerIdentityRecord | null> {
    const payload = this.records.get(RecordKind.Identity, username);
    return payload ? decodePeerIdentity(username, payload) : null;
  }

  async savePeerIdentity(record: PeerIdentityRecord): Promise<void> {
    this.records.put(RecordKind.Identity, record.username, encodePeerIdentity(record));
  }

  async getPeerIdentities(): Promise<PeerIdentityRecord[]> {
    return this.records.list(RecordKind.Identity).map(({ id, payload }) => decodePeerIdentity(id, payload));
  }
}

/** Version byte of an `identity` payload; format 1 stores wrote a bare `PublicKey.serialize()`, which starts with 0x05. */
const PEER_IDENTITY_V2 = 0x02;

/** `0x02 | u8 n | identityKey | u8 n | trustedKey | u8 n (0: none) | verifiedKey` (docs/stores.md). */
function encodePeerIdentity(record: PeerIdentityRecord): Buffer {
  const key = (value: PublicKey | null) => {
    const serialized = value?.serialize() ?? new Uint8Array(0);
    return [Buffer.from([serialized.length]), Buffer.from(serialized)];
  };
  return Buffer.concat([Buffer.from([PEER_IDENTITY_V2]), ...key(record.identityKey), ...key(record.trustedKey), ...key(record.verifiedKey)]);
}

/** @throws {SecureChatError} `StoreTampered` for a payload of neither layout. */
function decodePeerIdentity(username: string, payload: Buffer): PeerIdentityRecord {
  try {
    if (payload[0] !== PEER_IDENTITY_V2) {
      // A store written before trust states: the one key was both seen and trusted.
      const key = PublicKey.deserialize(bytes(payload));
      return { username, identityKey: key, trustedKey: key, verifiedKey: null };
    }
    let offset = 1;
    const next = (): PublicKey | null => {
      const length = payload.readUInt8(offset);
      const start = offset + 1;
      offset = start + length;
      if (offset > payload.length) throw new RangeError('truncated');
      return length === 0 ? null : PublicKey.deserialize(bytes(payload.subarray(start, offset)));
    };
    const identityKey = next();
    const trustedKey = next();
    const verifiedKey = next();
    if (!identityKey || !trustedKey || offset !== payload.length) throw new RangeError('malformed');
    return { username, identityKey, trustedKey, verifiedKey };
  } catch (cause) {
    throw new SecureChatError(SecureChatErrorCode.StoreTampered, 'a peer identity record does not parse', { cause });
  }
}

class SqlitePreKeyStore extends PreKeyStore {
  constructor(private readonly records: RecordTable) {
    super();
  }

  async savePreKey(id: number, record: PreKeyRecord): Promise<void> {
    this.records.put(RecordKind.PreKey, String(id), record.serialize());
  }

  async getPreKey(id: number): Promise<PreKeyRecord> {
    const payload = this.records.get(RecordKind.PreKey, String(id));
    if (!payload) throw notFound(`prekey ${id}`);
    return PreKeyRecord.deserialize(bytes(payload));
  }

  /** One-time prekeys are deleted once a session used them (X3DH). */
  async removePreKey(id: number): Promise<void> {
    this.records.delete(RecordKind.PreKey, String(id));
  }
}

class SqliteSignedPreKeyStore extends SecureChatSignedPreKeyStore {
  constructor(private readonly records: RecordTable) {
    super();
  }

  async saveSignedPreKey(id: number, record: SignedPreKeyRecord): Promise<void> {
    this.records.put(RecordKind.SignedPreKey, String(id), record.serialize());
  }

  async getSignedPreKey(id: number): Promise<SignedPreKeyRecord> {
    const payload = this.records.get(RecordKind.SignedPreKey, String(id));
    if (!payload) throw notFound(`signed prekey ${id}`);
    return SignedPreKeyRecord.deserialize(bytes(payload));
  }

  async getSignedPreKeys(): Promise<SignedPreKeyRecord[]> {
    return this.records.list(RecordKind.SignedPreKey).map(({ payload }) => SignedPreKeyRecord.deserialize(bytes(payload)));
  }

  async removeSignedPreKey(id: number): Promise<void> {
    this.records.delete(RecordKind.SignedPreKey, String(id));
  }
}

const ONE_TIME = 0;
const LAST_RESORT = 1;

class SqliteKyberPreKeyStore extends SecureChatKyberPreKeyStore {
  constructor(private readonly records: RecordTable) {
    super();
  }

  async saveKyberPreKey(id: number, record: KyberPreKeyRecord): Promise<void> {
    this.records.put(RecordKind.KyberPreKey, String(id), Buffer.concat([Buffer.from([ONE_TIME]), record.serialize()]));
  }

  async saveLastResortKyberPreKey(id: number, record: KyberPreKeyRecord): Promise<void> {
    this.records.put(RecordKind.KyberPreKey, String(id), Buffer.concat([Buffer.from([LAST_RESORT]), record.serialize()]));
  }

  async getKyberPreKey(id: number): Promise<KyberPreKeyRecord> {
    const payload = this.records.get(RecordKind.KyberPreKey, String(id));
    if (!payload) throw notFound(`kyber prekey ${id}`);
    return KyberPreKeyRecord.deserialize(bytes(payload.subarray(1)));
  }

  async getLastResortKyberPreKeys(): Promise<KyberPreKeyRecord[]> {
    return this.records
      .list(RecordKind.KyberPreKey)
      .filter(({ payload }) => payload[0] === LAST_RESORT)
      .map(({ payload }) => KyberPreKeyRecord.deserialize(bytes(payload.subarray(1))));
  }

  async removeKyberPreKey(id: number): Promise<void> {
    this.records.delete(RecordKind.KyberPreKey, String(id));
    for (const use of this.records.list(RecordKind.KyberLastResortUse)) {
      if (use.id.startsWith(`${id}:`)) this.records.delete(RecordKind.KyberLastResortUse, use.id);
    }
  }

  /**
   * PQXDH: a one-time Kyber key is deleted after use; a last-resort key is
   * kept, but the same (key, signed prekey, base key) may not be used twice.
   */
  async markKyberPreKeyUsed(id: number, signedPreKeyId: number, baseKey: PublicKey): Promise<void> {
    const payload = this.records.get(RecordKind.KyberPreKey, String(id));
    if (!payload) return;
    if (payload[0] !== LAST_RESORT) {
      this.records.delete(RecordKind.KyberPreKey, String(id));
      return;
    }
    const use = `${id}:${signedPreKeyId}:${Buffer.from(baseKey.serialize()).toString('base64')}`;
    if (this.records.get(RecordKind.KyberLastResortUse, use)) {
      throw new SecureChatError(SecureChatErrorCode.PreKeyReused, `kyber last-resort prekey ${id} reused with the same base key`);
    }
    this.records.put(RecordKind.KyberLastResortUse, use, new Uint8Array(0));
  }
}

class SqliteSenderKeyStore extends SenderKeyStore {
  constructor(private readonly records: RecordTable) {
    super();
  }

  async saveSenderKey(sender: ProtocolAddress, distributionId: Uuid, record: SenderKeyRecord): Promise<void> {
    this.records.put(RecordKind.SenderKey, `${addressId(sender)}::${distributionId}`, record.serialize());
  }

  async getSenderKey(sender: ProtocolAddress, distributionId: Uuid): Promise<SenderKeyRecord | null> {
    const payload = this.records.get(RecordKind.SenderKey, `${addressId(sender)}::${distributionId}`);
    return payload ? SenderKeyRecord.deserialize(bytes(payload)) : null;
  }
}

const ACCOUNT_ID = 'account';
const REFRESH_TOKEN_ID = 'refresh-token';
const SIGNED_KEYS_ID = 'signed-keys';
const nextKeyIdOf = (kind: KeyIdKind) => `next-key-id:${kind}`;
const peerDevicesOf = (username: string) => `peer-devices:${username}`;
// Sealed sender: metadata records under these ids.
const OWN_PROFILE_KEY_ID = 'own-profile-key';
const peerProfileKeyOf = (username: string) => `peer-profile-key:${username}`;
const profileKeySharedWith = (username: string) => `profile-key-shared:${username}`;
const accountIdOf = (username: string) => `account-id:${username}`;
const usernameOfAccount = (accountId: string) => `account-username:${accountId}`;
const GROUP_PREFIX = 'group:';
const groupOf = (groupId: string) => `${GROUP_PREFIX}${groupId}`;
const sendSequenceOf = (recipient: string) => `send-sequence:${recipient}`;
const SEQUENCE_TRACK_PREFIX = 'sequence-track:';
const sequenceTrackOf = (sender: string, senderDevice: DeviceId, recipient: string) => `${SEQUENCE_TRACK_PREFIX}${sender}:${senderDevice}:${recipient}`;

/** A track is kept as JSON with its missing ranges as `[from, to]` pairs. */
function parseSequenceTrack(payload: Buffer): SequenceTrack {
  const stored = parseJson<Omit<SequenceTrack, 'missing' | 'senderDevice'> & { senderDevice: number; missing: Array<[number, number]> }>(payload);
  return { ...stored, senderDevice: asDeviceId(stored.senderDevice), missing: stored.missing.map(([from, to]) => ({ from, to })) };
}

/** A group record as JSON: the state with its id in base64url, this device's epoch and who has its key. */
interface StoredGroupRecord {
  id: string;
  title: string;
  revision: number;
  members: GroupMember[];
  admins: string[];
  distributionId: string;
  sharedWith: string[];
  /** Absent before this device's first group message (and in records written before gap detection). */
  sendSequence?: GroupSendSequence;
}

const encodeGroupRecord = ({ state, distributionId, sharedWith, sendSequence }: GroupRecord): Buffer =>
  json({
    id: groupIdToString(state.id),
    title: state.title,
    revision: state.revision,
    members: state.members.map(({ username, accountId }) => ({ username, accountId })),
    admins: [...state.admins],
    distributionId,
    sharedWith: [...sharedWith],
    ...(sendSequence ? { sendSequence: copyGroupSendSequence(sendSequence) } : {}),
  } satisfies StoredGroupRecord);

const copyGroupSendSequence = ({ distributionId, stream, number, recent }: GroupSendSequence): GroupSendSequence => ({
  distributionId,
  stream,
  number,
  recent: recent.map((send) => ({ id: send.id, stream: send.stream, number: send.number })),
});

function decodeGroupRecord(payload: Buffer): GroupRecord {
  const stored = parseJson<StoredGroupRecord>(payload);
  return {
    state: { id: groupIdFromString(stored.id), title: stored.title, revision: stored.revision, members: stored.members, admins: stored.admins },
    distributionId: stored.distributionId,
    sharedWith: stored.sharedWith,
    ...(stored.sendSequence ? { sendSequence: copyGroupSendSequence(stored.sendSequence) } : {}),
  };
}

interface StoredPendingMessage {
  sender: string;
  senderDevice: number;
  content: string;
}

/** One entry of a recipient's sent-message index; the content is in its own record. */
interface SentIndexEntry {
  recipientDevice: number;
  timestamp: number;
  serverTimestamp: number;
}

interface StoredSentMessage {
  recipient: string;
  recipientDevice: number;
  timestamp: number;
  serverTimestamp: number;
  content: string;
}

interface StoredOutgoingMessage {
  recipient: string;
  content: string;
  timestamp: number;
  queuedAt: number;
}

const sentMessageId = (recipient: string, recipientDevice: number, timestamp: number) =>
  `${recipient}.${sentMessageKey(recipientDevice, timestamp)}`;

class SqliteMetadataStore extends SecureChatMetadataStore {
  constructor(private readonly records: RecordTable) {
    super();
  }

  async getAccount(): Promise<AccountRecord | null> {
    const payload = this.records.get(RecordKind.Metadata, ACCOUNT_ID);
    if (!payload) return null;
    const { username, deviceId } = parseJson<{ username: string; deviceId: number }>(payload);
    return { username, deviceId: asDeviceId(deviceId) };
  }

  async saveAccount(account: AccountRecord): Promise<void> {
    this.records.put(RecordKind.Metadata, ACCOUNT_ID, json({ username: account.username, deviceId: account.deviceId }));
  }

  /** Ids run from 1 and wrap within the wire's 24-bit range, as in the memory store. */
  async allocateKeyIds(kind: KeyIdKind, count: number): Promise<number> {
    if (!Number.isInteger(count) || count < 1 || count > KEY_ID_MAX) {
      throw new SecureChatError(SecureChatErrorCode.InvalidArgument, `count must be 1..${KEY_ID_MAX}`);
    }
    const stored = this.records.get(RecordKind.Metadata, nextKeyIdOf(kind));
    let first = stored ? parseJson<number>(stored) : 1;
    if (first + count - 1 > KEY_ID_MAX) first = 1;
    this.records.put(RecordKind.Metadata, nextKeyIdOf(kind), json(first + count));
    return first;
  }

  async getPeerDevices(username: string): Promise<DeviceId[]> {
    const payload = this.records.get(RecordKind.Metadata, peerDevicesOf(username));
    return payload ? parseJson<number[]>(payload).map(asDeviceId) : [];
  }

  async savePeerDevices(username: string, deviceIds: DeviceId[]): Promise<void> {
    this.records.put(RecordKind.Metadata, peerDevicesOf(username), json(deviceIds));
  }

  async getRefreshToken(): Promise<string | null> {
    return this.records.get(RecordKind.Metadata, REFRESH_TOKEN_ID)?.toString('utf8') ?? null;
  }

  async saveRefreshToken(refreshToken: string | null): Promise<void> {
    if (refreshToken === null) this.records.delete(RecordKind.Metadata, REFRESH_TOKEN_ID);
    else this.records.put(RecordKind.Metadata, REFRESH_TOKEN_ID, Buffer.from(refreshToken, 'utf8'));
  }

  async getSignedKeysState(): Promise<SignedKeysState | null> {
    const payload = this.records.get(RecordKind.Metadata, SIGNED_KEYS_ID);
    return payload ? parseJson<SignedKeysState>(payload) : null;
  }

  async saveSignedKeysState(state: SignedKeysState): Promise<void> {
    this.records.put(RecordKind.Metadata, SIGNED_KEYS_ID, json({ active: state.active, pending: state.pending }));
  }

  async savePendingMessage(envelopeId: string, message: PendingMessage): Promise<void> {
    const stored: StoredPendingMessage = {
      sender: message.sender,
      senderDevice: message.senderDevice,
      content: Buffer.from(message.content).toString('base64'),
    };
    this.records.put(RecordKind.PendingMessage, envelopeId, json(stored));
    this.records.trimOldest(RecordKind.PendingMessage, MAX_PENDING_MESSAGES);
  }

  async getPendingMessage(envelopeId: string): Promise<PendingMessage | null> {
    const payload = this.records.get(RecordKind.PendingMessage, envelopeId);
    if (!payload) return null;
    const stored = parseJson<StoredPendingMessage>(payload);
    return { sender: stored.sender, senderDevice: asDeviceId(stored.senderDevice), content: bytes(Buffer.from(stored.content, 'base64')) };
  }

  async removePendingMessage(envelopeId: string): Promise<void> {
    this.records.delete(RecordKind.PendingMessage, envelopeId);
  }

  // A recipient's sent messages are one small index record (device and
  // timestamps) plus one record per message, so that a send rewrites the index
  // and one message, never every kept body.

  async saveSentMessage(message: SentMessageRecord): Promise<void> {
    const index = this.sentIndex(message.recipient).filter(
      (entry) => entry.recipientDevice !== message.recipientDevice || entry.timestamp !== message.timestamp,
    );
    index.push({ recipientDevice: message.recipientDevice, timestamp: message.timestamp, serverTimestamp: message.serverTimestamp });
    index.sort((a, b) => a.timestamp - b.timestamp);
    const dropped = index.splice(0, Math.max(0, index.length - MAX_SENT_MESSAGES_PER_PEER));
    const stored: StoredSentMessage = {
      recipient: message.recipient,
      recipientDevice: message.recipientDevice,
      timestamp: message.timestamp,
      serverTimestamp: message.serverTimestamp,
      content: Buffer.from(message.content).toString('base64'),
    };
    this.records.put(RecordKind.SentMessage, sentMessageId(message.recipient, message.recipientDevice, message.timestamp), json(stored));
    this.writeSentIndex(message.recipient, index, dropped);
  }

  async getSentMessages(recipient: string, recipientDevice: DeviceId, sinceServerTimestamp: number): Promise<SentMessageRecord[]> {
    const messages: SentMessageRecord[] = [];
    for (const entry of this.sentIndex(recipient)) {
      if (entry.recipientDevice !== recipientDevice || entry.serverTimestamp < sinceServerTimestamp) continue;
      const payload = this.records.get(RecordKind.SentMessage, sentMessageId(recipient, entry.recipientDevice, entry.timestamp));
      if (!payload) throw new SecureChatError(SecureChatErrorCode.StoreTampered, 'a sent message named by its index is missing');
      const stored = parseJson<StoredSentMessage>(payload);
      messages.push({
        recipient: stored.recipient,
        recipientDevice: asDeviceId(stored.recipientDevice),
        timestamp: stored.timestamp,
        serverTimestamp: stored.serverTimestamp,
        content: bytes(Buffer.from(stored.content, 'base64')),
      });
    }
    return messages;
  }

  async saveReceivedMessage(message: ReceivedMessageRecord): Promise<void> {
    this.records.put(RecordKind.ReceivedMessage, receivedMessageKey(message), json({ receivedAt: message.receivedAt }));
    this.records.trimOldest(RecordKind.ReceivedMessage, MAX_RECEIVED_MESSAGES);
  }

  async hasReceivedMessage(message: Omit<ReceivedMessageRecord, 'receivedAt'>): Promise<boolean> {
    return this.records.get(RecordKind.ReceivedMessage, receivedMessageKey(message)) !== null;
  }

  async pruneMessageLogs(before: number): Promise<void> {
    for (const { id: recipient, payload } of this.records.list(RecordKind.SentMessageIndex)) {
      const index = parseJson<SentIndexEntry[]>(payload);
      const expired = index.filter((entry) => entry.timestamp < before);
      if (expired.length > 0) this.writeSentIndex(recipient, index.filter((entry) => entry.timestamp >= before), expired);
    }
    for (const { id, payload } of this.records.list(RecordKind.ReceivedMessage)) {
      if (parseJson<{ receivedAt: number }>(payload).receivedAt < before) this.records.delete(RecordKind.ReceivedMessage, id);
    }
    for (const { id, payload } of this.records.list(RecordKind.ProcessedEnvelope)) {
      if (parseJson<{ processedAt: number }>(payload).processedAt < before) this.records.delete(RecordKind.ProcessedEnvelope, id);
    }
  }

  // Processed envelope ids: a record kind of its own in the `records` table,
  // so a store written before it existed needs no migration (it has none yet).

  async hasProcessedEnvelope(envelopeId: string): Promise<boolean> {
    return this.records.get(RecordKind.ProcessedEnvelope, envelopeId) !== null;
  }

  async saveProcessedEnvelope(envelopeId: string, processedAt: number): Promise<void> {
    if (this.records.get(RecordKind.ProcessedEnvelope, envelopeId) !== null) return;
    this.records.put(RecordKind.ProcessedEnvelope, envelopeId, json({ processedAt }));
    this.records.trimOldest(RecordKind.ProcessedEnvelope, MAX_PROCESSED_ENVELOPES);
  }

  // The outbox: one record per send under its id; the table's `seq` is the
  // queue order, and an upsert of a queued id keeps its row and so its place.

  async saveOutgoing(message: OutgoingMessageRecord): Promise<void> {
    const stored: StoredOutgoingMessage = {
      recipient: message.recipient,
      content: Buffer.from(message.content).toString('base64'),
      timestamp: message.timestamp,
      queuedAt: message.queuedAt,
    };
    this.records.put(RecordKind.OutgoingMessage, message.id, json(stored));
  }

  async getOutgoing(): Promise<OutgoingMessageRecord[]> {
    return this.records.list(RecordKind.OutgoingMessage).map(({ id, payload }) => {
      const stored = parseJson<StoredOutgoingMessage>(payload);
      return {
        id,
        recipient: stored.recipient,
        content: bytes(Buffer.from(stored.content, 'base64')),
        timestamp: stored.timestamp,
        queuedAt: stored.queuedAt,
      };
    });
  }

  async removeOutgoing(id: string): Promise<void> {
    this.records.delete(RecordKind.OutgoingMessage, id);
  }

  // Sealed sender: profile keys (raw bytes) and the account id map (UTF-8), as metadata records.

  async getOwnProfileKey(): Promise<Uint8Array | null> {
    const payload = this.records.get(RecordKind.Metadata, OWN_PROFILE_KEY_ID);
    return payload ? bytes(payload) : null;
  }

  async saveOwnProfileKey(profileKey: Uint8Array): Promise<void> {
    this.records.put(RecordKind.Metadata, OWN_PROFILE_KEY_ID, Buffer.from(profileKey));
  }

  async getPeerProfileKey(username: string): Promise<Uint8Array | null> {
    const payload = this.records.get(RecordKind.Metadata, peerProfileKeyOf(username));
    return payload ? bytes(payload) : null;
  }

  async savePeerProfileKey(username: string, profileKey: Uint8Array | null): Promise<void> {
    if (profileKey === null) this.records.delete(RecordKind.Metadata, peerProfileKeyOf(username));
    else this.records.put(RecordKind.Metadata, peerProfileKeyOf(username), Buffer.from(profileKey));
  }

  async hasSharedProfileKey(username: string): Promise<boolean> {
    return this.records.get(RecordKind.Metadata, profileKeySharedWith(username)) !== null;
  }

  async saveSharedProfileKey(username: string, shared: boolean): Promise<void> {
    if (shared) this.records.put(RecordKind.Metadata, profileKeySharedWith(username), new Uint8Array(0));
    else this.records.delete(RecordKind.Metadata, profileKeySharedWith(username));
  }

  async getAccountId(username: string): Promise<string | null> {
    return this.records.get(RecordKind.Metadata, accountIdOf(username))?.toString('utf8') ?? null;
  }

  async getUsernameOfAccount(accountId: string): Promise<string | null> {
    return this.records.get(RecordKind.Metadata, usernameOfAccount(accountId))?.toString('utf8') ?? null;
  }

  async saveAccountId(username: string, accountId: string): Promise<void> {
    const previous = await this.getAccountId(username);
    if (previous !== null && previous !== accountId) this.records.delete(RecordKind.Metadata, usernameOfAccount(previous));
    this.records.put(RecordKind.Metadata, accountIdOf(username), Buffer.from(accountId, 'utf8'));
    this.records.put(RecordKind.Metadata, usernameOfAccount(accountId), Buffer.from(username, 'utf8'));
  }

  async getGroup(groupId: string): Promise<GroupRecord | null> {
    const payload = this.records.get(RecordKind.Metadata, groupOf(groupId));
    return payload ? decodeGroupRecord(payload) : null;
  }

  async saveGroup(record: GroupRecord): Promise<void> {
    this.records.put(RecordKind.Metadata, groupOf(groupIdToString(record.state.id)), encodeGroupRecord(record));
  }

  async getGroups(): Promise<GroupRecord[]> {
    return this.records
      .list(RecordKind.Metadata)
      .filter(({ id }) => id.startsWith(GROUP_PREFIX))
      .map(({ payload }) => decodeGroupRecord(payload));
  }

  async getSendSequence(recipient: string): Promise<MessageSequence | null> {
    const payload = this.records.get(RecordKind.Metadata, sendSequenceOf(recipient));
    return payload ? parseJson<MessageSequence>(payload) : null;
  }

  async saveSendSequence(recipient: string, sequence: MessageSequence): Promise<void> {
    this.records.put(RecordKind.Metadata, sendSequenceOf(recipient), json({ stream: sequence.stream, number: sequence.number }));
  }

  async getSequenceTrack(sender: string, senderDevice: DeviceId, recipient: string): Promise<SequenceTrack | null> {
    const payload = this.records.get(RecordKind.Metadata, sequenceTrackOf(sender, senderDevice, recipient));
    return payload ? parseSequenceTrack(payload) : null;
  }

  async saveSequenceTrack(track: SequenceTrack): Promise<void> {
    const { sender, senderDevice, recipient, stream, highest, missing } = track;
    const stored = { sender, senderDevice, recipient, stream, highest, missing: missing.map(({ from, to }) => [from, to]) };
    this.records.put(RecordKind.Metadata, sequenceTrackOf(sender, senderDevice, recipient), json(stored));
  }

  async getSequenceTracks(): Promise<SequenceTrack[]> {
    return this.records
      .list(RecordKind.Metadata)
      .filter(({ id }) => id.startsWith(SEQUENCE_TRACK_PREFIX))
      .map(({ payload }) => parseSequenceTrack(payload));
  }

  async deleteSequenceTracks(recipient: string): Promise<void> {
    for (const { id, payload } of this.records.list(RecordKind.Metadata)) {
      if (id.startsWith(SEQUENCE_TRACK_PREFIX) && parseSequenceTrack(payload).recipient === recipient) this.records.delete(RecordKind.Metadata, id);
    }
  }

  private sentIndex(recipient: string): SentIndexEntry[] {
    const payload = this.records.get(RecordKind.SentMessageIndex, recipient);
    return payload ? parseJson<SentIndexEntry[]>(payload) : [];
  }

  private writeSentIndex(recipient: string, index: SentIndexEntry[], dropped: SentIndexEntry[]): void {
    for (const entry of dropped) this.records.delete(RecordKind.SentMessage, sentMessageId(recipient, entry.recipientDevice, entry.timestamp));
    if (index.length === 0) this.records.delete(RecordKind.SentMessageIndex, recipient);
    else this.records.put(RecordKind.SentMessageIndex, recipient, json(index));
  }
}

import { Injectable, Logger } from '@nestjs/common';
import type { EnvelopeType } from '@chat/protocol';
import type pg from 'pg';
import { Prisma } from '../prisma/generated/client.js';
import { PrismaService } from '../prisma/prisma.service.js';
import { deviceCanReceive } from '../prisma/receiving-device.sql.js';
import { Batcher } from './batcher.js';

/** A device that can receive messages: it has uploaded its keys. */
export interface RecipientDevice {
  deviceRowId: string;
  deviceId: number;
  registrationId: number;
}

/** An account as a send addresses it: its devices with keys and the ids of its unlinked devices. */
export interface AddressedAccount {
  accountId: string;
  username: string;
  /** Ordered by device id. */
  devices: RecipientDevice[];
  /** Device ids with an `unlinked_devices` tombstone. */
  unlinked: Set<number>;
}

/** The sender's device row and, for a send with an `id`, the answer an earlier send of that id got. */
export interface SenderDevice {
  deviceRowId: string;
  previousServerTimestamp: Date | null;
}

export interface SentRequestRecord {
  senderDeviceRowId: string;
  requestId: string;
  serverTimestamp: Date;
}

export type StoreOutcome =
  | { kind: 'stored' }
  /** A send of the same device with the same id committed first: nothing was stored. */
  | { kind: 'duplicate'; serverTimestamp: Date }
  /** A recipient device was deleted (with its account, or unlinked) after it was looked up: nothing was stored. */
  | { kind: 'recipient-gone' };

export interface NewMessage {
  id: string;
  recipientDeviceRowId: string;
  /** The sender's account, device and username; all null for a sealed message, whose sender the relay never knows. */
  senderAccountId: string | null;
  /** Kept with the message so that it stays deliverable, with its source, if the sender's account is deleted. */
  senderUsername: string | null;
  senderDeviceId: number | null;
  type: EnvelopeType;
  ciphertext: Uint8Array<ArrayBuffer>;
  serverTimestamp: Date;
}

export interface StoredMessage {
  id: string;
  /** Queue position; delivery order. */
  seq: bigint;
  /** The sender's username when it sent; null for a sealed message. */
  source: string | null;
  sourceDevice: number | null;
  sourceAccountId: string | null;
  type: EnvelopeType;
  ciphertext: Uint8Array;
  serverTimestamp: Date;
}

interface StoredMessageRow {
  id: string;
  seq: bigint;
  source: string | null;
  source_device: number | null;
  source_account_id: string | null;
  type: EnvelopeType;
  ciphertext: Uint8Array;
  server_timestamp: Date;
}

const toStoredMessage = (row: StoredMessageRow): StoredMessage => ({
  id: row.id,
  seq: row.seq,
  source: row.source,
  sourceDevice: row.source_device,
  sourceAccountId: row.source_account_id,
  type: row.type,
  ciphertext: row.ciphertext,
  serverTimestamp: row.server_timestamp,
});

/** One call of `storeSend`, as a batch of sends receives it. */
interface SendWrite {
  messages: NewMessage[];
  sentRequest: SentRequestRecord | undefined;
}

/** One call of `deleteQueued`: an ack. */
interface AckWrite {
  deviceRowId: string;
  id: string;
}

/** What the write batcher takes: sends to store and acks to delete, written together. */
type Write = { kind: 'send'; send: SendWrite } | { kind: 'ack'; ack: AckWrite };
type WriteResult = StoreOutcome | boolean;

interface QueueRead {
  deviceRowId: string;
  excluding: readonly string[];
  limit: number;
}

interface SendContextLookup {
  accountId: string;
  deviceId: number;
  requestId: string | undefined;
  to: string;
}

/** What a send needs to know before it is checked: its sender's device (and an earlier answer), its recipient account. */
export interface SendContext {
  /** Null when the token's device no longer exists. */
  sender: SenderDevice | null;
  /** Null when there is no account of that username. */
  recipient: AddressedAccount | null;
}

/** Postgres SQLSTATE foreign_key_violation: a row names a device (or account) that was deleted meanwhile. */
const FOREIGN_KEY_VIOLATION = '23503';

/** The most calls one batched statement takes. */
const MAX_BATCH = 256;

/**
 * Acked (deleted) messages after which the embedded database's queue table
 * is vacuumed and analyzed. PGlite runs Postgres in single-user mode, where
 * autovacuum never runs: without this every message ever delivered leaves a
 * dead row and dead index entries, and the table's statistics stay those of
 * an empty table, so the planner keeps choosing sequential scans of a heap
 * that only grows. Measured with the relay-throughput bench (paced at 1,050
 * msg/s after 23,000 messages): p50 177 ms without, 66 ms with.
 */
const EMBEDDED_VACUUM_EVERY_DELETES = 5_000;

/**
 * The only place the messages feature touches the database.
 *
 * The statements every message goes through are batched (`Batcher`): the
 * calls that arrive while a statement of their kind is under way go together
 * into the next one. A send's look-ups (its sender's device and earlier
 * answer, its recipient's devices) are one statement for all of a batch's
 * sends; the sends and acks of a batch are one statement, so one commit
 * (group commit); reads of many devices' queues are one statement. Each
 * caller still gets its own answer, and a send is answered only once its
 * statement has committed. They run as plain SQL on the pool Prisma uses, as
 * named (prepared) statements.
 */
@Injectable()
export class MessagesRepository {
  private readonly sendContexts: Batcher<SendContextLookup, SendContext>;
  private readonly recipientLookups: Batcher<string, AddressedAccount | null>;
  private readonly writes: Batcher<Write, WriteResult>;
  private readonly queueReads: Batcher<QueueRead, StoredMessage[]>;

  private readonly logger = new Logger(MessagesRepository.name);
  private deletedSinceVacuum = 0;
  private vacuuming = false;

  constructor(private readonly prisma: PrismaService) {
    // One batch of each kind at a time per database connection it may take, leaving connections for the rest.
    const concurrency = Math.max(1, Math.floor(prisma.database.poolMax / 4));
    const options = { maxBatchSize: MAX_BATCH, concurrency };
    this.sendContexts = new Batcher((lookups) => this.findSendContexts(lookups), options);
    this.recipientLookups = new Batcher((usernames) => this.findAccountsByUsernames(usernames), options);
    this.writes = new Batcher((writes) => this.write(writes), options);
    this.queueReads = new Batcher((reads) => this.findQueuedOfDevices(reads), options);
  }

  /** The account of that username as a send addresses it; null when there is no such account. */
  findAccountByUsername(username: string): Promise<AddressedAccount | null> {
    return this.recipientLookups.submit(username);
  }

  private async findAccountsByUsernames(usernames: readonly string[]): Promise<Array<AddressedAccount | null>> {
    const { rows } = await this.prisma.pool.query<AccountRow>({
      name: 'messages-accounts-by-username',
      text: `
        SELECT a.id AS account_id, a.username, d.id AS device_row_id, d.device_id, d.registration_id, false AS unlinked
          FROM accounts a LEFT JOIN devices d ON d.account_id = a.id AND ${DEVICE_CAN_RECEIVE}
         WHERE a.username = ANY($1::varchar[])
        UNION ALL
        SELECT a.id, a.username, NULL, u.device_id, u.registration_id, true
          FROM accounts a JOIN unlinked_devices u ON u.account_id = a.id
         WHERE a.username = ANY($1::varchar[])`,
      values: [[...new Set(usernames)]],
    });
    const byUsername = new Map(accountsOf(rows).map((account) => [account.username, account]));
    return usernames.map((username) => byUsername.get(username) ?? null);
  }

  async findAccountById(accountId: string): Promise<AddressedAccount | null> {
    return (await this.findAccounts(Prisma.sql`a.id = ${accountId}::uuid`))[0] ?? null;
  }

  /** The accounts of those ids that exist, as sends address them (a multi-recipient send). */
  findAccountsByIds(accountIds: readonly string[]): Promise<AddressedAccount[]> {
    return this.findAccounts(Prisma.sql`a.id = ANY(${[...accountIds]}::uuid[])`);
  }

  /** Keyed devices and tombstones in one round trip. */
  private async findAccounts(accountIs: Prisma.Sql): Promise<AddressedAccount[]> {
    const rows = await this.prisma.$queryRaw<AccountRow[]>`
      SELECT a.id AS account_id, a.username, d.id AS device_row_id, d.device_id, d.registration_id, false AS unlinked
        FROM accounts a LEFT JOIN devices d ON d.account_id = a.id AND ${deviceCanReceive}
       WHERE ${accountIs}
      UNION ALL
      SELECT a.id, a.username, NULL, u.device_id, u.registration_id, true
        FROM accounts a JOIN unlinked_devices u ON u.account_id = a.id
       WHERE ${accountIs}`;
    return accountsOf(rows);
  }

  /**
   * The sender's device row with the answer stored for `requestId`, and the
   * recipient account of `to`, in one statement batched with other sends'.
   */
  findSendContext(accountId: string, deviceId: number, requestId: string | undefined, to: string): Promise<SendContext> {
    return this.sendContexts.submit({ accountId, deviceId, requestId, to });
  }

  private async findSendContexts(lookups: readonly SendContextLookup[]): Promise<SendContext[]> {
    const { rows } = await this.prisma.pool.query<AccountRow & { ord: string | null; kind: 'sender' | 'recipient'; server_timestamp: Date | null }>({
      name: 'messages-send-contexts',
      text: `
        WITH r AS (
          SELECT * FROM unnest($1::uuid[], $2::int[], $3::uuid[], $4::varchar[]) WITH ORDINALITY AS r(account_id, device_id, request_id, username, ord)
        )
        SELECT r.ord, 'sender' AS kind, NULL::uuid AS account_id, NULL::varchar AS username, d.id AS device_row_id,
               NULL::int AS device_id, NULL::int AS registration_id, false AS unlinked, s.server_timestamp
          FROM r JOIN devices d ON d.account_id = r.account_id AND d.device_id = r.device_id
          LEFT JOIN sent_requests s ON s.sender_device_row_id = d.id AND s.request_id = r.request_id
        UNION ALL
        SELECT NULL, 'recipient', a.id, a.username, d.id, d.device_id, d.registration_id, false, NULL
          FROM accounts a LEFT JOIN devices d ON d.account_id = a.id AND ${DEVICE_CAN_RECEIVE}
         WHERE a.username IN (SELECT username FROM r)
        UNION ALL
        SELECT NULL, 'recipient', a.id, a.username, NULL, u.device_id, u.registration_id, true, NULL
          FROM accounts a JOIN unlinked_devices u ON u.account_id = a.id
         WHERE a.username IN (SELECT username FROM r)`,
      values: [
        lookups.map((lookup) => lookup.accountId),
        lookups.map((lookup) => lookup.deviceId),
        lookups.map((lookup) => lookup.requestId ?? null),
        lookups.map((lookup) => lookup.to),
      ],
    });
    const senders = new Map<number, SenderDevice>();
    for (const row of rows) {
      if (row.kind === 'sender') senders.set(Number(row.ord), { deviceRowId: row.device_row_id as string, previousServerTimestamp: row.server_timestamp });
    }
    const accounts = new Map(accountsOf(rows.filter((row) => row.kind === 'recipient')).map((account) => [account.username, account]));
    return lookups.map((lookup, index) => ({ sender: senders.get(index + 1) ?? null, recipient: accounts.get(lookup.to) ?? null }));
  }

  /**
   * The messages of one send and, for a send with an id, its `sent_requests`
   * row, in one statement: all or nothing. The statement is shared with the
   * sends that arrive meanwhile (group commit); it resolves once it has
   * committed.
   */
  async storeSend(messages: NewMessage[], sentRequest: SentRequestRecord | undefined): Promise<StoreOutcome> {
    return (await this.writes.submit({ kind: 'send', send: { messages, sentRequest } })) as StoreOutcome;
  }

  /**
   * Writes a batch of sends and acks in one statement (one commit), each send
   * all or nothing. A foreign key violation (a recipient or sender device
   * deleted since it was looked up) fails the whole statement, so the acks are
   * then deleted on their own and the sends stored one statement each, and
   * only the send that names the deleted device is `recipient-gone`.
   */
  private async write(writes: readonly Write[]): Promise<WriteResult[]> {
    const sends = writes.flatMap((write) => (write.kind === 'send' ? [write.send] : []));
    const acks = writes.flatMap((write) => (write.kind === 'ack' ? [write.ack] : []));
    const answer = (outcomes: readonly StoreOutcome[], deleted: readonly boolean[]): WriteResult[] => {
      let send = 0;
      let ack = 0;
      return writes.map((write) => (write.kind === 'send' ? outcomes[send++] : deleted[ack++]));
    };
    try {
      const { outcomes, deleted } = await this.withClient((client) => writeIn(client, sends, acks));
      this.countDeleted(deleted);
      return answer(outcomes, deleted);
    } catch (error) {
      if (!isForeignKeyViolation(error) || sends.length === 0) throw error;
      const { deleted } = await this.withClient((client) => writeIn(client, [], acks));
      this.countDeleted(deleted);
      const outcomes: StoreOutcome[] = [];
      for (const send of sends) {
        try {
          outcomes.push(...(await this.withClient((client) => writeIn(client, [send], []))).outcomes);
        } catch (single) {
          if (!isForeignKeyViolation(single)) throw single;
          outcomes.push({ kind: 'recipient-gone' });
        }
      }
      return answer(outcomes, deleted);
    }
  }

  /** On the embedded database, vacuums the queue table every `EMBEDDED_VACUUM_EVERY_DELETES` acked messages, in the background. */
  private countDeleted(deleted: readonly boolean[]): void {
    if (this.prisma.database.mode !== 'embedded') return;
    for (const wasDeleted of deleted) if (wasDeleted) this.deletedSinceVacuum++;
    if (this.deletedSinceVacuum < EMBEDDED_VACUUM_EVERY_DELETES || this.vacuuming) return;
    this.deletedSinceVacuum = 0;
    this.vacuuming = true;
    this.prisma.pool
      .query('VACUUM (ANALYZE) messages')
      .catch((error: unknown) => this.logger.warn(`Vacuuming the message queue failed: ${(error as Error).message}`))
      .finally(() => {
        this.vacuuming = false;
      });
  }

  private async withClient<T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    const client = await this.prisma.pool.connect();
    try {
      return await work(client);
    } finally {
      client.release();
    }
  }

  /** The answer kept for an accepted sealed (or multi-recipient) send of that id; null when there is none. */
  async findSealedSendAnswer(requestId: string): Promise<Date | null> {
    const [row] = await this.prisma.$queryRaw<{ server_timestamp: Date }[]>`
      SELECT server_timestamp FROM sealed_send_requests WHERE request_id = ${requestId}::uuid`;
    return row?.server_timestamp ?? null;
  }

  /**
   * The messages of a sealed (or multi-recipient) send and, for a send with
   * an id, its `sealed_send_requests` row, in one transaction, as `storeSend`
   * does for authenticated sends. Nothing of the sender is written: the
   * messages carry no sender, and the request row only its id and time.
   */
  async storeSealedSend(messages: NewMessage[], requestId: string | undefined, serverTimestamp: Date): Promise<StoreOutcome> {
    try {
      return await this.prisma.$transaction(async (tx): Promise<StoreOutcome> => {
        if (requestId !== undefined) {
          const inserted = await tx.$executeRaw`
            INSERT INTO sealed_send_requests (request_id, server_timestamp)
            VALUES (${requestId}::uuid, ${serverTimestamp})
            ON CONFLICT DO NOTHING`;
          if (inserted === 0) {
            const [earlier] = await tx.$queryRaw<{ server_timestamp: Date }[]>`
              SELECT server_timestamp FROM sealed_send_requests WHERE request_id = ${requestId}::uuid`;
            // Only the retention sweep deleting it between the two statements leaves no row; the send is then new.
            if (earlier) return { kind: 'duplicate', serverTimestamp: earlier.server_timestamp };
          }
        }
        await tx.message.createMany({ data: messages });
        return { kind: 'stored' };
      });
    } catch (error) {
      if (error instanceof Prisma.PrismaClientKnownRequestError && error.code === 'P2003') return { kind: 'recipient-gone' };
      throw error;
    }
  }

  async findDeviceRowId(accountId: string, deviceId: number): Promise<string | null> {
    const device = await this.prisma.device.findUnique({
      where: { accountId_deviceId: { accountId, deviceId } },
      select: { id: true },
    });
    return device?.id ?? null;
  }

  /**
   * The device's oldest `limit` queued messages other than `excluding` (those
   * in flight on its connection). Not a cursor past the last seq read: a
   * message whose insert committed after a later one's is still found. Reads
   * of many devices' connections run as one statement.
   */
  findQueued(deviceRowId: string, excluding: readonly string[], limit: number): Promise<StoredMessage[]> {
    return this.queueReads.submit({ deviceRowId, excluding, limit });
  }

  private async findQueuedOfDevices(reads: readonly QueueRead[]): Promise<StoredMessage[][]> {
    const { rows } = await this.prisma.pool.query<StoredMessageRow & { ord: string; seq: string }>({
      name: 'messages-queued-of-devices',
      text: `
        SELECT r.ord, m.id, m.seq, m.sender_username AS source, m.sender_device_id AS source_device,
               m.sender_account_id::text AS source_account_id, m.type, m.ciphertext, m.server_timestamp
          FROM unnest($1::uuid[], $2::text[], $3::int[]) WITH ORDINALITY AS r(device_row_id, excluding, row_limit, ord)
          CROSS JOIN LATERAL (
            SELECT * FROM messages q
             WHERE q.recipient_device_row_id = r.device_row_id
               AND q.id <> ALL(string_to_array(r.excluding, ',')::uuid[])
             ORDER BY q.seq
             LIMIT r.row_limit) m
         ORDER BY r.ord, m.seq`,
      // The ids each connection has in flight, as one text per device: a rectangular uuid[][] would not fit ragged lists.
      values: [reads.map((read) => read.deviceRowId), reads.map((read) => read.excluding.join(',')), reads.map((read) => read.limit)],
    });
    const pages = reads.map((): StoredMessage[] => []);
    for (const row of rows) pages[Number(row.ord) - 1].push(toStoredMessage({ ...row, seq: BigInt(row.seq) }));
    return pages;
  }

  /**
   * Deletes the message only if it is queued for this device; false when
   * there is none. Written with the sends and acks that arrive meanwhile, in
   * one statement.
   */
  async deleteQueued(deviceRowId: string, id: string): Promise<boolean> {
    return (await this.writes.submit({ kind: 'ack', ack: { deviceRowId, id } })) as boolean;
  }
}

interface AccountRow {
  account_id: string;
  username: string;
  device_row_id: string | null;
  device_id: number | null;
  registration_id: number | null;
  unlinked: boolean;
}

/** `deviceCanReceive` as text, for the statements run on the pool. */
const DEVICE_CAN_RECEIVE = deviceCanReceive.sql;

/** Accounts (in order of first appearance) from rows of keyed devices and tombstones. */
function accountsOf(rows: readonly AccountRow[]): AddressedAccount[] {
  const accounts = new Map<string, AddressedAccount>();
  for (const row of rows) {
    let account = accounts.get(row.account_id);
    if (!account) {
      account = { accountId: row.account_id, username: row.username, devices: [], unlinked: new Set() };
      accounts.set(row.account_id, account);
    }
    if (row.unlinked) account.unlinked.add(row.device_id as number);
    else if (row.device_row_id !== null) {
      account.devices.push({ deviceRowId: row.device_row_id, deviceId: row.device_id as number, registrationId: row.registration_id as number });
    }
  }
  for (const account of accounts.values()) account.devices.sort((a, b) => a.deviceId - b.deviceId);
  return [...accounts.values()];
}

const isForeignKeyViolation = (error: unknown): boolean => (error as { code?: unknown } | null)?.code === FOREIGN_KEY_VIOLATION;

/**
 * A batch of sends and acks as one statement, so one commit: each send's id
 * row and its messages are written together or not at all, and each ack's
 * message (if it is queued for that device) is deleted. A send whose id was
 * accepted before (committed, or earlier in this batch) stores nothing and is
 * answered with the first one's timestamp; the messages of the others are
 * inserted in batch order (so in seq order). An ack never names a message of
 * the same statement: a message is delivered only once committed.
 */
async function writeIn(
  client: pg.ClientBase,
  writes: readonly SendWrite[],
  acks: readonly AckWrite[],
): Promise<{ outcomes: StoreOutcome[]; deleted: boolean[] }> {
  const outcomes: Array<StoreOutcome | undefined> = writes.map(() => undefined);
  const key = (request: SentRequestRecord) => `${request.senderDeviceRowId}/${request.requestId}`;
  // The first send of each id in this batch claims it; a later one is its retry, answered as the first is (below).
  const claimedBy = new Map<string, number>();
  const retries: Array<[retry: number, first: number]> = [];
  writes.forEach(({ sentRequest }, index) => {
    if (!sentRequest) return;
    const first = claimedBy.get(key(sentRequest));
    if (first === undefined) claimedBy.set(key(sentRequest), index);
    else retries.push([index, first]);
  });
  const isRetry = new Set(retries.map(([retry]) => retry));
  const claims = [...claimedBy.values()].map((index) => writes[index].sentRequest as SentRequestRecord);
  const rows = writes.flatMap((write, index) => (isRetry.has(index) ? [] : write.messages.map((message) => ({ message, claim: write.sentRequest }))));
  const { rows: written } = await client.query<{ kind: 'claim' | 'acked'; device_row_id: string; id: string }>({
    name: 'messages-write',
    // A message row is written only if its send has no id, or its id's row was written by this statement.
    text: `
      WITH acked AS (
        DELETE FROM messages m
         USING unnest($14::uuid[], $15::uuid[]) AS d(id, device_row_id)
         WHERE m.id = d.id AND m.recipient_device_row_id = d.device_row_id
        RETURNING m.id, m.recipient_device_row_id
      ), claims AS (
        INSERT INTO sent_requests (sender_device_row_id, request_id, server_timestamp)
        SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[])
        ON CONFLICT DO NOTHING
        RETURNING sender_device_row_id, request_id
      ), stored AS (
        INSERT INTO messages (id, recipient_device_row_id, sender_account_id, sender_username, sender_device_id, type, ciphertext, server_timestamp)
        SELECT m.id, m.recipient_device_row_id, m.sender_account_id, m.sender_username, m.sender_device_id, m.type, m.ciphertext, m.server_timestamp
          FROM unnest($4::uuid[], $5::uuid[], $6::uuid[], $7::varchar[], $8::int[], $9::varchar[], $10::bytea[], $11::timestamptz[], $12::uuid[], $13::uuid[])
               WITH ORDINALITY AS m(id, recipient_device_row_id, sender_account_id, sender_username, sender_device_id, type, ciphertext,
                                    server_timestamp, claim_device_row_id, claim_request_id, ord)
         WHERE m.claim_request_id IS NULL
            OR EXISTS (SELECT 1 FROM claims c WHERE c.sender_device_row_id = m.claim_device_row_id AND c.request_id = m.claim_request_id)
         ORDER BY m.ord
        RETURNING 1
      )
      SELECT 'claim' AS kind, sender_device_row_id AS device_row_id, request_id AS id FROM claims
      UNION ALL
      SELECT 'acked', recipient_device_row_id, id FROM acked`,
    values: [
      claims.map((claim) => claim.senderDeviceRowId),
      claims.map((claim) => claim.requestId),
      claims.map((claim) => claim.serverTimestamp),
      rows.map(({ message }) => message.id),
      rows.map(({ message }) => message.recipientDeviceRowId),
      rows.map(({ message }) => message.senderAccountId),
      rows.map(({ message }) => message.senderUsername),
      rows.map(({ message }) => message.senderDeviceId),
      rows.map(({ message }) => message.type),
      rows.map(({ message }) => Buffer.from(message.ciphertext.buffer, message.ciphertext.byteOffset, message.ciphertext.byteLength)),
      rows.map(({ message }) => message.serverTimestamp),
      rows.map(({ claim }) => claim?.senderDeviceRowId ?? null),
      rows.map(({ claim }) => claim?.requestId ?? null),
      acks.map((ack) => ack.id),
      acks.map((ack) => ack.deviceRowId),
    ],
  });
  const claimed = new Set(written.filter((row) => row.kind === 'claim').map((row) => `${row.device_row_id}/${row.id}`));
  const deletedKeys = new Set(written.filter((row) => row.kind === 'acked').map((row) => `${row.device_row_id}/${row.id}`));
  const deleted = acks.map((ack) => deletedKeys.has(`${ack.deviceRowId}/${ack.id}`));
  const taken = claims.filter((claim) => !claimed.has(key(claim)));
  if (taken.length > 0) {
    // Ids accepted before (the row is committed): their sends stored nothing and are answered as the first was.
    const { rows: earlier } = await client.query<{ sender_device_row_id: string; request_id: string; server_timestamp: Date }>({
      name: 'messages-earlier-send-ids',
      text: `
        SELECT s.sender_device_row_id, s.request_id, s.server_timestamp
          FROM sent_requests s JOIN unnest($1::uuid[], $2::uuid[]) AS t(sender_device_row_id, request_id)
            ON s.sender_device_row_id = t.sender_device_row_id AND s.request_id = t.request_id`,
      values: [taken.map((claim) => claim.senderDeviceRowId), taken.map((claim) => claim.requestId)],
    });
    const timestamps = new Map(earlier.map((row) => [`${row.sender_device_row_id}/${row.request_id}`, row.server_timestamp]));
    for (const claim of taken) {
      const index = claimedBy.get(key(claim)) as number;
      const timestamp = timestamps.get(key(claim));
      // Only a deletion of the sender's device between the two statements leaves no row.
      outcomes[index] = timestamp ? { kind: 'duplicate', serverTimestamp: timestamp } : { kind: 'recipient-gone' };
    }
  }
  for (const [retry, first] of retries) {
    const firstOutcome = outcomes[first];
    outcomes[retry] =
      firstOutcome === undefined
        ? { kind: 'duplicate', serverTimestamp: (writes[first].sentRequest as SentRequestRecord).serverTimestamp }
        : firstOutcome.kind === 'duplicate'
          ? firstOutcome
          : { kind: 'recipient-gone' };
  }
  return { outcomes: outcomes.map((outcome) => outcome ?? { kind: 'stored' }), deleted };
}

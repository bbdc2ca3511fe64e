import { Injectable } from '@nestjs/common';
import type { EnvelopeType } from '@chat/protocol';
import { Prisma } from '../prisma/generated/client.js';
import { PrismaService } from '../prisma/prisma.service.js';
import { deviceCanReceive } from '../prisma/receiving-device.sql.js';

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

/** The only place the messages feature touches the database. */
@Injectable()
export class MessagesRepository {
  constructor(private readonly prisma: PrismaService) {}

  /** The account of that username as a send addresses it; null when there is no such account. */
  async findAccountByUsername(username: string): Promise<AddressedAccount | null> {
    return (await this.findAccounts(Prisma.sql`a.username = ${username}`))[0] ?? null;
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
    const rows = await this.prisma.$queryRaw<
      { account_id: string; username: string; device_row_id: string | null; device_id: number | null; registration_id: number | null; unlinked: boolean }[]
    >`
      SELECT a.id AS account_id, a.username, d.id AS device_row_id, d.device_id, d.registration_id, false AS unlinked
        FROM accounts a LEFT JOIN devices d ON d.account_id = a.id AND ${deviceCanReceive}
       WHERE ${accountIs}
      UNION ALL
      SELECT a.id, a.username, NULL, u.device_id, u.registration_id, true
        FROM accounts a JOIN unlinked_devices u ON u.account_id = a.id
       WHERE ${accountIs}`;
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

  /** The sender's device row and the answer stored for `requestId`, in one round trip; null when the device no longer exists. */
  async findSenderDevice(accountId: string, deviceId: number, requestId: string | undefined): Promise<SenderDevice | null> {
    const [row] = await this.prisma.$queryRaw<{ id: string; server_timestamp: Date | null }[]>`
      SELECT d.id, s.server_timestamp
        FROM devices d
        LEFT JOIN sent_requests s ON s.sender_device_row_id = d.id AND s.request_id = ${requestId ?? null}::uuid
       WHERE d.account_id = ${accountId}::uuid AND d.device_id = ${deviceId}`;
    return row ? { deviceRowId: row.id, previousServerTimestamp: row.server_timestamp } : null;
  }

  /**
   * The messages of one send and, for a send with an id, its `sent_requests`
   * row, in one transaction: all or nothing. The row is written first, so of
   * two concurrent sends with one id the second waits on the first's key,
   * then finds it and stores nothing.
   */
  async storeSend(messages: NewMessage[], sentRequest: SentRequestRecord | undefined): Promise<StoreOutcome> {
    try {
      return await this.prisma.$transaction(async (tx): Promise<StoreOutcome> => {
        if (sentRequest) {
          const inserted = await tx.$executeRaw`
            INSERT INTO sent_requests (sender_device_row_id, request_id, server_timestamp)
            VALUES (${sentRequest.senderDeviceRowId}::uuid, ${sentRequest.requestId}::uuid, ${sentRequest.serverTimestamp})
            ON CONFLICT DO NOTHING`;
          if (inserted === 0) {
            const [earlier] = await tx.$queryRaw<{ server_timestamp: Date }[]>`
              SELECT server_timestamp FROM sent_requests
               WHERE sender_device_row_id = ${sentRequest.senderDeviceRowId}::uuid AND request_id = ${sentRequest.requestId}::uuid`;
            // Only a deletion of the sender's device between the two statements leaves no row.
            if (!earlier) return { kind: 'recipient-gone' };
            return { kind: 'duplicate', serverTimestamp: earlier.server_timestamp };
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
   * message whose insert committed after a later one's is still found.
   */
  async findQueued(deviceRowId: string, excluding: readonly string[], limit: number): Promise<StoredMessage[]> {
    const rows = await this.prisma.$queryRaw<StoredMessageRow[]>`
      SELECT m.id, m.seq, m.sender_username AS source, m.sender_device_id AS source_device,
             m.sender_account_id::text AS source_account_id, m.type, m.ciphertext, m.server_timestamp
        FROM messages m
       WHERE m.recipient_device_row_id = ${deviceRowId}::uuid
         AND m.id <> ALL(${[...excluding]}::uuid[])
       ORDER BY m.seq
       LIMIT ${limit}`;
    return rows.map(toStoredMessage);
  }

  /** Deletes the message only if it is queued for this device; false when there is none. */
  async deleteQueued(deviceRowId: string, id: string): Promise<boolean> {
    const deleted = await this.prisma.$executeRaw`
      DELETE FROM messages WHERE id = ${id}::uuid AND recipient_device_row_id = ${deviceRowId}::uuid`;
    return deleted > 0;
  }
}

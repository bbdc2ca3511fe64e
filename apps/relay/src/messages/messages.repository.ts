import { Injectable } from '@nestjs/common';
import type { EnvelopeType } from '@chat/protocol';
import { Prisma } from '../prisma/generated/client.js';
import { PrismaService } from '../prisma/prisma.service.js';
import { deviceCanReceive } from '../prisma/receiving-device.sql.js';

/** A device that can receive messages: it has uploaded its keys. */
export interface RecipientDevice {
  deviceRowId: string;
  deviceId: number;
}

export interface Recipient {
  accountId: string;
  /** Ordered by device id. */
  devices: RecipientDevice[];
}

export interface NewMessage {
  id: string;
  recipientDeviceRowId: string;
  senderAccountId: string;
  /** Kept with the message so that it stays deliverable, with its source, if the sender's account is deleted. */
  senderUsername: string;
  senderDeviceId: number;
  type: EnvelopeType;
  ciphertext: Uint8Array<ArrayBuffer>;
  serverTimestamp: Date;
}

export interface StoredMessage {
  id: string;
  /** Queue position; delivery order. */
  seq: bigint;
  /** The sender's username when it sent. */
  source: string;
  sourceDevice: number;
  type: EnvelopeType;
  ciphertext: Uint8Array;
  serverTimestamp: Date;
}

interface StoredMessageRow {
  id: string;
  seq: bigint;
  source: string;
  source_device: number | null;
  type: EnvelopeType;
  ciphertext: Uint8Array;
  server_timestamp: Date;
}

const toStoredMessage = (row: StoredMessageRow): StoredMessage => ({
  id: row.id,
  seq: row.seq,
  source: row.source,
  sourceDevice: row.source_device ?? 0,
  type: row.type,
  ciphertext: row.ciphertext,
  serverTimestamp: row.server_timestamp,
});

/** The only place the messages feature touches the database. */
@Injectable()
export class MessagesRepository {
  constructor(private readonly prisma: PrismaService) {}

  /** The account's devices that have keys, in one round trip; null when it has none or does not exist. */
  async findRecipient(username: string): Promise<Recipient | null> {
    const rows = await this.prisma.$queryRaw<{ account_id: string; device_row_id: string; device_id: number }[]>`
      SELECT a.id AS account_id, d.id AS device_row_id, d.device_id
        FROM accounts a JOIN devices d ON d.account_id = a.id
       WHERE a.username = ${username}
         AND ${deviceCanReceive}
       ORDER BY d.device_id`;
    const first = rows[0];
    if (!first) return null;
    return {
      accountId: first.account_id,
      devices: rows.map((row) => ({ deviceRowId: row.device_row_id, deviceId: row.device_id })),
    };
  }

  /**
   * One multi-row INSERT, so the messages of one send are stored all or none.
   * Returns false, storing nothing, when a recipient device was deleted (with
   * its account) after it was looked up.
   */
  async insertMessages(messages: NewMessage[]): Promise<boolean> {
    try {
      await this.prisma.message.createMany({ data: messages });
      return true;
    } catch (error) {
      if (error instanceof Prisma.PrismaClientKnownRequestError && error.code === 'P2003') return false;
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

  /** The device's queue after `afterSeq`, oldest first. */
  async findQueued(deviceRowId: string, afterSeq: bigint, limit: number): Promise<StoredMessage[]> {
    const rows = await this.prisma.$queryRaw<StoredMessageRow[]>`
      SELECT m.id, m.seq, m.sender_username AS source, m.sender_device_id AS source_device,
             m.type, m.ciphertext, m.server_timestamp
        FROM messages m
       WHERE m.recipient_device_row_id = ${deviceRowId}::uuid AND m.seq > ${afterSeq}
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

import { Injectable } from '@nestjs/common';
import { DEVICE_ID_MAX, PRIMARY_DEVICE_ID } from '@chat/protocol';
import type { DeviceIdentity } from '../auth/auth.repository.js';
import { PrismaService } from '../prisma/prisma.service.js';
import { deviceCanReceive } from '../prisma/receiving-device.sql.js';

type Bytes = Uint8Array<ArrayBuffer>;

/** A provisioning slot as stored. */
export interface ProvisioningSlotRecord {
  id: string;
  secretHash: Bytes;
  /** The approving device's account; null until approved. */
  accountId: string | null;
  /** The sealed provisioning message; null until approved. */
  message: Bytes | null;
  expiresAt: Date;
}

export interface DeviceRecord {
  deviceId: number;
  createdAt: Date;
  hasKeys: boolean;
}

export type ApproveOutcome = 'approved' | 'not-found' | 'too-many-devices';
export type LinkOutcome = { linked: DeviceIdentity } | 'not-found' | 'too-many-devices';

/** Sentinel thrown inside a transaction to roll it back. */
class Rollback extends Error {
  constructor(readonly outcome: 'not-found' | 'too-many-devices') {
    super(outcome);
  }
}

/**
 * Provisioning slots, linked devices and their tombstones. The only place the
 * devices module touches Prisma.
 *
 * Every change to an account's set of devices (link, unlink) first locks the
 * account's row (`SELECT ... FOR UPDATE`), so that they run one at a time per
 * account: two concurrent links cannot both see room for one more device, nor
 * take the same device id, and an unlink's tombstone cannot interleave with a
 * link that takes its id.
 */
@Injectable()
export class DevicesRepository {
  constructor(private readonly prisma: PrismaService) {}

  async createSlot(id: string, secretHash: Bytes, expiresAt: Date): Promise<void> {
    await this.prisma.provisioningSlot.create({ data: { id, secretHash, expiresAt } });
  }

  async findSlot(id: string): Promise<ProvisioningSlotRecord | null> {
    return this.prisma.provisioningSlot.findUnique({
      where: { id },
      select: { id: true, secretHash: true, accountId: true, message: true, expiresAt: true },
    });
  }

  /**
   * Stores the sealed message in an open slot (unexpired at `now`, not yet
   * approved) and binds the slot to the account, unless the account already
   * has `maxDevices` devices. The device count is a courtesy to the approver:
   * the link checks it again, under the account's lock.
   */
  async approveSlot(id: string, accountId: string, message: Bytes, now: Date, maxDevices: number): Promise<ApproveOutcome> {
    try {
      await this.prisma.$transaction(async (tx) => {
        const { count } = await tx.provisioningSlot.updateMany({
          where: { id, accountId: null, expiresAt: { gt: now } },
          data: { accountId, message },
        });
        if (count !== 1) throw new Rollback('not-found');
        if ((await tx.device.count({ where: { accountId } })) >= maxDevices) throw new Rollback('too-many-devices');
      });
      return 'approved';
    } catch (error) {
      if (error instanceof Rollback) return error.outcome;
      throw error;
    }
  }

  /**
   * In one transaction, under the account's lock: consumes the slot (it must
   * still be the account's, approved, unexpired at `now` and of that secret),
   * checks the account has fewer than `maxDevices` devices, creates the
   * device under the smallest free id >= 2 and removes the tombstone of that
   * id. A refusal consumes nothing: the slot stays for a retry.
   */
  async linkDevice(slotId: string, accountId: string, secretHash: Bytes, now: Date, maxDevices: number): Promise<LinkOutcome> {
    try {
      const linked = await this.prisma.$transaction(async (tx) => {
        const [account] = await tx.$queryRaw<Array<{ username: string; credential_version: number }>>`
          SELECT username, credential_version FROM accounts WHERE id = ${accountId}::uuid FOR UPDATE`;
        if (!account) throw new Rollback('not-found');
        const { count } = await tx.provisioningSlot.deleteMany({
          where: { id: slotId, accountId, secretHash, expiresAt: { gt: now }, message: { not: null } },
        });
        if (count !== 1) throw new Rollback('not-found');
        const taken = new Set((await tx.device.findMany({ where: { accountId }, select: { deviceId: true } })).map((d) => d.deviceId));
        if (taken.size >= maxDevices) throw new Rollback('too-many-devices');
        const deviceId = smallestFreeDeviceId(taken);
        await tx.unlinkedDevice.deleteMany({ where: { accountId, deviceId } });
        const device = await tx.device.create({ data: { accountId, deviceId }, select: { id: true } });
        return {
          accountId,
          username: account.username,
          deviceId,
          deviceRowId: device.id,
          credentialVersion: account.credential_version,
        } satisfies DeviceIdentity;
      });
      return { linked };
    } catch (error) {
      if (error instanceof Rollback) return error.outcome;
      throw error;
    }
  }

  /** The account's devices, ascending id; `hasKeys` is the condition under which senders see a device. */
  async listDevices(accountId: string): Promise<DeviceRecord[]> {
    const rows = await this.prisma.$queryRaw<Array<{ device_id: number; created_at: Date; has_keys: boolean }>>`
      SELECT d.device_id, d.created_at, (${deviceCanReceive}) AS has_keys
        FROM devices d JOIN accounts a ON a.id = d.account_id
       WHERE d.account_id = ${accountId}::uuid
       ORDER BY d.device_id`;
    return rows.map((row) => ({ deviceId: row.device_id, createdAt: row.created_at, hasKeys: row.has_keys }));
  }

  /**
   * Deletes the device (its prekeys, queued messages, idempotency records and
   * refresh tokens go by cascade) and records its tombstone with the
   * registration id it had, in one transaction under the account's lock.
   * Returns the deleted row's id, or null when the account has no such device.
   */
  async unlinkDevice(accountId: string, deviceId: number, now: Date): Promise<string | null> {
    return this.prisma.$transaction(async (tx) => {
      await tx.$queryRaw`SELECT 1 FROM accounts WHERE id = ${accountId}::uuid FOR UPDATE`;
      const [device] = await tx.$queryRaw<Array<{ id: string; registration_id: number | null }>>`
        DELETE FROM devices WHERE account_id = ${accountId}::uuid AND device_id = ${deviceId}
        RETURNING id::text AS id, registration_id`;
      if (!device) return null;
      const tombstone = { registrationId: device.registration_id, unlinkedAt: now };
      await tx.unlinkedDevice.upsert({
        where: { accountId_deviceId: { accountId, deviceId } },
        create: { accountId, deviceId, ...tombstone },
        update: tombstone,
      });
      return device.id;
    });
  }
}

/** Device ids of linked devices: the smallest id >= 2 that the account does not use. */
export function smallestFreeDeviceId(taken: ReadonlySet<number>): number {
  for (let id = PRIMARY_DEVICE_ID + 1; id <= DEVICE_ID_MAX; id++) if (!taken.has(id)) return id;
  // Unreachable: the device cap (at most MAX_DEVICES_PER_ACCOUNT, 16) is far below DEVICE_ID_MAX.
  throw new Error('No free device id');
}

import { Injectable } from '@nestjs/common';
import { ErrorCode, PRIMARY_DEVICE_ID } from '@chat/protocol';
import { RelayException } from '../common/relay.exception.js';
import { Prisma } from '../prisma/generated/client.js';
import { PrismaService } from '../prisma/prisma.service.js';

export interface AccountCredentials {
  accountId: string;
  username: string;
  passwordHash: string;
  credentialVersion: number;
}

/** A device and the credential version its tokens are issued under. */
export interface DeviceIdentity {
  accountId: string;
  username: string;
  deviceId: number;
  /** The device's row: tokens are bound to it, not only to the reusable `deviceId`. */
  deviceRowId: string;
  credentialVersion: number;
}

/** What an access-token check needs: the account's credential version, and whether the token's device still exists. */
export interface TokenState {
  credentialVersion: number;
  deviceExists: boolean;
}

/** A redeemed refresh token: whose it was, and whether it was still current. */
export interface ConsumedRefreshToken extends DeviceIdentity {
  expiresAt: Date;
  /** The account's credential version now; the token is stale when it differs from `credentialVersion`. */
  currentCredentialVersion: number;
}

/** Sentinel thrown inside a transaction to roll it back. */
class Rollback extends Error {}

/** Accounts, their devices' credentials, refresh tokens and retired usernames. The only place auth touches Prisma. */
@Injectable()
export class AuthRepository {
  constructor(private readonly prisma: PrismaService) {}

  /**
   * Creates the account and its device 1. A username that an account deleted
   * after `retiredAfter` gave up is still taken; an older retirement is
   * forgotten.
   *
   * The account row is inserted before the retired name is read: an insert
   * that meets a concurrent deletion of the same name waits on the unique
   * index until that deletion commits, and the deletion records the retired
   * name in the same transaction, so the read that follows sees it. A name
   * cannot be taken over between its deletion and its retirement.
   *
   * @throws RelayException USERNAME_TAKEN, decided by the unique index, so also under concurrent registers.
   */
  async createAccount(username: string, passwordHash: string, retiredAfter: Date): Promise<DeviceIdentity> {
    try {
      return await this.prisma.$transaction(async (tx) => {
        const account = await tx.account.create({
          data: { username, passwordHash, devices: { create: { deviceId: PRIMARY_DEVICE_ID } } },
          select: { id: true, username: true, credentialVersion: true, devices: { select: { id: true } } },
        });
        const [primary] = account.devices;
        if (!primary) throw new Error('The account was created without its primary device');
        const retired = await tx.retiredUsername.findUnique({ where: { username }, select: { deletedAt: true } });
        if (retired && retired.deletedAt > retiredAfter) throw new Rollback();
        if (retired) await tx.retiredUsername.delete({ where: { username } });
        return {
          accountId: account.id,
          username: account.username,
          deviceId: PRIMARY_DEVICE_ID,
          deviceRowId: primary.id,
          credentialVersion: account.credentialVersion,
        };
      });
    } catch (error) {
      if (error instanceof Rollback || (error instanceof Prisma.PrismaClientKnownRequestError && error.code === 'P2002')) {
        // One answer for both: a name in its cooling-off period reads as taken, not as deleted.
        throw new RelayException(ErrorCode.UsernameTaken, 'The username is taken');
      }
      throw error;
    }
  }

  async findCredentials(username: string): Promise<AccountCredentials | null> {
    const account = await this.prisma.account.findUnique({
      where: { username },
      select: { id: true, username: true, passwordHash: true, credentialVersion: true },
    });
    return account && credentialsOf(account);
  }

  async findCredentialsById(accountId: string): Promise<AccountCredentials | null> {
    const account = await this.prisma.account.findUnique({
      where: { id: accountId },
      select: { id: true, username: true, passwordHash: true, credentialVersion: true },
    });
    return account && credentialsOf(account);
  }

  /**
   * The account's credential version and whether it has the device (primary-key
   * look-ups), or null when the account does not exist. With `deviceRowId` the
   * device must be that row; without, any device of the account under `deviceId`.
   */
  async findTokenState(accountId: string, deviceId: number, deviceRowId?: string): Promise<TokenState | null> {
    const account = await this.prisma.account.findUnique({
      where: { id: accountId },
      select: { credentialVersion: true, devices: { where: { deviceId, ...(deviceRowId !== undefined && { id: deviceRowId }) }, select: { id: true } } },
    });
    return account && { credentialVersion: account.credentialVersion, deviceExists: account.devices.length > 0 };
  }

  /** The row of the account's device `deviceId`, or null when the account has no such device. */
  async findDeviceRowId(accountId: string, deviceId: number): Promise<string | null> {
    const device = await this.prisma.device.findUnique({
      where: { accountId_deviceId: { accountId, deviceId } },
      select: { id: true },
    });
    return device?.id ?? null;
  }

  /**
   * Stores a refresh token of the device row. Returns false, storing nothing,
   * when the row is gone (unlinked, or its account deleted): the foreign key
   * decides, so a token cannot outlive its device even when it races the unlink.
   */
  async storeRefreshToken(device: DeviceIdentity, tokenHash: Uint8Array<ArrayBuffer>, expiresAt: Date): Promise<boolean> {
    try {
      await this.prisma.refreshToken.create({
        data: {
          accountId: device.accountId,
          deviceId: device.deviceId,
          deviceRowId: device.deviceRowId,
          tokenHash,
          credentialVersion: device.credentialVersion,
          expiresAt,
        },
      });
      return true;
    } catch (error) {
      if (error instanceof Prisma.PrismaClientKnownRequestError && error.code === 'P2003') return false;
      throw error;
    }
  }

  /**
   * Deletes the refresh token and returns whose it was, or null when it is
   * unknown or another request consumed it first: the delete is the claim,
   * so a token is redeemed at most once.
   *
   * The claim is the row count of a DELETE of the token's row. Prisma's
   * `delete` reads the row and then deletes it, and answers with what it read
   * even when a concurrent request deleted the row in between (the second
   * DELETE removes nothing and is not an error), so on Postgres concurrent
   * redemptions of one token each got a new pair.
   */
  async consumeRefreshToken(tokenHash: Uint8Array<ArrayBuffer>): Promise<ConsumedRefreshToken | null> {
    const token = await this.prisma.refreshToken.findUnique({
      where: { tokenHash },
      select: {
        id: true,
        accountId: true,
        deviceId: true,
        deviceRowId: true,
        credentialVersion: true,
        expiresAt: true,
        account: { select: { username: true, credentialVersion: true } },
      },
    });
    if (!token) return null;
    // Concurrent deletes of one row: the first takes its lock and removes it, the others then find nothing (count 0).
    const { count } = await this.prisma.refreshToken.deleteMany({ where: { id: token.id } });
    if (count !== 1) return null;
    return {
      accountId: token.accountId,
      username: token.account.username,
      deviceId: token.deviceId,
      deviceRowId: token.deviceRowId,
      credentialVersion: token.credentialVersion,
      expiresAt: token.expiresAt,
      currentCredentialVersion: token.account.credentialVersion,
    };
  }

  /**
   * Replaces the password hash and moves the credential version on, deleting
   * every refresh token of the account, in one transaction. Applies only if
   * the version is still `verifiedVersion`, the one whose password was just
   * checked; else nothing changes. Returns the new version, or null when
   * nothing changed.
   */
  async changePassword(accountId: string, verifiedVersion: number, passwordHash: string): Promise<number | null> {
    try {
      return await this.prisma.$transaction(async (tx) => {
        const { count } = await tx.account.updateMany({
          where: { id: accountId, credentialVersion: verifiedVersion },
          data: { passwordHash, credentialVersion: { increment: 1 } },
        });
        if (count !== 1) throw new Rollback();
        await tx.refreshToken.deleteMany({ where: { accountId } });
        return verifiedVersion + 1;
      });
    } catch (error) {
      if (error instanceof Rollback) return null;
      throw error;
    }
  }

  /**
   * Deletes the account, if its credential version is still `verifiedVersion`,
   * and retires its username as of `deletedAt`, in one transaction. Devices,
   * prekeys, queued messages to its devices, refresh tokens and the backup go
   * with it (ON DELETE CASCADE). Returns false, changing nothing, when the
   * version moved on meanwhile.
   */
  async deleteAccount(accountId: string, verifiedVersion: number, username: string, deletedAt: Date): Promise<boolean> {
    try {
      await this.prisma.$transaction(async (tx) => {
        await tx.retiredUsername.upsert({
          where: { username },
          create: { username, deletedAt },
          update: { deletedAt },
        });
        const { count } = await tx.account.deleteMany({ where: { id: accountId, credentialVersion: verifiedVersion } });
        if (count !== 1) throw new Rollback();
      });
      return true;
    } catch (error) {
      if (error instanceof Rollback) return false;
      throw error;
    }
  }
}

function credentialsOf(account: { id: string; username: string; passwordHash: string; credentialVersion: number }): AccountCredentials {
  return {
    accountId: account.id,
    username: account.username,
    passwordHash: account.passwordHash,
    credentialVersion: account.credentialVersion,
  };
}

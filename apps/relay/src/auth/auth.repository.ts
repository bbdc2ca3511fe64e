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
  credentialVersion: number;
}

/** A redeemed refresh token: whose it was, and whether it was still current. */
export interface ConsumedRefreshToken extends DeviceIdentity {
  expiresAt: Date;
  /** The account's credential version now; the token is stale when it differs from `credentialVersion`. */
  currentCredentialVersion: number;
}

/** Sentinel thrown inside a transaction to roll it back. */
class Rollback extends Error {}

/** Accounts, their first device, refresh tokens and retired usernames. The only place auth touches Prisma. */
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
          select: { id: true, username: true, credentialVersion: true },
        });
        const retired = await tx.retiredUsername.findUnique({ where: { username }, select: { deletedAt: true } });
        if (retired && retired.deletedAt > retiredAfter) throw new Rollback();
        if (retired) await tx.retiredUsername.delete({ where: { username } });
        return {
          accountId: account.id,
          username: account.username,
          deviceId: PRIMARY_DEVICE_ID,
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

  /** The account's credential version (a primary-key look-up), or null when the account does not exist. */
  async findCredentialVersion(accountId: string): Promise<number | null> {
    const account = await this.prisma.account.findUnique({ where: { id: accountId }, select: { credentialVersion: true } });
    return account?.credentialVersion ?? null;
  }

  async storeRefreshToken(device: DeviceIdentity, tokenHash: Uint8Array<ArrayBuffer>, expiresAt: Date): Promise<void> {
    await this.prisma.refreshToken.create({
      data: {
        accountId: device.accountId,
        deviceId: device.deviceId,
        tokenHash,
        credentialVersion: device.credentialVersion,
        expiresAt,
      },
    });
  }

  /**
   * Deletes the refresh token and returns whose it was, or null when it is
   * unknown or another request consumed it first: the delete is the claim,
   * so a token is redeemed at most once.
   */
  async consumeRefreshToken(tokenHash: Uint8Array<ArrayBuffer>): Promise<ConsumedRefreshToken | null> {
    try {
      const token = await this.prisma.refreshToken.delete({
        where: { tokenHash },
        select: {
          accountId: true,
          deviceId: true,
          credentialVersion: true,
          expiresAt: true,
          account: { select: { username: true, credentialVersion: true } },
        },
      });
      return {
        accountId: token.accountId,
        username: token.account.username,
        deviceId: token.deviceId,
        credentialVersion: token.credentialVersion,
        expiresAt: token.expiresAt,
        currentCredentialVersion: token.account.credentialVersion,
      };
    } catch (error) {
      if (error instanceof Prisma.PrismaClientKnownRequestError && error.code === 'P2025') return null;
      throw error;
    }
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

import { Injectable } from '@nestjs/common';
import { ErrorCode, PRIMARY_DEVICE_ID } from '@chat/protocol';
import { RelayException } from '../common/relay.exception.js';
import { Prisma } from '../prisma/generated/client.js';
import { PrismaService } from '../prisma/prisma.service.js';

export interface AccountCredentials {
  accountId: string;
  username: string;
  passwordHash: string;
}

export interface DeviceIdentity {
  accountId: string;
  username: string;
  deviceId: number;
}

/** Accounts, their first device and refresh tokens. The only place auth touches Prisma. */
@Injectable()
export class AuthRepository {
  constructor(private readonly prisma: PrismaService) {}

  /**
   * Creates the account and its device 1 in one statement.
   * @throws RelayException USERNAME_TAKEN, decided by the unique index, so also under concurrent registers.
   */
  async createAccount(username: string, passwordHash: string): Promise<DeviceIdentity> {
    try {
      const account = await this.prisma.account.create({
        data: { username, passwordHash, devices: { create: { deviceId: PRIMARY_DEVICE_ID } } },
        select: { id: true, username: true },
      });
      return { accountId: account.id, username: account.username, deviceId: PRIMARY_DEVICE_ID };
    } catch (error) {
      if (error instanceof Prisma.PrismaClientKnownRequestError && error.code === 'P2002') {
        throw new RelayException(ErrorCode.UsernameTaken, 'The username is taken');
      }
      throw error;
    }
  }

  async findCredentials(username: string): Promise<AccountCredentials | null> {
    const account = await this.prisma.account.findUnique({
      where: { username },
      select: { id: true, username: true, passwordHash: true },
    });
    return account && { accountId: account.id, username: account.username, passwordHash: account.passwordHash };
  }

  async storeRefreshToken(device: DeviceIdentity, tokenHash: Uint8Array<ArrayBuffer>, expiresAt: Date): Promise<void> {
    await this.prisma.refreshToken.create({
      data: { accountId: device.accountId, deviceId: device.deviceId, tokenHash, expiresAt },
    });
  }

  /**
   * Deletes the refresh token and returns whose it was, or null when it is
   * unknown or another request consumed it first: the delete is the claim,
   * so a token is redeemed at most once.
   */
  async consumeRefreshToken(tokenHash: Uint8Array<ArrayBuffer>): Promise<(DeviceIdentity & { expiresAt: Date }) | null> {
    try {
      const token = await this.prisma.refreshToken.delete({
        where: { tokenHash },
        select: { accountId: true, deviceId: true, expiresAt: true, account: { select: { username: true } } },
      });
      return { accountId: token.accountId, username: token.account.username, deviceId: token.deviceId, expiresAt: token.expiresAt };
    } catch (error) {
      if (error instanceof Prisma.PrismaClientKnownRequestError && error.code === 'P2025') return null;
      throw error;
    }
  }
}

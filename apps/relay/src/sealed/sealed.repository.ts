import { Injectable } from '@nestjs/common';
import { PrismaService } from '../prisma/prisma.service.js';

/** Whether and how an account accepts sealed messages. */
export interface UnidentifiedAccess {
  accountId: string;
  /** 16 bytes; null until the account uploads one. */
  accessKey: Uint8Array | null;
  unrestricted: boolean;
}

/** The only place the sealed-sender feature touches the database (its messages are stored by `MessagesRepository`). */
@Injectable()
export class SealedSenderRepository {
  constructor(private readonly prisma: PrismaService) {}

  /** The account's identity key (serialized public key); null before its first key upload or for no such account. */
  async findIdentityKey(accountId: string): Promise<Uint8Array | null> {
    const account = await this.prisma.account.findUnique({ where: { id: accountId }, select: { identityKey: true } });
    return account?.identityKey ?? null;
  }

  /** False when there is no such account. */
  async setUnidentifiedAccess(accountId: string, accessKey: Uint8Array<ArrayBuffer>, unrestricted: boolean): Promise<boolean> {
    const updated = await this.prisma.account.updateMany({
      where: { id: accountId },
      data: { unidentifiedAccessKey: accessKey, unrestrictedUnidentifiedAccess: unrestricted },
    });
    return updated.count > 0;
  }

  async findAccessByUsername(username: string): Promise<UnidentifiedAccess | null> {
    const account = await this.prisma.account.findUnique({
      where: { username },
      select: { id: true, unidentifiedAccessKey: true, unrestrictedUnidentifiedAccess: true },
    });
    return account ? toAccess(account) : null;
  }

  /** The accounts of those ids that exist. */
  async findAccessByIds(accountIds: readonly string[]): Promise<UnidentifiedAccess[]> {
    const accounts = await this.prisma.account.findMany({
      where: { id: { in: [...accountIds] } },
      select: { id: true, unidentifiedAccessKey: true, unrestrictedUnidentifiedAccess: true },
    });
    return accounts.map(toAccess);
  }

  async findUsername(accountId: string): Promise<string | null> {
    const account = await this.prisma.account.findUnique({ where: { id: accountId }, select: { username: true } });
    return account?.username ?? null;
  }
}

const toAccess = (account: { id: string; unidentifiedAccessKey: Uint8Array | null; unrestrictedUnidentifiedAccess: boolean }): UnidentifiedAccess => ({
  accountId: account.id,
  accessKey: account.unidentifiedAccessKey,
  unrestricted: account.unrestrictedUnidentifiedAccess,
});

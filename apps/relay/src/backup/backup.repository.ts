import { Injectable } from '@nestjs/common';
import { PrismaService } from '../prisma/prisma.service.js';

export interface StoredBackup {
  blob: Uint8Array;
  updatedAt: Date;
}

/** The only place the backup feature touches the database. */
@Injectable()
export class BackupRepository {
  constructor(private readonly prisma: PrismaService) {}

  /**
   * Stores the account's backup, replacing the one it had, in one statement
   * so that two concurrent uploads leave one of them whole. Returns when it
   * was stored, or null when the account does not exist.
   */
  async saveBackup(accountId: string, blob: Uint8Array<ArrayBuffer>): Promise<Date | null> {
    const rows = await this.prisma.$queryRaw<{ updated_at: Date }[]>`
      INSERT INTO backups (account_id, blob)
      SELECT id, ${blob} FROM accounts WHERE id = ${accountId}::uuid
      ON CONFLICT (account_id) DO UPDATE SET blob = EXCLUDED.blob, updated_at = CURRENT_TIMESTAMP
      RETURNING updated_at`;
    return rows[0]?.updated_at ?? null;
  }

  async findBackup(accountId: string): Promise<StoredBackup | null> {
    const backup = await this.prisma.backup.findUnique({
      where: { accountId },
      select: { blob: true, updatedAt: true },
    });
    return backup;
  }

  async deleteBackup(accountId: string): Promise<void> {
    await this.prisma.backup.deleteMany({ where: { accountId } });
  }
}

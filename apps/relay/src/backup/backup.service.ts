import { Injectable } from '@nestjs/common';
import { ErrorCode, type BackupResponse, type UploadBackupRequest } from '@chat/protocol';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import { RelayException } from '../common/relay.exception.js';
import { BackupRepository } from './backup.repository.js';

/**
 * One encrypted backup per account. The relay keeps the bytes the client
 * sent and hands them back to the same account only; it cannot decrypt them
 * (the key comes from a recovery secret it never sees) and learns only their
 * size and when they were stored.
 */
@Injectable()
export class BackupService {
  constructor(private readonly backups: BackupRepository) {}

  /** @throws RelayException INVALID_TOKEN when the token's account no longer exists */
  async upload(device: AuthenticatedDevice, request: UploadBackupRequest): Promise<void> {
    const stored = await this.backups.saveBackup(device.accountId, new Uint8Array(Buffer.from(request.blob, 'base64')));
    if (!stored) throw new RelayException(ErrorCode.InvalidToken, 'The token names an account that does not exist');
  }

  /** @throws RelayException BACKUP_NOT_FOUND */
  async fetch(device: AuthenticatedDevice): Promise<BackupResponse> {
    const backup = await this.backups.findBackup(device.accountId);
    if (!backup) throw new RelayException(ErrorCode.BackupNotFound, 'This account has no backup');
    return { blob: Buffer.from(backup.blob).toString('base64'), updatedAt: backup.updatedAt.getTime() };
  }

  /** Idempotent: deleting when there is no backup succeeds too, as the goal is met. */
  async delete(device: AuthenticatedDevice): Promise<void> {
    await this.backups.deleteBackup(device.accountId);
  }
}

import { MAX_BACKUP_BYTES } from './limits.js';
import { IsBase64Bytes } from './validators.js';

/**
 * `PUT /v1/backup`: the account's encrypted backup, replacing any earlier
 * one. The relay stores the bytes as they are and cannot read them: they are
 * sealed under a key derived from a recovery secret only the user holds.
 */
export class UploadBackupRequest {
  @IsBase64Bytes(1, MAX_BACKUP_BYTES)
  blob!: string;
}

/** `GET /v1/backup` */
export interface BackupResponse {
  /** The bytes of the last upload, base64. */
  blob: string;
  /** When the relay stored them, ms since the Unix epoch. */
  updatedAt: number;
}

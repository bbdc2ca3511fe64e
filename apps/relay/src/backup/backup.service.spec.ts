import { describe, expect, it } from '@jest/globals';
import { ErrorCode } from '@chat/protocol';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import type { BackupRepository, StoredBackup } from './backup.repository.js';
import { BackupService } from './backup.service.js';
import { codeOf } from '../../test/support/relay-errors.js';

const alice: AuthenticatedDevice = { accountId: 'acc-alice', username: 'alice', deviceId: 1, credentialVersion: 0, expiresAt: 0 };
const bob: AuthenticatedDevice = { accountId: 'acc-bob', username: 'bob', deviceId: 1, credentialVersion: 0, expiresAt: 0 };

/** Backups by account id, as the table holds them; `accounts` are the ones that exist. */
class InMemoryBackupRepository implements Pick<BackupRepository, keyof BackupRepository> {
  readonly backups = new Map<string, StoredBackup>();
  accounts = new Set([alice.accountId, bob.accountId]);
  clock = 1_700_000_000_000;

  async saveBackup(accountId: string, blob: Uint8Array<ArrayBuffer>) {
    if (!this.accounts.has(accountId)) return null;
    const updatedAt = new Date(++this.clock);
    this.backups.set(accountId, { blob: blob.slice(), updatedAt });
    return updatedAt;
  }
  async findBackup(accountId: string) {
    return this.backups.get(accountId) ?? null;
  }
  async deleteBackup(accountId: string) {
    this.backups.delete(accountId);
  }
}

const serviceWith = (repository: InMemoryBackupRepository) => new BackupService(repository as unknown as BackupRepository);
const blob = (...bytes: number[]) => Buffer.from(bytes).toString('base64');

describe('BackupService', () => {
  it('stores the decoded bytes and hands them back as base64 with the time they were stored', async () => {
    const repository = new InMemoryBackupRepository();
    const service = serviceWith(repository);
    await service.upload(alice, { blob: blob(1, 2, 250) });
    expect([...repository.backups.get(alice.accountId)!.blob]).toEqual([1, 2, 250]);
    expect(await service.fetch(alice)).toEqual({ blob: blob(1, 2, 250), updatedAt: repository.clock });
  });

  it('replaces the earlier backup on upload', async () => {
    const service = serviceWith(new InMemoryBackupRepository());
    await service.upload(alice, { blob: blob(1) });
    const first = await service.fetch(alice);
    await service.upload(alice, { blob: blob(2) });
    const second = await service.fetch(alice);
    expect(second.blob).toBe(blob(2));
    expect(second.updatedAt).toBeGreaterThan(first.updatedAt);
  });

  it("keeps each account to its own backup: another account's is BACKUP_NOT_FOUND and survives its delete", async () => {
    const repository = new InMemoryBackupRepository();
    const service = serviceWith(repository);
    await service.upload(alice, { blob: blob(7) });
    expect(await codeOf(service.fetch(bob))).toBe(ErrorCode.BackupNotFound);
    await service.delete(bob);
    expect((await service.fetch(alice)).blob).toBe(blob(7));
  });

  it('deletes, and deleting again still succeeds', async () => {
    const service = serviceWith(new InMemoryBackupRepository());
    await service.upload(alice, { blob: blob(7) });
    await service.delete(alice);
    expect(await codeOf(service.fetch(alice))).toBe(ErrorCode.BackupNotFound);
    await expect(service.delete(alice)).resolves.toBeUndefined();
  });

  it('refuses an upload for an account that no longer exists with INVALID_TOKEN', async () => {
    const repository = new InMemoryBackupRepository();
    repository.accounts = new Set();
    expect(await codeOf(serviceWith(repository).upload(alice, { blob: blob(1) }))).toBe(ErrorCode.InvalidToken);
  });
});

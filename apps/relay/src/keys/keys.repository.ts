import { Injectable } from '@nestjs/common';
import { PrismaService } from '../prisma/prisma.service.js';
import { deviceCanReceive } from '../prisma/receiving-device.sql.js';

type Bytes = Uint8Array<ArrayBuffer>;

/** What the relay already holds for the uploading device, read before an upload. */
export interface DeviceKeyState {
  deviceRowId: string;
  /** The account's identity key; null until the first upload of any of its devices. */
  identityKey: Bytes | null;
  hasSignedPreKey: boolean;
  hasKyberLastResort: boolean;
}

export interface OneTimePreKeyRecord {
  keyId: number;
  publicKey: Bytes;
}

export interface SignedPreKeyRecord {
  keyId: number;
  publicKey: Bytes;
  signature: Bytes;
}

/** Verified public keys of one upload, as bytes. */
export interface KeyUpload {
  identityKey: Bytes;
  registrationId: number;
  signedPreKey?: SignedPreKeyRecord;
  kyberLastResortPreKey?: SignedPreKeyRecord;
  preKeys: OneTimePreKeyRecord[];
  kyberPreKeys: SignedPreKeyRecord[];
  /** Delete the device's stored one-time keys (EC and Kyber) before storing these. */
  replaceOneTimePreKeys: boolean;
}

export type StoreKeysOutcome = 'stored' | 'identity-key-mismatch' | 'duplicate-key-id';

/** A device that has uploaded its signed prekey and Kyber last-resort prekey. */
export interface KeyedDevice {
  deviceRowId: string;
  deviceId: number;
  registrationId: number;
  signedPreKey: SignedPreKeyRecord;
  kyberLastResortPreKey: SignedPreKeyRecord;
}

export interface AccountKeys {
  accountId: string;
  username: string;
  identityKey: Bytes;
  /** Ordered by device id. */
  devices: KeyedDevice[];
}

export interface OneTimeKeyCounts {
  preKeys: number;
  kyberPreKeys: number;
}

interface DeviceKeyStateRow {
  device_row_id: string;
  identity_key: Bytes | null;
  has_signed_prekey: boolean;
  has_kyber_last_resort: boolean;
}

interface KeyedDeviceRow {
  account_id: string;
  username: string;
  identity_key: Bytes;
  device_row_id: string;
  device_id: number;
  registration_id: number;
  signed_prekey_id: number;
  signed_prekey: Bytes;
  signed_prekey_signature: Bytes;
  kyber_last_resort_id: number;
  kyber_last_resort_key: Bytes;
  kyber_last_resort_signature: Bytes;
}

/** Sentinel thrown inside the upload transaction to roll it back. */
class UploadRejected extends Error {
  constructor(readonly outcome: Exclude<StoreKeysOutcome, 'stored'>) {
    super(outcome);
  }
}

/** The only place the keys feature touches the database. */
@Injectable()
export class KeysRepository {
  constructor(private readonly prisma: PrismaService) {}

  async findDeviceKeyState(accountId: string, deviceId: number): Promise<DeviceKeyState | null> {
    const rows = await this.prisma.$queryRaw<DeviceKeyStateRow[]>`
      SELECT d.id AS device_row_id, a.identity_key,
             d.signed_prekey IS NOT NULL AS has_signed_prekey,
             d.kyber_last_resort_key IS NOT NULL AS has_kyber_last_resort
        FROM devices d JOIN accounts a ON a.id = d.account_id
       WHERE d.account_id = ${accountId}::uuid AND d.device_id = ${deviceId}`;
    const row = rows[0];
    return row
      ? {
          deviceRowId: row.device_row_id,
          identityKey: row.identity_key,
          hasSignedPreKey: row.has_signed_prekey,
          hasKyberLastResort: row.has_kyber_last_resort,
        }
      : null;
  }

  /**
   * Stores an upload in one transaction: all of it or, on an identity key
   * other than the account's or a one-time key id already stored, nothing.
   * With `replaceOneTimePreKeys` the device's stored one-time keys are
   * deleted first, inside the same transaction, so no bundle is ever handed
   * out with a key of the old set once the new one is stored. An upload that
   * leaves both one-time counts at `lowThreshold` or more ends the device's
   * low period (see `markKeysLow`).
   */
  async storeKeys(accountId: string, deviceRowId: string, upload: KeyUpload, lowThreshold: number): Promise<StoreKeysOutcome> {
    try {
      await this.prisma.$transaction(async (tx) => {
        // Conditional, so that two devices racing to set different identity keys cannot both win.
        const identitySet = await tx.$executeRaw`
          UPDATE accounts SET identity_key = ${upload.identityKey}
           WHERE id = ${accountId}::uuid AND (identity_key IS NULL OR identity_key = ${upload.identityKey})`;
        if (identitySet !== 1) throw new UploadRejected('identity-key-mismatch');

        await tx.device.update({
          where: { id: deviceRowId },
          data: {
            registrationId: upload.registrationId,
            ...(upload.signedPreKey && {
              signedPreKeyId: upload.signedPreKey.keyId,
              signedPreKey: upload.signedPreKey.publicKey,
              signedPreKeySignature: upload.signedPreKey.signature,
            }),
            ...(upload.kyberLastResortPreKey && {
              kyberLastResortId: upload.kyberLastResortPreKey.keyId,
              kyberLastResortKey: upload.kyberLastResortPreKey.publicKey,
              kyberLastResortSignature: upload.kyberLastResortPreKey.signature,
            }),
          },
        });

        if (upload.replaceOneTimePreKeys) {
          await tx.oneTimePreKey.deleteMany({ where: { deviceRowId } });
          await tx.kyberPreKey.deleteMany({ where: { deviceRowId } });
        }
        if (upload.preKeys.length > 0) {
          const { count } = await tx.oneTimePreKey.createMany({
            data: upload.preKeys.map((key) => ({ deviceRowId, keyId: key.keyId, publicKey: key.publicKey })),
            skipDuplicates: true,
          });
          if (count !== upload.preKeys.length) throw new UploadRejected('duplicate-key-id');
        }
        if (upload.kyberPreKeys.length > 0) {
          const { count } = await tx.kyberPreKey.createMany({
            data: upload.kyberPreKeys.map((key) => ({
              deviceRowId,
              keyId: key.keyId,
              publicKey: key.publicKey,
              signature: key.signature,
            })),
            skipDuplicates: true,
          });
          if (count !== upload.kyberPreKeys.length) throw new UploadRejected('duplicate-key-id');
        }
        await tx.$executeRaw`
          UPDATE devices d SET keys_low_notified_at = NULL
           WHERE d.id = ${deviceRowId}::uuid AND d.keys_low_notified_at IS NOT NULL
             AND (SELECT count(*) FROM one_time_prekeys k WHERE k.device_row_id = d.id) >= ${lowThreshold}::int
             AND (SELECT count(*) FROM kyber_prekeys k WHERE k.device_row_id = d.id) >= ${lowThreshold}::int`;
      });
      return 'stored';
    } catch (error) {
      if (error instanceof UploadRejected) return error.outcome;
      throw error;
    }
  }

  async countOneTimeKeys(accountId: string, deviceId: number): Promise<OneTimeKeyCounts> {
    const rows = await this.prisma.$queryRaw<{ pre_keys: number; kyber_pre_keys: number }[]>`
      SELECT (SELECT count(*)::int FROM one_time_prekeys k WHERE k.device_row_id = d.id) AS pre_keys,
             (SELECT count(*)::int FROM kyber_prekeys k WHERE k.device_row_id = d.id) AS kyber_pre_keys
        FROM devices d
       WHERE d.account_id = ${accountId}::uuid AND d.device_id = ${deviceId}`;
    const row = rows[0];
    return { preKeys: row?.pre_keys ?? 0, kyberPreKeys: row?.kyber_pre_keys ?? 0 };
  }

  /**
   * The one-time key counts of a device that can receive (null for one that
   * cannot, such as a device that has not uploaded its keys).
   */
  async countReceivingDeviceKeys(deviceRowId: string): Promise<OneTimeKeyCounts | null> {
    const rows = await this.prisma.$queryRaw<{ pre_keys: number; kyber_pre_keys: number }[]>`
      SELECT (SELECT count(*)::int FROM one_time_prekeys k WHERE k.device_row_id = d.id) AS pre_keys,
             (SELECT count(*)::int FROM kyber_prekeys k WHERE k.device_row_id = d.id) AS kyber_pre_keys
        FROM devices d JOIN accounts a ON a.id = d.account_id
       WHERE d.id = ${deviceRowId}::uuid
         AND ${deviceCanReceive}`;
    const row = rows[0];
    return row ? { preKeys: row.pre_keys, kyberPreKeys: row.kyber_pre_keys } : null;
  }

  /**
   * Starts the device's low period if a one-time count is below `threshold`
   * and none is running, returning the counts; null when nothing started.
   * One statement, and run after the claim that lowered the count has
   * committed: of concurrent claims, each sees the count its own delete left
   * or lower, so one of them starts the period (the crossing is never
   * missed), and the row lock with the `IS NULL` test lets only one start it
   * (the device is told once).
   */
  async markKeysLow(deviceRowId: string, threshold: number): Promise<OneTimeKeyCounts | null> {
    const rows = await this.prisma.$queryRaw<{ pre_keys: number; kyber_pre_keys: number }[]>`
      UPDATE devices d SET keys_low_notified_at = CURRENT_TIMESTAMP
       WHERE d.id = ${deviceRowId}::uuid AND d.keys_low_notified_at IS NULL
         AND ((SELECT count(*) FROM one_time_prekeys k WHERE k.device_row_id = d.id) < ${threshold}::int
           OR (SELECT count(*) FROM kyber_prekeys k WHERE k.device_row_id = d.id) < ${threshold}::int)
      RETURNING (SELECT count(*)::int FROM one_time_prekeys k WHERE k.device_row_id = d.id) AS pre_keys,
                (SELECT count(*)::int FROM kyber_prekeys k WHERE k.device_row_id = d.id) AS kyber_pre_keys`;
    const row = rows[0];
    return row ? { preKeys: row.pre_keys, kyberPreKeys: row.kyber_pre_keys } : null;
  }

  /** The account's identity key and its devices that can be reached (null if none). */
  async findAccountKeys(username: string): Promise<AccountKeys | null> {
    const rows = await this.prisma.$queryRaw<KeyedDeviceRow[]>`
      SELECT a.id AS account_id, a.username, a.identity_key,
             d.id AS device_row_id, d.device_id, d.registration_id,
             d.signed_prekey_id, d.signed_prekey, d.signed_prekey_signature,
             d.kyber_last_resort_id, d.kyber_last_resort_key, d.kyber_last_resort_signature
        FROM accounts a JOIN devices d ON d.account_id = a.id
       WHERE a.username = ${username}
         AND ${deviceCanReceive}
       ORDER BY d.device_id`;
    const first = rows[0];
    if (!first) return null;
    return {
      accountId: first.account_id,
      username: first.username,
      identityKey: first.identity_key,
      devices: rows.map((row) => ({
        deviceRowId: row.device_row_id,
        deviceId: row.device_id,
        registrationId: row.registration_id,
        signedPreKey: {
          keyId: row.signed_prekey_id,
          publicKey: row.signed_prekey,
          signature: row.signed_prekey_signature,
        },
        kyberLastResortPreKey: {
          keyId: row.kyber_last_resort_id,
          publicKey: row.kyber_last_resort_key,
          signature: row.kyber_last_resort_signature,
        },
      })),
    };
  }

  /**
   * Deletes and returns the device's lowest one-time EC prekey. SKIP LOCKED
   * makes concurrent claims take different rows instead of the same one.
   */
  async claimOneTimePreKey(deviceRowId: string): Promise<OneTimePreKeyRecord | null> {
    const rows = await this.prisma.$queryRaw<{ key_id: number; public_key: Bytes }[]>`
      DELETE FROM one_time_prekeys
       WHERE (device_row_id, key_id) = (
             SELECT device_row_id, key_id FROM one_time_prekeys
              WHERE device_row_id = ${deviceRowId}::uuid
              ORDER BY key_id LIMIT 1
                FOR UPDATE SKIP LOCKED)
      RETURNING key_id, public_key`;
    const row = rows[0];
    return row ? { keyId: row.key_id, publicKey: row.public_key } : null;
  }

  /** As `claimOneTimePreKey`, for the one-time Kyber prekeys. */
  async claimOneTimeKyberPreKey(deviceRowId: string): Promise<SignedPreKeyRecord | null> {
    const rows = await this.prisma.$queryRaw<{ key_id: number; public_key: Bytes; signature: Bytes }[]>`
      DELETE FROM kyber_prekeys
       WHERE (device_row_id, key_id) = (
             SELECT device_row_id, key_id FROM kyber_prekeys
              WHERE device_row_id = ${deviceRowId}::uuid
              ORDER BY key_id LIMIT 1
                FOR UPDATE SKIP LOCKED)
      RETURNING key_id, public_key, signature`;
    const row = rows[0];
    return row ? { keyId: row.key_id, publicKey: row.public_key, signature: row.signature } : null;
  }
}

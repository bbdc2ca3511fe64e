import { createCipheriv, createDecipheriv, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { IdentityKeyPair, PrivateKey, PublicKey } from '@signalapp/libsignal-client';
import {
  DEVICE_ID_MAX,
  DEVICE_ID_MIN,
  KEY_ID_MAX,
  KEY_ID_MIN,
  MAX_BACKUP_BYTES,
  REGISTRATION_ID_MAX,
  REGISTRATION_ID_MIN,
  USERNAME_PATTERN,
} from '@chat/protocol';
import { deriveScryptKey, isWithinScryptLimits, OWASP_SCRYPT, type ScryptParams } from '../crypto/scrypt.js';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { asDeviceId, asRegistrationId } from '../ids.js';
import { KeyIdKind, type AccountRecord, type LocalIdentity, type TrustedIdentity } from '../stores/stores.js';

// The backup blob, version 1 (docs/protocol.md, "The backup blob"):
//
//   header (69 bytes)                       ciphertext          tag (16)
//   magic "SCBK" | version | kdf | logN | r | p | salt (16) | nonce (12) | key check (32)
//
// key material: master = scrypt(secret, salt, N = 2^logN, r, p, 32 bytes);
// AES key and key check = HKDF-SHA256(master, no salt, their info strings).
// AES-256-GCM over the padded JSON content, with AAD = header || username,
// so that neither the parameters nor the account a blob belongs to can be
// changed without the tag failing.

export const BACKUP_FORMAT_VERSION = 1;
const MAGIC = Buffer.from('SCBK', 'latin1');
const KDF_SCRYPT = 1;
const SALT_BYTES = 16;
const NONCE_BYTES = 12;
const KEY_CHECK_BYTES = 32;
const TAG_BYTES = 16;
export const BACKUP_HEADER_BYTES = MAGIC.length + 5 + SALT_BYTES + NONCE_BYTES + KEY_CHECK_BYTES;
/** The content is padded to a multiple of this, so the blob's size says little about the number of peers. */
export const BACKUP_PADDING_BLOCK = 4096;
const PADDING_MARKER = 0x80;
const AES_KEY_INFO = 'SecureChat backup v1 AES-256-GCM key';
const KEY_CHECK_INFO = 'SecureChat backup v1 key check';

/** scrypt's cost parameters for the backup key. */
export type BackupKdfParams = ScryptParams;

/** OWASP's scrypt recommendation (N = 2^17, r = 8, p = 1): 128 MiB and about half a second. */
export const DEFAULT_BACKUP_KDF: Readonly<BackupKdfParams> = OWASP_SCRYPT;

/** Bounds a reader accepts, so a blob cannot make it allocate without limit. */
export const BACKUP_KDF_LIMITS = Object.freeze({ logN: [10, 20], r: [1, 16], p: [1, 4], maxMemoryBytes: 256 * 1024 * 1024 } as const);

/** What a new install needs to continue as the user. Sessions and prekeys are not in it. */
export interface BackupContents {
  /** When the backup was made, ms since the epoch. */
  createdAt: number;
  account: AccountRecord;
  identity: LocalIdentity;
  /** The next key id the backed-up install would have allocated, per kind. */
  nextKeyIds: Record<KeyIdKind, number>;
  /** Peer identity keys trusted for sending (on first use, or accepted since), and whether each was verified. */
  peers: TrustedIdentity[];
}

/** True when scrypt with these parameters is within `BACKUP_KDF_LIMITS`. */
export function isSupportedKdf(params: BackupKdfParams): boolean {
  return isWithinScryptLimits(params, BACKUP_KDF_LIMITS);
}

async function deriveKeys(secret: Uint8Array, salt: Uint8Array, params: BackupKdfParams) {
  const master = await deriveScryptKey(secret, salt, params);
  const derive = (info: string) => Buffer.from(hkdfSync('sha256', master, new Uint8Array(0), info, 32));
  const keys = { aesKey: derive(AES_KEY_INFO), keyCheck: derive(KEY_CHECK_INFO) };
  master.fill(0);
  return keys;
}

const associatedData = (header: Uint8Array, username: string) => Buffer.concat([header, Buffer.from(username, 'utf8')]);

/**
 * Encrypts `contents` under a key derived from `secret` (the recovery
 * secret's 32 bytes) and binds it to `contents.account.username`.
 * @throws {SecureChatError} `InvalidOptions` for scrypt parameters outside `BACKUP_KDF_LIMITS`,
 *   `BackupTooLarge` when the blob would exceed `MAX_BACKUP_BYTES`.
 */
export async function sealBackup(
  contents: BackupContents,
  secret: Uint8Array,
  kdf: BackupKdfParams = DEFAULT_BACKUP_KDF,
): Promise<Uint8Array<ArrayBuffer>> {
  if (!isSupportedKdf(kdf)) {
    throw new SecureChatError(SecureChatErrorCode.InvalidOptions, 'backup scrypt parameters are outside the supported bounds');
  }
  const plaintext = pad(Buffer.from(JSON.stringify(toJson(contents)), 'utf8'));
  if (BACKUP_HEADER_BYTES + plaintext.length + TAG_BYTES > MAX_BACKUP_BYTES) {
    throw new SecureChatError(SecureChatErrorCode.BackupTooLarge, `the backup would exceed ${MAX_BACKUP_BYTES} bytes`);
  }
  const salt = randomBytes(SALT_BYTES);
  const nonce = randomBytes(NONCE_BYTES);
  const { aesKey, keyCheck } = await deriveKeys(secret, salt, kdf);
  const header = Buffer.concat([
    MAGIC,
    Buffer.from([BACKUP_FORMAT_VERSION, KDF_SCRYPT, kdf.logN, kdf.r, kdf.p]),
    salt,
    nonce,
    keyCheck,
  ]);
  const cipher = createCipheriv('aes-256-gcm', aesKey, nonce, { authTagLength: TAG_BYTES });
  cipher.setAAD(associatedData(header, contents.account.username));
  const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  aesKey.fill(0);
  return new Uint8Array(Buffer.concat([header, ciphertext, cipher.getAuthTag()]));
}

/**
 * Decrypts a blob made by `sealBackup` for `username`.
 * @throws {SecureChatError} `WrongRecoverySecret` when the secret does not match the blob's key check
 *   (also when the salt or scrypt parameters were altered, which cannot be told apart);
 *   `BackupCorrupted` for anything else that does not parse or authenticate.
 */
export async function openBackup(blob: Uint8Array, secret: Uint8Array, username: string): Promise<BackupContents> {
  const bytes = Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength);
  if (bytes.length < BACKUP_HEADER_BYTES + TAG_BYTES + BACKUP_PADDING_BLOCK || bytes.length > MAX_BACKUP_BYTES) {
    throw corrupted(`a backup is ${BACKUP_HEADER_BYTES + TAG_BYTES + BACKUP_PADDING_BLOCK} to ${MAX_BACKUP_BYTES} bytes, not ${bytes.length}`);
  }
  if (!bytes.subarray(0, MAGIC.length).equals(MAGIC)) throw corrupted('not a backup blob');
  let offset = MAGIC.length;
  const version = bytes.readUInt8(offset++);
  if (version !== BACKUP_FORMAT_VERSION) throw corrupted(`backup format version ${version} is not supported`);
  const kdfId = bytes.readUInt8(offset++);
  const kdf: BackupKdfParams = { logN: bytes.readUInt8(offset++), r: bytes.readUInt8(offset++), p: bytes.readUInt8(offset++) };
  if (kdfId !== KDF_SCRYPT || !isSupportedKdf(kdf)) throw corrupted('unsupported key derivation parameters');
  const salt = bytes.subarray(offset, (offset += SALT_BYTES));
  const nonce = bytes.subarray(offset, (offset += NONCE_BYTES));
  const storedKeyCheck = bytes.subarray(offset, (offset += KEY_CHECK_BYTES));
  const header = bytes.subarray(0, BACKUP_HEADER_BYTES);

  const { aesKey, keyCheck } = await deriveKeys(secret, salt, kdf);
  if (!timingSafeEqual(keyCheck, storedKeyCheck)) {
    aesKey.fill(0);
    throw new SecureChatError(SecureChatErrorCode.WrongRecoverySecret, 'the recovery secret does not open this backup');
  }
  let plaintext: Buffer;
  try {
    const decipher = createDecipheriv('aes-256-gcm', aesKey, nonce, { authTagLength: TAG_BYTES });
    decipher.setAAD(associatedData(header, username));
    decipher.setAuthTag(bytes.subarray(bytes.length - TAG_BYTES));
    plaintext = Buffer.concat([decipher.update(bytes.subarray(BACKUP_HEADER_BYTES, bytes.length - TAG_BYTES)), decipher.final()]);
  } catch (cause) {
    throw corrupted(`the backup does not authenticate as ${username}'s: altered, or another account's`, cause);
  } finally {
    aesKey.fill(0);
  }
  try {
    const contents = fromJson(JSON.parse(unpad(plaintext).toString('utf8')) as unknown);
    if (contents.account.username !== username) throw new Error('the backup names another account');
    return contents;
  } catch (cause) {
    throw corrupted('the backup decrypted but its content is invalid', cause);
  }
}

function corrupted(message: string, cause?: unknown): SecureChatError {
  return new SecureChatError(SecureChatErrorCode.BackupCorrupted, message, cause === undefined ? {} : { cause });
}

/** ISO/IEC 7816-4 padding: `0x80`, then zeros up to a multiple of the block. */
function pad(content: Buffer): Buffer {
  const length = Math.ceil((content.length + 1) / BACKUP_PADDING_BLOCK) * BACKUP_PADDING_BLOCK;
  const padded = Buffer.alloc(length);
  content.copy(padded);
  padded[content.length] = PADDING_MARKER;
  return padded;
}

function unpad(padded: Buffer): Buffer {
  if (padded.length === 0 || padded.length % BACKUP_PADDING_BLOCK !== 0) throw new Error('padded length is not a multiple of the block');
  let end = padded.length - 1;
  while (end >= 0 && padded[end] === 0) end--;
  if (end < 0 || padded[end] !== PADDING_MARKER) throw new Error('no padding marker');
  return padded.subarray(0, end);
}

// --- the JSON content -------------------------------------------------------

interface BackupJson {
  createdAt: number;
  account: { username: string; deviceId: number };
  identity: { publicKey: string; privateKey: string; registrationId: number };
  nextKeyIds: { preKey: number; signedPreKey: number; kyberPreKey: number };
  peers: Array<{ username: string; identityKey: string; verified: boolean }>;
}

const base64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');

function toJson(contents: BackupContents): BackupJson {
  return {
    createdAt: contents.createdAt,
    account: { username: contents.account.username, deviceId: contents.account.deviceId },
    identity: {
      publicKey: base64(contents.identity.identityKeyPair.publicKey.serialize()),
      privateKey: base64(contents.identity.identityKeyPair.privateKey.serialize()),
      registrationId: contents.identity.registrationId,
    },
    nextKeyIds: {
      preKey: contents.nextKeyIds[KeyIdKind.PreKey],
      signedPreKey: contents.nextKeyIds[KeyIdKind.SignedPreKey],
      kyberPreKey: contents.nextKeyIds[KeyIdKind.KyberPreKey],
    },
    peers: contents.peers.map((peer) => ({
      username: peer.username,
      identityKey: base64(peer.identityKey.serialize()),
      verified: peer.verified,
    })),
  };
}

/** Parses and checks every field; members this version does not know are ignored. */
function fromJson(json: unknown): BackupContents {
  const root = object(json, 'content');
  const account = object(root.account, 'account');
  const identity = object(root.identity, 'identity');
  const nextKeyIds = object(root.nextKeyIds, 'nextKeyIds');
  if (!Array.isArray(root.peers)) throw new Error('peers is not an array');

  const publicKey = PublicKey.deserialize(bytesOf(identity.publicKey, 'identity.publicKey'));
  const privateKey = PrivateKey.deserialize(bytesOf(identity.privateKey, 'identity.privateKey'));
  if (!privateKey.getPublicKey().equals(publicKey)) throw new Error('the identity private key does not match its public key');

  const seen = new Set<string>();
  const peers = root.peers.map((entry: unknown, index: number): TrustedIdentity => {
    const peer = object(entry, `peers[${index}]`);
    const peerName = username(peer.username, `peers[${index}].username`);
    if (seen.has(peerName)) throw new Error(`peer ${index} repeats a username`);
    seen.add(peerName);
    // Absent in backups made before verification existed: not verified.
    if (peer.verified !== undefined && typeof peer.verified !== 'boolean') throw new Error(`peers[${index}].verified is not a boolean`);
    return {
      username: peerName,
      identityKey: PublicKey.deserialize(bytesOf(peer.identityKey, `peers[${index}].identityKey`)),
      verified: peer.verified === true,
    };
  });

  return {
    createdAt: integer(root.createdAt, 'createdAt', 0, Number.MAX_SAFE_INTEGER),
    account: {
      username: username(account.username, 'account.username'),
      deviceId: asDeviceId(integer(account.deviceId, 'account.deviceId', DEVICE_ID_MIN, DEVICE_ID_MAX)),
    },
    identity: {
      identityKeyPair: new IdentityKeyPair(publicKey, privateKey),
      registrationId: asRegistrationId(
        integer(identity.registrationId, 'identity.registrationId', REGISTRATION_ID_MIN, REGISTRATION_ID_MAX),
      ),
    },
    nextKeyIds: {
      [KeyIdKind.PreKey]: keyId(nextKeyIds.preKey, 'nextKeyIds.preKey'),
      [KeyIdKind.SignedPreKey]: keyId(nextKeyIds.signedPreKey, 'nextKeyIds.signedPreKey'),
      [KeyIdKind.KyberPreKey]: keyId(nextKeyIds.kyberPreKey, 'nextKeyIds.kyberPreKey'),
    },
    peers,
  };
}

function object(value: unknown, field: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error(`${field} is not an object`);
  return value as Record<string, unknown>;
}

function integer(value: unknown, field: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new Error(`${field} is not an integer in ${min}..${max}`);
  }
  return value;
}

/** A next key id may be one past the largest id (the counter wraps on the next allocation). */
const keyId = (value: unknown, field: string) => integer(value, field, KEY_ID_MIN, KEY_ID_MAX + 1);

function username(value: unknown, field: string): string {
  if (typeof value !== 'string' || !USERNAME_PATTERN.test(value)) throw new Error(`${field} is not a username`);
  return value;
}

function bytesOf(value: unknown, field: string): Uint8Array<ArrayBuffer> {
  if (typeof value !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(value) || value.length % 4 !== 0) {
    throw new Error(`${field} is not base64`);
  }
  return new Uint8Array(Buffer.from(value, 'base64'));
}

import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { deriveScryptKey, isWithinScryptLimits, OWASP_SCRYPT, type ScryptParams } from '../crypto/scrypt.js';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';

// Key hierarchy of the SQLite store (docs/stores.md, "Key derivation"):
//
//   passphrase --scrypt(salt, N = 2^logN, r, p)--> passphrase key (never stored)
//   data key: 32 random bytes, stored only wrapped: AES-256-GCM under the
//     passphrase key, AAD = "chat-store/v1/data-key" | version | logN | r | p | salt
//   record key = HKDF-SHA256(data key, info "chat-store/v1/record-encryption")
//   lookup key = HKDF-SHA256(data key, info "chat-store/v1/record-lookup")
//
// A record under (kind, id) is stored under lookup = HMAC-SHA256(lookup key,
// kind | 0x00 | id), so ids (usernames) never appear in the clear, as
// nonce (12) | AES-256-GCM(record key, u16 id length | id | payload) | tag (16)
// with AAD = "chat-store/v1/record" | 0x00 | kind | 0x00 | lookup: a value
// moved under another row fails authentication.

export const STORE_FORMAT_VERSION = 1;
const SALT_BYTES = 32;
const KEY_BYTES = 32;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const DATA_KEY_LABEL = `chat-store/v${STORE_FORMAT_VERSION}/data-key`;
const RECORD_LABEL = `chat-store/v${STORE_FORMAT_VERSION}/record`;
const RECORD_KEY_INFO = `chat-store/v${STORE_FORMAT_VERSION}/record-encryption`;
const LOOKUP_KEY_INFO = `chat-store/v${STORE_FORMAT_VERSION}/record-lookup`;

/** scrypt's cost for the passphrase key. */
export type StoreKdfParams = ScryptParams;

/** OWASP's scrypt recommendation (N = 2^17, r = 8, p = 1): 128 MiB and about half a second. */
export const DEFAULT_STORE_KDF: Readonly<StoreKdfParams> = OWASP_SCRYPT;

/**
 * Costs the store accepts, from its options and from a file's header, so a
 * header cannot make it allocate without bound. The floor is for tests.
 */
export const STORE_KDF_LIMITS = Object.freeze({ logN: [10, 22], r: [1, 32], p: [1, 16], maxMemoryBytes: 512 * 1024 * 1024 } as const);

export function isSupportedStoreKdf(params: StoreKdfParams): boolean {
  return isWithinScryptLimits(params, STORE_KDF_LIMITS);
}

/** What the store's header row holds: everything needed to unlock, nothing secret. */
export interface KeyHeader {
  format: number;
  kdf: StoreKdfParams;
  salt: Buffer;
  /** nonce | AES-256-GCM(passphrase key, data key) | tag */
  wrappedKey: Buffer;
}

/**
 * The passphrase as bytes: strings are NFC-normalised (RFC 8265's
 * OpaqueString), so the same passphrase typed on two systems opens the store.
 * @throws {SecureChatError} `InvalidArgument` for an empty or non-string/non-byte passphrase.
 */
export function passphraseBytes(passphrase: string | Uint8Array): Buffer {
  const bytes =
    typeof passphrase === 'string'
      ? Buffer.from(passphrase.normalize('NFC'), 'utf8')
      : passphrase instanceof Uint8Array
        ? Buffer.from(passphrase)
        : null;
  if (!bytes || bytes.length === 0) {
    throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'the passphrase must be a non-empty string or byte array');
  }
  return bytes;
}

function derivePassphraseKey(passphrase: Buffer, salt: Buffer, kdf: StoreKdfParams): Promise<Buffer> {
  return deriveScryptKey(passphrase, salt, kdf, KEY_BYTES);
}

const headerAad = (format: number, kdf: StoreKdfParams, salt: Buffer) =>
  Buffer.concat([Buffer.from(DATA_KEY_LABEL, 'utf8'), Buffer.from([format, kdf.logN, kdf.r, kdf.p]), salt]);

function aesGcmSeal(key: Buffer, plaintext: Uint8Array, aad: Buffer): Buffer {
  const nonce = randomBytes(NONCE_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_BYTES });
  cipher.setAAD(aad);
  return Buffer.concat([nonce, cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
}

/** null when authentication fails. */
function aesGcmOpen(key: Buffer, sealed: Uint8Array, aad: Buffer): Buffer | null {
  if (sealed.length < NONCE_BYTES + TAG_BYTES) return null;
  const nonce = sealed.subarray(0, NONCE_BYTES);
  const tag = sealed.subarray(sealed.length - TAG_BYTES);
  const decipher = createDecipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_BYTES });
  decipher.setAAD(aad);
  decipher.setAuthTag(tag);
  try {
    return Buffer.concat([decipher.update(sealed.subarray(NONCE_BYTES, sealed.length - TAG_BYTES)), decipher.final()]);
  } catch {
    return null;
  }
}

/**
 * A fresh data key wrapped under `passphrase`.
 * @throws {SecureChatError} `InvalidOptions` for a cost outside `STORE_KDF_LIMITS`.
 */
export async function createKeyHeader(passphrase: Buffer, kdf: StoreKdfParams): Promise<{ header: KeyHeader; keys: RecordKeys }> {
  if (!isSupportedStoreKdf(kdf)) {
    throw new SecureChatError(SecureChatErrorCode.InvalidOptions, 'store scrypt parameters are outside STORE_KDF_LIMITS');
  }
  const salt = randomBytes(SALT_BYTES);
  const dataKey = randomBytes(KEY_BYTES);
  const passphraseKey = await derivePassphraseKey(passphrase, salt, kdf);
  const kdfCopy = { logN: kdf.logN, r: kdf.r, p: kdf.p };
  const wrappedKey = aesGcmSeal(passphraseKey, dataKey, headerAad(STORE_FORMAT_VERSION, kdfCopy, salt));
  passphraseKey.fill(0);
  const keys = RecordKeys.fromDataKey(dataKey);
  dataKey.fill(0);
  return { header: { format: STORE_FORMAT_VERSION, kdf: kdfCopy, salt, wrappedKey }, keys };
}

/**
 * Unwraps the data key.
 * @throws {SecureChatError} `WrongPassphrase` when the passphrase (or the header) does not authenticate;
 *   `StoreTampered` for a header no store of this format writes.
 */
export async function unlockKeyHeader(header: KeyHeader, passphrase: Buffer): Promise<RecordKeys> {
  if (header.format !== STORE_FORMAT_VERSION || !isSupportedStoreKdf(header.kdf) || header.salt.length !== SALT_BYTES) {
    throw new SecureChatError(SecureChatErrorCode.StoreTampered, 'the store header is not one this version writes');
  }
  const passphraseKey = await derivePassphraseKey(passphrase, header.salt, header.kdf);
  const dataKey = aesGcmOpen(passphraseKey, header.wrappedKey, headerAad(header.format, header.kdf, header.salt));
  passphraseKey.fill(0);
  if (!dataKey || dataKey.length !== KEY_BYTES) {
    throw new SecureChatError(SecureChatErrorCode.WrongPassphrase, 'the passphrase does not open this store');
  }
  const keys = RecordKeys.fromDataKey(dataKey);
  dataKey.fill(0);
  return keys;
}

/** A record as it is stored: the row key and the sealed value. */
export interface SealedRecord {
  lookup: Buffer;
  value: Buffer;
}

/** The two keys derived from the data key: one seals records, one makes their row keys. */
export class RecordKeys {
  private constructor(
    private readonly recordKey: Buffer,
    private readonly lookupKey: Buffer,
  ) {}

  static fromDataKey(dataKey: Buffer): RecordKeys {
    const derive = (info: string) => Buffer.from(hkdfSync('sha256', dataKey, new Uint8Array(0), info, KEY_BYTES));
    return new RecordKeys(derive(RECORD_KEY_INFO), derive(LOOKUP_KEY_INFO));
  }

  /** The row key of (kind, id). */
  lookup(kind: string, id: string): Buffer {
    return createHmac('sha256', this.lookupKey).update(kind, 'utf8').update(Buffer.from([0])).update(id, 'utf8').digest();
  }

  /** Encrypts `payload` for (kind, id) with a fresh random nonce. */
  seal(kind: string, id: string, payload: Uint8Array): SealedRecord {
    const lookup = this.lookup(kind, id);
    const idBytes = Buffer.from(id, 'utf8');
    if (idBytes.length > 0xffff) throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'record id too long');
    const idLength = Buffer.alloc(2);
    idLength.writeUInt16BE(idBytes.length);
    const value = aesGcmSeal(this.recordKey, Buffer.concat([idLength, idBytes, payload]), recordAad(kind, lookup));
    return { lookup, value };
  }

  /**
   * Decrypts a stored value and checks it belongs under (kind, lookup).
   * @throws {SecureChatError} `StoreTampered` when it does not authenticate or names another id.
   */
  open(kind: string, lookup: Uint8Array, value: Uint8Array): { id: string; payload: Buffer } {
    const plaintext = aesGcmOpen(this.recordKey, value, recordAad(kind, Buffer.from(lookup)));
    if (!plaintext || plaintext.length < 2) throw tampered(kind);
    const idLength = plaintext.readUInt16BE(0);
    if (plaintext.length < 2 + idLength) throw tampered(kind);
    const id = plaintext.subarray(2, 2 + idLength).toString('utf8');
    const expected = this.lookup(kind, id);
    if (lookup.length !== expected.length || !timingSafeEqual(expected, lookup)) throw tampered(kind);
    return { id, payload: plaintext.subarray(2 + idLength) };
  }

  /** Overwrites the keys in memory (best effort: JavaScript may have copied them). */
  destroy(): void {
    this.recordKey.fill(0);
    this.lookupKey.fill(0);
  }
}

const recordAad = (kind: string, lookup: Buffer) =>
  Buffer.concat([Buffer.from(RECORD_LABEL, 'utf8'), Buffer.from([0]), Buffer.from(kind, 'utf8'), Buffer.from([0]), lookup]);

const tampered = (kind: string) => new SecureChatError(SecureChatErrorCode.StoreTampered, `a ${kind} record failed authentication`);

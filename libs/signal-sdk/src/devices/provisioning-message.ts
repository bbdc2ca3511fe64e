import { IdentityKeyPair, PrivateKey, PublicKey } from '@signalapp/libsignal-client';
import { PROFILE_KEY_BYTES, USERNAME_PATTERN, canonicalUsername } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';

/**
 * The provisioning message: what an approving device hands a new device of
 * the account, sealed to the new device's ephemeral key with libsignal's
 * HPKE (`PublicKey.seal`: RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256),
 * HKDF-SHA256, AES-256-GCM), `info` = `PROVISIONING_INFO`, associated data =
 * the slot id as UTF-8, so a message cannot be replayed into another slot.
 * Plaintext, JSON (docs/protocol.md, "Linking a device (client side)"):
 *
 *   { "version": 1, "username": "alice",
 *     "identityPublicKey": "<base64, 33 bytes>", "identityPrivateKey": "<base64, 32 bytes>",
 *     "profileKey": "<base64, 32 bytes>" }
 *
 * `profileKey` (the account's profile key, for sealed sender) is always
 * written; a message without it (from an older approver) is accepted, and
 * the new device then has no profile key and does not send sealed.
 */
export const PROVISIONING_INFO = 'SecureChat provisioning v1';
export const PROVISIONING_MESSAGE_VERSION = 1;

export interface ProvisioningContents {
  /** The account's canonical username. */
  username: string;
  /** The account's identity key pair, shared by all its devices. */
  identityKeyPair: IdentityKeyPair;
  /** The account's profile key (`PROFILE_KEY_BYTES`); absent in a message from an older approver. */
  profileKey?: Uint8Array;
}

interface ProvisioningJson {
  version: number;
  username: string;
  identityPublicKey: string;
  identityPrivateKey: string;
  profileKey?: string;
}

const FIELDS: ReadonlyArray<keyof ProvisioningJson> = ['version', 'username', 'identityPublicKey', 'identityPrivateKey'];
const OPTIONAL_FIELDS: ReadonlyArray<keyof ProvisioningJson> = ['profileKey'];
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

const utf8 = (text: string) => new Uint8Array(Buffer.from(text, 'utf8'));

/** Seals `contents` to the new device's ephemeral key for the slot `slotId`. */
export function sealProvisioningMessage(contents: ProvisioningContents, ephemeralPublicKey: PublicKey, slotId: string): Uint8Array<ArrayBuffer> {
  const json: ProvisioningJson = {
    version: PROVISIONING_MESSAGE_VERSION,
    username: contents.username,
    identityPublicKey: Buffer.from(contents.identityKeyPair.publicKey.serialize()).toString('base64'),
    identityPrivateKey: Buffer.from(contents.identityKeyPair.privateKey.serialize()).toString('base64'),
  };
  if (contents.profileKey) json.profileKey = Buffer.from(contents.profileKey).toString('base64');
  const plaintext = utf8(JSON.stringify(json));
  try {
    return ephemeralPublicKey.seal(plaintext, PROVISIONING_INFO, utf8(slotId));
  } finally {
    plaintext.fill(0);
  }
}

/**
 * Opens a provisioning message with the ephemeral private key and checks
 * it strictly: the four required fields and at most the optional
 * `profileKey`, version 1, a canonical username, a 33-byte public key and a
 * 32-byte private key that derives it, a 32-byte profile key.
 * @throws {SecureChatError} `DecryptionFailed` when it does not open (another key, slot or info, or altered);
 *   `MalformedContent` when the plaintext is not a valid version 1 message.
 */
export function openProvisioningMessage(sealed: Uint8Array<ArrayBuffer>, ephemeralPrivateKey: PrivateKey, slotId: string): ProvisioningContents {
  let plaintext: Uint8Array<ArrayBuffer>;
  try {
    plaintext = ephemeralPrivateKey.open(sealed, PROVISIONING_INFO, utf8(slotId));
  } catch (cause) {
    throw new SecureChatError(SecureChatErrorCode.DecryptionFailed, 'the provisioning message does not open with this link key', { cause });
  }
  try {
    return parseProvisioningJson(plaintext);
  } finally {
    plaintext.fill(0);
  }
}

function parseProvisioningJson(plaintext: Uint8Array): ProvisioningContents {
  const malformed = (why: string, cause?: unknown) =>
    new SecureChatError(SecureChatErrorCode.MalformedContent, `malformed provisioning message: ${why}`, cause === undefined ? {} : { cause });
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(plaintext));
  } catch (cause) {
    throw malformed('not UTF-8 JSON', cause);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw malformed('not a JSON object');
  const keys = Object.keys(value);
  if (!FIELDS.every((field) => keys.includes(field)) || !keys.every((key) => (FIELDS as string[]).includes(key) || (OPTIONAL_FIELDS as string[]).includes(key))) {
    throw malformed(`expected the fields ${FIELDS.join(', ')} and optionally ${OPTIONAL_FIELDS.join(', ')}`);
  }
  const json = value as Record<keyof ProvisioningJson, unknown>;
  if (json.version !== PROVISIONING_MESSAGE_VERSION) throw malformed('unknown version');
  if (typeof json.username !== 'string' || json.username !== canonicalUsername(json.username) || !USERNAME_PATTERN.test(json.username)) {
    throw malformed('username is not a canonical username');
  }
  const publicBytes = base64Bytes(json.identityPublicKey, 33, 'identityPublicKey', malformed);
  const privateBytes = base64Bytes(json.identityPrivateKey, 32, 'identityPrivateKey', malformed);
  let publicKey: PublicKey;
  let privateKey: PrivateKey;
  try {
    publicKey = PublicKey.deserialize(publicBytes);
    privateKey = PrivateKey.deserialize(privateBytes);
  } catch (cause) {
    throw malformed('not a key pair', cause);
  } finally {
    privateBytes.fill(0);
  }
  if (!privateKey.getPublicKey().equals(publicKey)) throw malformed('the private key does not derive the public key');
  const contents: ProvisioningContents = { username: json.username, identityKeyPair: new IdentityKeyPair(publicKey, privateKey) };
  if (json.profileKey !== undefined) contents.profileKey = base64Bytes(json.profileKey, PROFILE_KEY_BYTES, 'profileKey', malformed);
  return contents;
}

function base64Bytes(value: unknown, length: number, field: string, malformed: (why: string) => SecureChatError): Uint8Array<ArrayBuffer> {
  if (typeof value !== 'string' || !BASE64.test(value)) throw malformed(`${field} is not base64`);
  const bytes = new Uint8Array(Buffer.from(value, 'base64'));
  if (bytes.length !== length || Buffer.from(bytes).toString('base64') !== value) throw malformed(`${field} is not ${length} bytes`);
  return bytes;
}

import { randomBytes } from 'node:crypto';
import { ProfileKey } from '@signalapp/libsignal-client/dist/zkgroup/index.js';
import { ACCESS_KEY_BYTES, PROFILE_KEY_BYTES } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';

/**
 * Profile keys and access keys (Signal's unidentified access): an account
 * has one random 32-byte profile key, which it shares only inside end-to-end
 * encrypted messages (content kind 7). Whoever holds it can derive the
 * account's access key, which the relay asks of a sealed send to it.
 */

/** A fresh profile key: 32 random bytes. */
export function generateProfileKey(): Uint8Array<ArrayBuffer> {
  return new Uint8Array(randomBytes(PROFILE_KEY_BYTES));
}

/**
 * The access key of the account whose profile key this is: zkgroup
 * `ProfileKey.deriveAccessKey()` (AES-256-GCM of 16 zero bytes under the
 * profile key, zero nonce, first 16 bytes), never a hand-made derivation.
 * @throws {SecureChatError} `InvalidArgument` for a key that is not 32 bytes.
 */
export function accessKeyOf(profileKey: Uint8Array): Uint8Array<ArrayBuffer> {
  if (!(profileKey instanceof Uint8Array) || profileKey.length !== PROFILE_KEY_BYTES) {
    throw new SecureChatError(SecureChatErrorCode.InvalidArgument, `a profile key is ${PROFILE_KEY_BYTES} bytes`);
  }
  const accessKey = new ProfileKey(new Uint8Array(profileKey)).deriveAccessKey();
  if (accessKey.length !== ACCESS_KEY_BYTES) {
    throw new SecureChatError(SecureChatErrorCode.EncryptionFailed, `libsignal derived an access key of ${accessKey.length} bytes`);
  }
  return accessKey;
}

/**
 * The header value of a multi-recipient sealed send: the XOR of every
 * recipient account's access key (each account once), as Signal's server
 * expects it.
 * @throws {SecureChatError} `InvalidArgument` for no keys or a key that is not 16 bytes.
 */
export function combinedAccessKey(accessKeys: Uint8Array[]): Uint8Array<ArrayBuffer> {
  if (accessKeys.length === 0) throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'no access keys to combine');
  const combined = new Uint8Array(ACCESS_KEY_BYTES);
  for (const key of accessKeys) {
    if (key.length !== ACCESS_KEY_BYTES) throw new SecureChatError(SecureChatErrorCode.InvalidArgument, `an access key is ${ACCESS_KEY_BYTES} bytes`);
    key.forEach((byte, i) => (combined[i] ^= byte));
  }
  return combined;
}

import { CiphertextMessageType, PublicKey, sealedSenderDecryptToUsmc, type IdentityKeyStore } from '@signalapp/libsignal-client';
import { DEVICE_ID_MAX, DEVICE_ID_MIN } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { isLibSignalError } from '../session/libsignal-errors.js';
import { asDeviceId, type DeviceId } from '../ids.js';

/** The relay's `@IsUUID()`, any version; account ids are compared lower case. */
const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The outer layer of a sealed-sender message, opened and its sender certificate checked. */
export interface UnsealedMessage {
  /** The certificate's sender UUID: the sender's account id (lower case). */
  senderAccountId: string;
  senderDevice: DeviceId;
  /** The identity key the certificate names: the one the inner message's session must have. */
  certificateKey: PublicKey;
  /** libsignal `CiphertextMessageType` of `contents`: PreKey, Whisper (1:1) or SenderKey (groups). */
  msgType: CiphertextMessageType;
  /** The inner message, as `CiphertextMessage.serialize()` wrote it. */
  contents: Uint8Array<ArrayBuffer>;
  /** The USMC's group id (a sender-key message's group), or null. */
  groupId: Uint8Array<ArrayBuffer> | null;
}

/**
 * Opens a sealed-sender message (libsignal `sealedSenderDecryptToUsmc`,
 * which also checks that the certificate's key is the key the sender sealed
 * with) and validates its sender certificate against `trustRoot` at `now`
 * (`SenderCertificate.validate`: signed by a server certificate the root
 * signed, not expired).
 * @throws {SecureChatError} `InvalidSenderCertificate` without a trust root, or for a certificate that
 *   does not validate (forged, another root, expired) or names no account id and device;
 *   `DecryptionFailed` when the outer layer does not open (not for this identity key, damaged).
 */
export async function unseal(
  ciphertext: Uint8Array<ArrayBuffer>,
  identityStore: IdentityKeyStore,
  trustRoot: PublicKey | null,
  now: number,
): Promise<UnsealedMessage> {
  if (!trustRoot) {
    throw new SecureChatError(SecureChatErrorCode.InvalidSenderCertificate, 'a sealed message arrived but no trustRoot is configured to check its sender');
  }
  let usmc;
  try {
    usmc = await sealedSenderDecryptToUsmc(ciphertext, identityStore);
  } catch (cause) {
    if (!isLibSignalError(cause)) throw cause;
    throw new SecureChatError(SecureChatErrorCode.DecryptionFailed, 'the sealed message does not open', { cause });
  }
  const certificate = usmc.senderCertificate();
  if (!certificate.validate(trustRoot, now)) {
    const expired = certificate.expiration() <= now;
    throw new SecureChatError(
      SecureChatErrorCode.InvalidSenderCertificate,
      expired ? 'the sender certificate expired' : 'the sender certificate is not signed under the trust root',
    );
  }
  const senderAccountId = certificate.senderUuid();
  const senderDevice = certificate.senderDeviceId();
  if (!UUID_PATTERN.test(senderAccountId) || !Number.isInteger(senderDevice) || senderDevice < DEVICE_ID_MIN || senderDevice > DEVICE_ID_MAX) {
    throw new SecureChatError(SecureChatErrorCode.InvalidSenderCertificate, 'the sender certificate names no account id and device');
  }
  return {
    senderAccountId: senderAccountId.toLowerCase(),
    senderDevice: asDeviceId(senderDevice),
    certificateKey: certificate.key(),
    msgType: usmc.msgType(),
    contents: usmc.contents(),
    groupId: usmc.groupId(),
  };
}

/**
 * Sender keys and the one-upload group send, all libsignal: a device's
 * sender key per distribution id (`SenderKeyDistributionMessage.create`,
 * `processSenderKeyDistributionMessage`), `groupEncrypt`/`groupDecrypt`,
 * and the multi-recipient sealed-sender message that carries one
 * `SenderKey` ciphertext to every member device
 * (`sealedSenderMultiRecipientEncrypt` over an
 * `UnidentifiedSenderMessageContent` with the sender certificate and the
 * group id). Nothing here is our own cryptography.
 */

import {
  CiphertextMessageType,
  ContentHint,
  ErrorCode,
  SenderKeyDistributionMessage,
  UnidentifiedSenderMessageContent,
  groupDecrypt,
  groupEncrypt,
  processSenderKeyDistributionMessage,
  sealedSenderMultiRecipientEncrypt,
  type IdentityKeyStore,
  type ProtocolAddress,
  type SenderCertificate,
  type SenderKeyStore,
  type SessionStore,
} from '@signalapp/libsignal-client';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { isLibSignalError } from '../session/libsignal-errors.js';

/**
 * This device's distribution message for `distributionId`, creating the
 * sender key when it has none yet (libsignal keeps it in `store` under
 * (`self`, `distributionId`)). It carries the chain from its current
 * iteration on: a member given it cannot read what was sent before.
 */
export async function createDistribution(self: ProtocolAddress, distributionId: string, store: SenderKeyStore): Promise<Uint8Array<ArrayBuffer>> {
  const message = await SenderKeyDistributionMessage.create(self, distributionId, store);
  return message.serialize();
}

/**
 * Keeps `sender`'s sender key from its distribution message.
 * @throws {SecureChatError} `DecryptionFailed` when libsignal refuses it.
 */
export async function acceptDistribution(sender: ProtocolAddress, distribution: Uint8Array, store: SenderKeyStore): Promise<void> {
  try {
    await processSenderKeyDistributionMessage(sender, SenderKeyDistributionMessage.deserialize(new Uint8Array(distribution)), store);
  } catch (cause) {
    if (!isLibSignalError(cause)) throw cause;
    throw new SecureChatError(SecureChatErrorCode.DecryptionFailed, `the sender key of ${sender.name()} device ${sender.deviceId()} was refused`, {
      cause,
    });
  }
}

/** A libsignal SenderKey ciphertext of `plaintext` under this device's key for `distributionId`. */
export async function encryptForGroup(self: ProtocolAddress, distributionId: string, store: SenderKeyStore, plaintext: Uint8Array<ArrayBuffer>) {
  try {
    return await groupEncrypt(self, distributionId, store, plaintext);
  } catch (cause) {
    if (!isLibSignalError(cause)) throw cause;
    throw new SecureChatError(SecureChatErrorCode.EncryptionFailed, 'group encryption failed', { cause });
  }
}

/**
 * A SenderKey message this install has decrypted before (libsignal's
 * `DuplicatedMessage`: its iteration was used up): a copy, to be acked and
 * dropped without a word, as a repeated 1:1 message is.
 */
export class DuplicateGroupMessage extends Error {
  override readonly name = 'DuplicateGroupMessage';
}

/**
 * The plaintext of `sender`'s SenderKey message.
 * @throws {DuplicateGroupMessage} for a message decrypted before.
 * @throws {SecureChatError} `DecryptionFailed` when this install has no sender key of that sender and
 *   distribution id (never sent one, or sent only one it was not given: a removed member), or the
 *   message does not verify or decrypt.
 */
export async function decryptFromGroup(sender: ProtocolAddress, store: SenderKeyStore, ciphertext: Uint8Array): Promise<Uint8Array<ArrayBuffer>> {
  try {
    return await groupDecrypt(sender, store, new Uint8Array(ciphertext));
  } catch (cause) {
    if (!isLibSignalError(cause)) throw cause;
    if (cause.is(ErrorCode.DuplicatedMessage)) {
      throw new DuplicateGroupMessage(`a group message of ${sender.name()} device ${sender.deviceId()} was decrypted before`, { cause });
    }
    throw new SecureChatError(SecureChatErrorCode.DecryptionFailed, `a group message of ${sender.name()} device ${sender.deviceId()} did not decrypt`, {
      cause,
    });
  }
}

export interface GroupSeal {
  /** What `encryptForGroup` returned. */
  ciphertext: Awaited<ReturnType<typeof encryptForGroup>>;
  certificate: SenderCertificate;
  /** 32 bytes; the USMC's group id, so that a recipient knows which group's sender key to use. */
  groupId: Uint8Array;
  /** Every recipient device, addressed `ProtocolAddress.new(accountId, deviceId)` as libsignal requires. */
  recipients: ProtocolAddress[];
  /** Stores that answer for account-id addresses (sessions and identities are kept under usernames). */
  identityStore: IdentityKeyStore;
  sessionStore: SessionStore;
}

/**
 * One Sealed Sender v2 message for every recipient device: the relay
 * splits it (`SealedSenderMultiRecipientMessage`) and learns the recipients,
 * not the sender. Each recipient needs a session with this install (its
 * registration id and identity key are taken from it).
 * @throws {SecureChatError} `EncryptionFailed`.
 */
export async function sealForGroup(seal: GroupSeal): Promise<Uint8Array<ArrayBuffer>> {
  if (seal.ciphertext.type() !== CiphertextMessageType.SenderKey) {
    throw new SecureChatError(SecureChatErrorCode.EncryptionFailed, 'a group send carries a SenderKey message');
  }
  try {
    const content = UnidentifiedSenderMessageContent.new(seal.ciphertext, seal.certificate, ContentHint.Default, new Uint8Array(seal.groupId));
    return await sealedSenderMultiRecipientEncrypt({
      content,
      recipients: seal.recipients,
      identityStore: seal.identityStore,
      sessionStore: seal.sessionStore,
    });
  } catch (cause) {
    if (!isLibSignalError(cause)) throw cause;
    throw new SecureChatError(SecureChatErrorCode.EncryptionFailed, 'the multi-recipient sealed message could not be made', { cause });
  }
}

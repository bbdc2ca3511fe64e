import {
  ContentHint,
  ErrorCode as LibSignalErrorCode,
  ProtocolAddress,
  UnidentifiedSenderMessageContent,
  sealedSenderEncrypt,
  signalEncrypt,
  type SenderCertificate,
} from '@signalapp/libsignal-client';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import type { DeviceId } from '../ids.js';
import { isLibSignalError } from '../session/libsignal-errors.js';
import { withStoreFailures } from '../session/store-failures.js';
import type { SecureChatStores } from '../stores/stores.js';

/**
 * Encrypts `plaintext` on the session with `username`'s device (as
 * `PeerSessions.encrypt`) and seals the result with this device's sender
 * certificate (libsignal `UnidentifiedSenderMessageContent` +
 * `sealedSenderEncrypt`): the relay sees neither sender nor message type.
 * Run in the peer's serial queue, with the transaction's stores.
 * @throws {SecureChatError} `IdentityChanged` (the session's key is not trusted for sending), `EncryptionFailed`;
 *   a store's failure.
 */
export function sealFor(
  username: string,
  deviceId: DeviceId,
  localAddress: ProtocolAddress,
  plaintext: Uint8Array<ArrayBuffer>,
  certificate: SenderCertificate,
  stores: SecureChatStores,
): Promise<Uint8Array<ArrayBuffer>> {
  const address = ProtocolAddress.new(username, deviceId);
  return withStoreFailures(stores, async ({ session, identity }) => {
    try {
      const message = await signalEncrypt(plaintext, address, localAddress, session, identity);
      const content = UnidentifiedSenderMessageContent.new(message, certificate, ContentHint.Default, null);
      return await sealedSenderEncrypt(content, address, identity);
    } catch (cause) {
      if (isLibSignalError(cause) && cause.is(LibSignalErrorCode.UntrustedIdentity)) {
        throw new SecureChatError(SecureChatErrorCode.IdentityChanged, `identity key of ${username} changed`, { cause });
      }
      throw new SecureChatError(SecureChatErrorCode.EncryptionFailed, `sealed encryption for ${username} failed`, { cause });
    }
  });
}

import {
  CiphertextMessageType,
  ErrorCode as LibSignalErrorCode,
  KEMPublicKey,
  PreKeyBundle,
  PreKeySignalMessage,
  ProtocolAddress,
  PublicKey,
  SignalMessage,
  processPreKeyBundle,
  signalDecrypt,
  signalDecryptPreKey,
  signalEncrypt,
} from '@signalapp/libsignal-client';
import type { PreKeyBundleResponse } from '@chat/protocol';
import { EnvelopeType } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { asDeviceId, type DeviceId } from '../ids.js';
import type { SecureChatStores } from '../stores/stores.js';
import { isLibSignalError } from './libsignal-errors.js';
import { KeyedSerialQueue } from './serial-queue.js';
import { withStoreFailures } from './store-failures.js';

const bytesOf = (value: string) => new Uint8Array(Buffer.from(value, 'base64'));

export interface DeviceCiphertext {
  deviceId: DeviceId;
  type: EnvelopeType;
  ciphertext: Uint8Array<ArrayBuffer>;
}

/**
 * The Double Ratchet sessions with every peer. Every call that reads or
 * advances a session must run inside `withPeer(username, ...)`, which runs
 * the tasks of one peer one at a time in order, so concurrent sends and
 * receives never race the ratchet state in the stores.
 *
 * Each method takes the stores to use, defaulting to the client's: inside a
 * store transaction, pass the transaction's stores. A store failure during a
 * libsignal call is thrown as the store's error (see `withStoreFailures`).
 */
export class PeerSessions {
  private readonly queue = new KeyedSerialQueue();

  constructor(
    private readonly stores: SecureChatStores,
    private readonly localAddress: () => ProtocolAddress,
  ) {}

  withPeer<T>(username: string, task: () => Promise<T>): Promise<T> {
    return this.queue.run(username, task);
  }

  async hasSession(username: string, deviceId: DeviceId, stores: SecureChatStores = this.stores): Promise<boolean> {
    const record = await stores.session.getSession(ProtocolAddress.new(username, deviceId));
    return record?.hasCurrentState() ?? false;
  }

  /**
   * Opens a session (PQXDH initiator side) with each device of the bundle
   * that has none yet, and returns every device of the bundle.
   * @throws {SecureChatError} `InvalidPreKeyBundle` or `UntrustedIdentity`; a store's failure.
   */
  async processBundle(bundle: PreKeyBundleResponse, stores: SecureChatStores = this.stores): Promise<DeviceId[]> {
    const devices: DeviceId[] = [];
    for (const device of bundle.devices) {
      const deviceId = asDeviceId(device.deviceId);
      devices.push(deviceId);
      if (await this.hasSession(bundle.username, deviceId, stores)) continue;
      await withStoreFailures(stores, (watched) => this.processDeviceBundle(bundle, device, watched));
    }
    return devices;
  }

  private async processDeviceBundle(
    bundle: PreKeyBundleResponse,
    device: PreKeyBundleResponse['devices'][number],
    stores: SecureChatStores,
  ): Promise<void> {
    const deviceId = asDeviceId(device.deviceId);
    try {
      const preKeyBundle = PreKeyBundle.new(
        device.registrationId,
        device.deviceId,
        device.preKey?.keyId ?? null,
        device.preKey ? PublicKey.deserialize(bytesOf(device.preKey.publicKey)) : null,
        device.signedPreKey.keyId,
        PublicKey.deserialize(bytesOf(device.signedPreKey.publicKey)),
        bytesOf(device.signedPreKey.signature),
        PublicKey.deserialize(bytesOf(bundle.identityKey)),
        device.kyberPreKey.keyId,
        KEMPublicKey.deserialize(bytesOf(device.kyberPreKey.publicKey)),
        bytesOf(device.kyberPreKey.signature),
      );
      await processPreKeyBundle(preKeyBundle, ProtocolAddress.new(bundle.username, deviceId), this.localAddress(), stores.session, stores.identity);
    } catch (cause) {
      if (isLibSignalError(cause) && cause.is(LibSignalErrorCode.UntrustedIdentity)) {
        throw new SecureChatError(SecureChatErrorCode.UntrustedIdentity, `identity key of ${bundle.username} changed`, { cause });
      }
      throw new SecureChatError(
        SecureChatErrorCode.InvalidPreKeyBundle,
        `prekey bundle of ${bundle.username} device ${deviceId} was refused`,
        { cause },
      );
    }
  }

  /** @throws {SecureChatError} `UntrustedIdentity` or `EncryptionFailed`; a store's failure. */
  async encrypt(
    username: string,
    deviceId: DeviceId,
    plaintext: Uint8Array<ArrayBuffer>,
    stores: SecureChatStores = this.stores,
  ): Promise<DeviceCiphertext> {
    return withStoreFailures(stores, async ({ session, identity }) => {
      try {
        const message = await signalEncrypt(plaintext, ProtocolAddress.new(username, deviceId), this.localAddress(), session, identity);
        const type = message.type() === CiphertextMessageType.PreKey ? EnvelopeType.PreKey : EnvelopeType.Signal;
        return { deviceId, type, ciphertext: message.serialize() };
      } catch (cause) {
        if (isLibSignalError(cause) && cause.is(LibSignalErrorCode.UntrustedIdentity)) {
          throw new SecureChatError(SecureChatErrorCode.UntrustedIdentity, `identity key of ${username} changed`, { cause });
        }
        throw new SecureChatError(SecureChatErrorCode.EncryptionFailed, `encryption for ${username} failed`, { cause });
      }
    });
  }

  /**
   * Decrypts one message; a PreKey message opens the session (PQXDH
   * responder side) and consumes the one-time prekeys it names.
   * Throws libsignal's errors unchanged, and a store's failure as the store's
   * `SecureChatError`, so the caller can tell a message that can never
   * decrypt from a store failure.
   */
  async decrypt(
    username: string,
    deviceId: DeviceId,
    type: EnvelopeType,
    ciphertext: Uint8Array<ArrayBuffer>,
    stores: SecureChatStores = this.stores,
  ): Promise<Uint8Array<ArrayBuffer>> {
    const address = ProtocolAddress.new(username, deviceId);
    return withStoreFailures(stores, async ({ session, identity, preKey, signedPreKey, kyberPreKey }) => {
      if (type === EnvelopeType.PreKey) {
        const message = PreKeySignalMessage.deserialize(ciphertext);
        return signalDecryptPreKey(message, address, this.localAddress(), session, identity, preKey, signedPreKey, kyberPreKey);
      }
      return signalDecrypt(SignalMessage.deserialize(ciphertext), address, this.localAddress(), session, identity);
    });
  }
}

import {
  CiphertextMessageType,
  ErrorCode as LibSignalErrorCode,
  KEMPublicKey,
  PreKeyBundle,
  PreKeySignalMessage,
  ProtocolAddress,
  PublicKey,
  SessionRecord,
  SessionStore,
  SignalMessage,
  processPreKeyBundle,
  signalDecrypt,
  signalDecryptPreKey,
  signalEncrypt,
} from '@signalapp/libsignal-client';
import type { PreKeyBundleResponse } from '@chat/protocol';
import { EnvelopeType, REGISTRATION_ID_MAX, REGISTRATION_ID_MIN } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { asDeviceId, type DeviceId } from '../ids.js';
import type { SecureChatStores } from '../stores/stores.js';
import { isLibSignalError } from './libsignal-errors.js';
import { KeyedSerialQueue } from './serial-queue.js';
import { withStoreFailures } from './store-failures.js';

const bytesOf = (value: string) => new Uint8Array(Buffer.from(value, 'base64'));

/** Why a message did not decrypt. */
export enum DecryptFailureKind {
  /** Not a message libsignal can parse. */
  Malformed = 'malformed',
  /** Decrypted before (an old counter), or a replayed PreKey message. */
  Duplicate = 'duplicate',
  /** A Signal message for a session this install does not have. */
  NoSession = 'no-session',
  /** No state of the session decrypts it (bad MAC, stale or damaged session), or libsignal refused it otherwise. */
  InvalidMessage = 'invalid-message',
  /** A PreKey message naming a prekey this install does not have. */
  UnknownPreKey = 'unknown-prekey',
  UntrustedIdentity = 'untrusted-identity',
}

/** Failures a new session can fix: the sender is asked to start over (session repair). */
const REPAIRABLE = new Set([DecryptFailureKind.NoSession, DecryptFailureKind.InvalidMessage, DecryptFailureKind.UnknownPreKey]);

/** libsignal refused a message; `kind` says why. */
export class DecryptFailure extends Error {
  override readonly name = 'DecryptFailure';

  constructor(
    readonly kind: DecryptFailureKind,
    options: { cause: unknown },
  ) {
    super(`the message did not decrypt (${kind})`, options);
  }

  get repairable(): boolean {
    return REPAIRABLE.has(this.kind);
  }
}

export interface DeviceCiphertext {
  deviceId: DeviceId;
  type: EnvelopeType;
  ciphertext: Uint8Array<ArrayBuffer>;
  /** The registration id the session names for the device (the relay checks it: 410 when stale). */
  registrationId: number;
}

/**
 * The session store as libsignal's encrypt sees it, keeping the record it
 * saves: the registration id is read from it instead of reading back and
 * deserializing the session just written (issue #9, SDK overhead).
 */
class SavedSessionRecorder extends SessionStore {
  saved: SessionRecord | null = null;

  constructor(private readonly inner: SessionStore) {
    super();
  }

  saveSession(address: ProtocolAddress, record: SessionRecord): Promise<void> {
    this.saved = record;
    return this.inner.saveSession(address, record);
  }

  getSession(address: ProtocolAddress): Promise<SessionRecord | null> {
    return this.inner.getSession(address);
  }

  getExistingSessions(addresses: ProtocolAddress[]): Promise<SessionRecord[]> {
    return this.inner.getExistingSessions(addresses);
  }
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
   * @throws {SecureChatError} `InvalidPreKeyBundle` or `IdentityChanged` (the identity store does not trust the key); a store's failure.
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

  /**
   * Makes a new session with one device of the bundle even if one exists
   * (PQXDH initiator side). libsignal keeps the replaced state in the record
   * as an archived state, so messages still in flight on it decrypt.
   * @throws {SecureChatError} `InvalidPreKeyBundle` (also when the bundle lacks the device) or
   *   `IdentityChanged`; a store's failure.
   */
  async replaceSession(bundle: PreKeyBundleResponse, deviceId: DeviceId, stores: SecureChatStores = this.stores): Promise<void> {
    const device = bundle.devices.find((d) => d.deviceId === deviceId);
    if (!device) {
      throw new SecureChatError(SecureChatErrorCode.InvalidPreKeyBundle, `the bundle of ${bundle.username} has no device ${deviceId}`);
    }
    await withStoreFailures(stores, (watched) => this.processDeviceBundle(bundle, device, watched));
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
        throw new SecureChatError(SecureChatErrorCode.IdentityChanged, `identity key of ${bundle.username} changed`, { cause });
      }
      throw new SecureChatError(
        SecureChatErrorCode.InvalidPreKeyBundle,
        `prekey bundle of ${bundle.username} device ${deviceId} was refused`,
        { cause },
      );
    }
  }

  /** @throws {SecureChatError} `IdentityChanged` (the session's key is not trusted for sending) or `EncryptionFailed`; a store's failure. */
  async encrypt(
    username: string,
    deviceId: DeviceId,
    plaintext: Uint8Array<ArrayBuffer>,
    stores: SecureChatStores = this.stores,
  ): Promise<DeviceCiphertext> {
    return withStoreFailures(stores, async ({ session, identity }) => {
      try {
        const address = ProtocolAddress.new(username, deviceId);
        const recorder = new SavedSessionRecorder(session);
        const message = await signalEncrypt(plaintext, address, this.localAddress(), recorder, identity);
        const type = message.type() === CiphertextMessageType.PreKey ? EnvelopeType.PreKey : EnvelopeType.Signal;
        const record = recorder.saved ?? (await session.getSession(address));
        if (!record) throw new Error(`libsignal encrypted for ${username} device ${deviceId} without a session`);
        return { deviceId, type, ciphertext: message.serialize(), registrationId: record.remoteRegistrationId() };
      } catch (cause) {
        if (isLibSignalError(cause) && cause.is(LibSignalErrorCode.UntrustedIdentity)) {
          throw new SecureChatError(SecureChatErrorCode.IdentityChanged, `identity key of ${username} changed`, { cause });
        }
        throw new SecureChatError(SecureChatErrorCode.EncryptionFailed, `encryption for ${username} failed`, { cause });
      }
    });
  }

  /**
   * Decrypts one message; a PreKey message opens the session (PQXDH
   * responder side) and consumes the one-time prekeys it names.
   * @throws {DecryptFailure} when libsignal refuses the message, saying why.
   * @throws {SecureChatError} a store's failure (never taken for a refused message).
   */
  async decrypt(
    username: string,
    deviceId: DeviceId,
    type: EnvelopeType,
    ciphertext: Uint8Array<ArrayBuffer>,
    stores: SecureChatStores = this.stores,
  ): Promise<Uint8Array<ArrayBuffer>> {
    const address = ProtocolAddress.new(username, deviceId);
    let message: PreKeySignalMessage | SignalMessage;
    try {
      message = type === EnvelopeType.PreKey ? PreKeySignalMessage.deserialize(ciphertext) : SignalMessage.deserialize(ciphertext);
    } catch (cause) {
      if (isLibSignalError(cause)) throw new DecryptFailure(DecryptFailureKind.Malformed, { cause });
      throw cause;
    }
    // libsignal does not authenticate a PreKey message's registration id, and the session keeps it
    // for every later send: one outside the protocol's range (a tag bit flipped in transit reads as 0)
    // would make every reply a VALIDATION_FAILED.
    if (message instanceof PreKeySignalMessage) {
      const registrationId = message.registrationId();
      if (registrationId < REGISTRATION_ID_MIN || registrationId > REGISTRATION_ID_MAX) {
        throw new DecryptFailure(DecryptFailureKind.Malformed, { cause: new Error(`registration id ${registrationId} is out of range`) });
      }
    }
    const refusals: SecureChatError[] = [];
    return withStoreFailures(
      stores,
      async ({ session, identity, preKey, signedPreKey, kyberPreKey }) => {
        try {
          if (message instanceof PreKeySignalMessage) {
            return await signalDecryptPreKey(message, address, this.localAddress(), session, identity, preKey, signedPreKey, kyberPreKey);
          }
          return await signalDecrypt(message, address, this.localAddress(), session, identity);
        } catch (cause) {
          if (!isLibSignalError(cause)) throw cause;
          const refused = (code: SecureChatErrorCode) => refusals.some((refusal) => refusal.is(code));
          let kind = DecryptFailureKind.InvalidMessage;
          if (cause.is(LibSignalErrorCode.DuplicatedMessage) || refused(SecureChatErrorCode.PreKeyReused)) {
            kind = DecryptFailureKind.Duplicate;
          } else if (cause.is(LibSignalErrorCode.UntrustedIdentity)) {
            kind = DecryptFailureKind.UntrustedIdentity;
          } else if (type === EnvelopeType.PreKey && refused(SecureChatErrorCode.RecordNotFound)) {
            kind = DecryptFailureKind.UnknownPreKey;
          } else if (type === EnvelopeType.Signal && !(await session.getSession(address))?.hasCurrentState()) {
            kind = DecryptFailureKind.NoSession;
          }
          throw new DecryptFailure(kind, { cause });
        }
      },
      (refusal) => refusals.push(refusal),
    );
  }
}

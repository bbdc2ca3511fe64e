/**
 * Real libsignal keys for relay e2e specs: a device's private keys, the
 * `UploadKeysRequest` of their public halves, and in-memory stores to build
 * and answer a session (X3DH / PQXDH) from a bundle the relay handed out.
 */
import {
  IdentityChange,
  IdentityKeyPair,
  IdentityKeyStore,
  KEMKeyPair,
  KyberPreKeyRecord,
  KyberPreKeyStore,
  PreKeyBundle,
  PreKeyRecord,
  PreKeyStore,
  PrivateKey,
  ProtocolAddress,
  PublicKey,
  KEMPublicKey,
  SessionRecord,
  SessionStore,
  SignedPreKeyRecord,
  SignedPreKeyStore,
  type Direction,
} from '@signalapp/libsignal-client';
import type { DeviceBundle, UploadKeysRequest } from '@chat/protocol';

const b64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64');
const bytes = (base64: string): Uint8Array<ArrayBuffer> => new Uint8Array(Buffer.from(base64, 'base64'));

export interface DeviceKeyOptions {
  preKeys?: number;
  kyberPreKeys?: number;
  /** First one-time key id (EC and Kyber); the last-resort Kyber key takes an id below it. */
  firstKeyId?: number;
  /** Another batch of an existing device: its identity and registration id (default: new ones). */
  identity?: IdentityKeyPair;
  registrationId?: number;
  /** Id of the signed prekey (default 1); a rotation uses a new one. */
  signedPreKeyId?: number;
}

/** A device's key material, private halves included (they never leave the test). */
export class DeviceKeys {
  readonly identity: IdentityKeyPair;
  readonly registrationId: number;
  readonly signedPreKey: SignedPreKeyRecord;
  readonly kyberLastResort: KyberPreKeyRecord;
  readonly preKeys: PreKeyRecord[];
  readonly kyberPreKeys: KyberPreKeyRecord[];

  constructor(options: DeviceKeyOptions = {}) {
    this.identity = options.identity ?? IdentityKeyPair.generate();
    this.registrationId = options.registrationId ?? 1 + Math.floor(Math.random() * 0x3ffe);
    const first = options.firstKeyId ?? 100;
    const signedKey = PrivateKey.generate();
    this.signedPreKey = SignedPreKeyRecord.new(
      options.signedPreKeyId ?? 1,
      Date.now(),
      signedKey.getPublicKey(),
      signedKey,
      this.identity.privateKey.sign(signedKey.getPublicKey().serialize()),
    );
    this.kyberLastResort = this.kyberRecord(first - 1);
    this.preKeys = Array.from({ length: options.preKeys ?? 0 }, (_, i) => {
      const key = PrivateKey.generate();
      return PreKeyRecord.new(first + i, key.getPublicKey(), key);
    });
    this.kyberPreKeys = Array.from({ length: options.kyberPreKeys ?? 0 }, (_, i) => this.kyberRecord(first + i));
  }

  kyberRecord(id: number): KyberPreKeyRecord {
    const pair = KEMKeyPair.generate();
    return KyberPreKeyRecord.new(id, Date.now(), pair, this.identity.privateKey.sign(pair.getPublicKey().serialize()));
  }

  /** The full first upload: identity, signed prekey, last resort and every one-time key. */
  uploadRequest(): UploadKeysRequest {
    return {
      identityKey: b64(this.identity.publicKey.serialize()),
      registrationId: this.registrationId,
      signedPreKey: {
        keyId: this.signedPreKey.id(),
        publicKey: b64(this.signedPreKey.publicKey().serialize()),
        signature: b64(this.signedPreKey.signature()),
      },
      kyberLastResortPreKey: kyberDto(this.kyberLastResort),
      preKeys: this.preKeys.map((key) => ({ keyId: key.id(), publicKey: b64(key.publicKey().serialize()) })),
      kyberPreKeys: this.kyberPreKeys.map(kyberDto),
    };
  }

  /** Stores holding this device's private keys, to answer a PreKey message. */
  stores(): MemoryStores {
    const stores = new MemoryStores(this.identity, this.registrationId);
    void stores.signed.saveSignedPreKey(this.signedPreKey.id(), this.signedPreKey);
    void stores.kyber.saveKyberPreKey(this.kyberLastResort.id(), this.kyberLastResort);
    for (const key of this.preKeys) void stores.preKeys.savePreKey(key.id(), key);
    for (const key of this.kyberPreKeys) void stores.kyber.saveKyberPreKey(key.id(), key);
    return stores;
  }
}

function kyberDto(record: KyberPreKeyRecord) {
  return { keyId: record.id(), publicKey: b64(record.publicKey().serialize()), signature: b64(record.signature()) };
}

/** The libsignal `PreKeyBundle` of one device of a relay bundle response. */
export function preKeyBundleOf(identityKey: string, device: DeviceBundle): PreKeyBundle {
  return PreKeyBundle.new(
    device.registrationId,
    device.deviceId,
    device.preKey?.keyId ?? null,
    device.preKey ? PublicKey.deserialize(bytes(device.preKey.publicKey)) : null,
    device.signedPreKey.keyId,
    PublicKey.deserialize(bytes(device.signedPreKey.publicKey)),
    bytes(device.signedPreKey.signature),
    PublicKey.deserialize(bytes(identityKey)),
    device.kyberPreKey.keyId,
    KEMPublicKey.deserialize(bytes(device.kyberPreKey.publicKey)),
    bytes(device.kyberPreKey.signature),
  );
}

/** libsignal's stores in memory, keeping serialized records as the SDK does. */
export class MemoryStores {
  readonly sessions: SessionStore;
  readonly identities: IdentityKeyStore;
  readonly preKeys: PreKeyStore;
  readonly signed: SignedPreKeyStore;
  readonly kyber: KyberPreKeyStore;

  constructor(identity: IdentityKeyPair, registrationId: number) {
    const sessions = new Map<string, Uint8Array<ArrayBuffer>>();
    const identities = new Map<string, Uint8Array<ArrayBuffer>>();
    const preKeys = new Map<number, Uint8Array<ArrayBuffer>>();
    const signed = new Map<number, Uint8Array<ArrayBuffer>>();
    const kyber = new Map<number, Uint8Array<ArrayBuffer>>();
    const need = <T>(value: T | undefined, what: string): T => {
      if (value === undefined) throw new Error(`no ${what}`);
      return value;
    };
    this.sessions = new (class extends SessionStore {
      async saveSession(address: ProtocolAddress, record: SessionRecord): Promise<void> {
        sessions.set(address.toString(), record.serialize());
      }
      async getSession(address: ProtocolAddress): Promise<SessionRecord | null> {
        const stored = sessions.get(address.toString());
        return stored ? SessionRecord.deserialize(stored) : null;
      }
      async getExistingSessions(addresses: ProtocolAddress[]): Promise<SessionRecord[]> {
        return addresses.map((address) => SessionRecord.deserialize(need(sessions.get(address.toString()), 'session')));
      }
    })();
    this.identities = new (class extends IdentityKeyStore {
      async getIdentityKey(): Promise<PrivateKey> {
        return identity.privateKey;
      }
      async getLocalRegistrationId(): Promise<number> {
        return registrationId;
      }
      async saveIdentity(address: ProtocolAddress, key: PublicKey): Promise<IdentityChange> {
        const previous = identities.get(address.toString());
        identities.set(address.toString(), key.serialize());
        return previous && !Buffer.from(previous).equals(key.serialize())
          ? IdentityChange.ReplacedExisting
          : IdentityChange.NewOrUnchanged;
      }
      async isTrustedIdentity(address: ProtocolAddress, key: PublicKey, _direction: Direction): Promise<boolean> {
        const known = identities.get(address.toString());
        return !known || Buffer.from(known).equals(key.serialize());
      }
      async getIdentity(address: ProtocolAddress): Promise<PublicKey | null> {
        const known = identities.get(address.toString());
        return known ? PublicKey.deserialize(known) : null;
      }
    })();
    this.preKeys = new (class extends PreKeyStore {
      async savePreKey(id: number, record: PreKeyRecord): Promise<void> {
        preKeys.set(id, record.serialize());
      }
      async getPreKey(id: number): Promise<PreKeyRecord> {
        return PreKeyRecord.deserialize(need(preKeys.get(id), `prekey ${id}`));
      }
      async removePreKey(id: number): Promise<void> {
        preKeys.delete(id);
      }
    })();
    this.signed = new (class extends SignedPreKeyStore {
      async saveSignedPreKey(id: number, record: SignedPreKeyRecord): Promise<void> {
        signed.set(id, record.serialize());
      }
      async getSignedPreKey(id: number): Promise<SignedPreKeyRecord> {
        return SignedPreKeyRecord.deserialize(need(signed.get(id), `signed prekey ${id}`));
      }
    })();
    this.kyber = new (class extends KyberPreKeyStore {
      async saveKyberPreKey(id: number, record: KyberPreKeyRecord): Promise<void> {
        kyber.set(id, record.serialize());
      }
      async getKyberPreKey(id: number): Promise<KyberPreKeyRecord> {
        return KyberPreKeyRecord.deserialize(need(kyber.get(id), `kyber prekey ${id}`));
      }
      async markKyberPreKeyUsed(): Promise<void> {
        return undefined;
      }
    })();
  }
}

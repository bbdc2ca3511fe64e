import {
  Direction,
  IdentityChange,
  IdentityKeyPair,
  KyberPreKeyRecord,
  PreKeyRecord,
  PreKeyStore,
  PrivateKey,
  ProtocolAddress,
  PublicKey,
  SenderKeyRecord,
  SenderKeyStore,
  SessionRecord,
  SessionStore,
  SignedPreKeyRecord,
  SignedPreKeyStore,
  type Uuid,
} from '@signalapp/libsignal-client';
import { KEY_ID_MAX } from '@chat/protocol';
import type { DeviceId } from '../ids.js';
import { asRegistrationId } from '../ids.js';
import {
  KeyIdKind,
  SecureChatIdentityKeyStore,
  SecureChatKyberPreKeyStore,
  SecureChatMetadataStore,
  type AccountRecord,
  type LocalIdentity,
  type SecureChatStores,
  type TrustedIdentity,
} from './stores.js';

// Memory stores keep `serialize()` bytes, never live records, so that every
// read yields a fresh object and nothing depends on object identity
// (libsignal `test/protocol/TestStores.ts`). They lose everything on exit.

const addressKey = (address: ProtocolAddress) => `${address.name()}.${address.deviceId()}`;

export class MemorySessionStore extends SessionStore {
  private readonly sessions = new Map<string, Uint8Array<ArrayBuffer>>();

  async saveSession(address: ProtocolAddress, record: SessionRecord): Promise<void> {
    this.sessions.set(addressKey(address), record.serialize());
  }

  async getSession(address: ProtocolAddress): Promise<SessionRecord | null> {
    const bytes = this.sessions.get(addressKey(address));
    return bytes ? SessionRecord.deserialize(bytes) : null;
  }

  async getExistingSessions(addresses: ProtocolAddress[]): Promise<SessionRecord[]> {
    return addresses.map((address) => {
      const bytes = this.sessions.get(addressKey(address));
      if (!bytes) throw new Error(`no session for ${addressKey(address)}`);
      return SessionRecord.deserialize(bytes);
    });
  }
}

/**
 * Trust on first use for sending; receiving always trusts and records the key
 * (Signal's policy: a changed key never blocks incoming messages).
 * Identities are per account, so they are keyed by name, not device.
 */
export class MemoryIdentityKeyStore extends SecureChatIdentityKeyStore {
  private local: { keyPair: Uint8Array<ArrayBuffer>; registrationId: number } | null = null;
  private readonly remote = new Map<string, Uint8Array<ArrayBuffer>>();

  async getLocalIdentity(): Promise<LocalIdentity | null> {
    if (!this.local) return null;
    return {
      identityKeyPair: IdentityKeyPair.deserialize(this.local.keyPair),
      registrationId: asRegistrationId(this.local.registrationId),
    };
  }

  async saveLocalIdentity(identity: LocalIdentity): Promise<void> {
    this.local = { keyPair: identity.identityKeyPair.serialize(), registrationId: identity.registrationId };
  }

  async getIdentityKey(): Promise<PrivateKey> {
    if (!this.local) throw new Error('no local identity');
    return IdentityKeyPair.deserialize(this.local.keyPair).privateKey;
  }

  async getLocalRegistrationId(): Promise<number> {
    if (!this.local) throw new Error('no local identity');
    return this.local.registrationId;
  }

  async saveIdentity(address: ProtocolAddress, key: PublicKey): Promise<IdentityChange> {
    const previous = this.remote.get(address.name());
    this.remote.set(address.name(), key.serialize());
    return previous && !PublicKey.deserialize(previous).equals(key)
      ? IdentityChange.ReplacedExisting
      : IdentityChange.NewOrUnchanged;
  }

  async isTrustedIdentity(address: ProtocolAddress, key: PublicKey, direction: Direction): Promise<boolean> {
    if (direction === Direction.Receiving) return true;
    const known = this.remote.get(address.name());
    return !known || PublicKey.deserialize(known).equals(key);
  }

  async getIdentity(address: ProtocolAddress): Promise<PublicKey | null> {
    const known = this.remote.get(address.name());
    return known ? PublicKey.deserialize(known) : null;
  }

  async getTrustedIdentities(): Promise<TrustedIdentity[]> {
    return [...this.remote].map(([username, key]) => ({ username, identityKey: PublicKey.deserialize(key) }));
  }
}

export class MemoryPreKeyStore extends PreKeyStore {
  private readonly preKeys = new Map<number, Uint8Array<ArrayBuffer>>();

  async savePreKey(id: number, record: PreKeyRecord): Promise<void> {
    this.preKeys.set(id, record.serialize());
  }

  async getPreKey(id: number): Promise<PreKeyRecord> {
    const bytes = this.preKeys.get(id);
    if (!bytes) throw new Error(`no prekey ${id}`);
    return PreKeyRecord.deserialize(bytes);
  }

  /** One-time prekeys are deleted once a session used them (X3DH). */
  async removePreKey(id: number): Promise<void> {
    this.preKeys.delete(id);
  }
}

export class MemorySignedPreKeyStore extends SignedPreKeyStore {
  private readonly signedPreKeys = new Map<number, Uint8Array<ArrayBuffer>>();

  async saveSignedPreKey(id: number, record: SignedPreKeyRecord): Promise<void> {
    this.signedPreKeys.set(id, record.serialize());
  }

  async getSignedPreKey(id: number): Promise<SignedPreKeyRecord> {
    const bytes = this.signedPreKeys.get(id);
    if (!bytes) throw new Error(`no signed prekey ${id}`);
    return SignedPreKeyRecord.deserialize(bytes);
  }
}

export class MemoryKyberPreKeyStore extends SecureChatKyberPreKeyStore {
  private readonly kyberPreKeys = new Map<number, { record: Uint8Array<ArrayBuffer>; lastResort: boolean }>();
  /** (last-resort key, signed prekey, base key) triples already used, to refuse a replayed PreKey message. */
  private readonly usedLastResort = new Set<string>();

  async saveKyberPreKey(id: number, record: KyberPreKeyRecord): Promise<void> {
    this.kyberPreKeys.set(id, { record: record.serialize(), lastResort: false });
  }

  async saveLastResortKyberPreKey(id: number, record: KyberPreKeyRecord): Promise<void> {
    this.kyberPreKeys.set(id, { record: record.serialize(), lastResort: true });
  }

  async getKyberPreKey(id: number): Promise<KyberPreKeyRecord> {
    const entry = this.kyberPreKeys.get(id);
    if (!entry) throw new Error(`no kyber prekey ${id}`);
    return KyberPreKeyRecord.deserialize(entry.record);
  }

  /**
   * PQXDH: a one-time Kyber key is deleted after use; a last-resort key is
   * kept, but the same (key, signed prekey, base key) may not be used twice.
   */
  async markKyberPreKeyUsed(id: number, signedPreKeyId: number, baseKey: PublicKey): Promise<void> {
    const entry = this.kyberPreKeys.get(id);
    if (!entry) return;
    if (!entry.lastResort) {
      this.kyberPreKeys.delete(id);
      return;
    }
    const use = `${id}:${signedPreKeyId}:${Buffer.from(baseKey.serialize()).toString('base64')}`;
    if (this.usedLastResort.has(use)) throw new Error(`kyber last-resort prekey ${id} reused with the same base key`);
    this.usedLastResort.add(use);
  }
}

export class MemorySenderKeyStore extends SenderKeyStore {
  private readonly senderKeys = new Map<string, Uint8Array<ArrayBuffer>>();

  async saveSenderKey(sender: ProtocolAddress, distributionId: Uuid, record: SenderKeyRecord): Promise<void> {
    this.senderKeys.set(`${addressKey(sender)}::${distributionId}`, record.serialize());
  }

  async getSenderKey(sender: ProtocolAddress, distributionId: Uuid): Promise<SenderKeyRecord | null> {
    const bytes = this.senderKeys.get(`${addressKey(sender)}::${distributionId}`);
    return bytes ? SenderKeyRecord.deserialize(bytes) : null;
  }
}

export class MemoryMetadataStore extends SecureChatMetadataStore {
  private account: AccountRecord | null = null;
  private readonly nextKeyIds = new Map<KeyIdKind, number>();
  private readonly peerDevices = new Map<string, DeviceId[]>();

  async getAccount(): Promise<AccountRecord | null> {
    return this.account ? { ...this.account } : null;
  }

  async saveAccount(account: AccountRecord): Promise<void> {
    this.account = { ...account };
  }

  /** Ids run from 1 and wrap within the wire's 24-bit range. */
  async allocateKeyIds(kind: KeyIdKind, count: number): Promise<number> {
    let first = this.nextKeyIds.get(kind) ?? 1;
    if (first + count - 1 > KEY_ID_MAX) first = 1;
    this.nextKeyIds.set(kind, first + count);
    return first;
  }

  async getPeerDevices(username: string): Promise<DeviceId[]> {
    return [...(this.peerDevices.get(username) ?? [])];
  }

  async savePeerDevices(username: string, deviceIds: DeviceId[]): Promise<void> {
    this.peerDevices.set(username, [...deviceIds]);
  }
}

/** A full set of memory stores. */
export function createMemoryStores(): SecureChatStores {
  return {
    session: new MemorySessionStore(),
    identity: new MemoryIdentityKeyStore(),
    preKey: new MemoryPreKeyStore(),
    signedPreKey: new MemorySignedPreKeyStore(),
    kyberPreKey: new MemoryKyberPreKeyStore(),
    senderKey: new MemorySenderKeyStore(),
    metadata: new MemoryMetadataStore(),
  };
}

/** Fills every store the caller left out with a memory store (matrix-js-sdk `amendClientOpts`). */
export function amendStores(stores: Partial<SecureChatStores> = {}): SecureChatStores {
  return {
    session: stores.session ?? new MemorySessionStore(),
    identity: stores.identity ?? new MemoryIdentityKeyStore(),
    preKey: stores.preKey ?? new MemoryPreKeyStore(),
    signedPreKey: stores.signedPreKey ?? new MemorySignedPreKeyStore(),
    kyberPreKey: stores.kyberPreKey ?? new MemoryKyberPreKeyStore(),
    senderKey: stores.senderKey ?? new MemorySenderKeyStore(),
    metadata: stores.metadata ?? new MemoryMetadataStore(),
  };
}

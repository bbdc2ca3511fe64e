import {
  IdentityKeyStore,
  KyberPreKeyStore,
  type IdentityKeyPair,
  type KyberPreKeyRecord,
  type PreKeyStore,
  type PublicKey,
  type SenderKeyStore,
  type SessionStore,
  type SignedPreKeyStore,
} from '@signalapp/libsignal-client';
import type { DeviceId, RegistrationId } from '../ids.js';

/** This install's own long-term identity: created once, never changed. */
export interface LocalIdentity {
  identityKeyPair: IdentityKeyPair;
  registrationId: RegistrationId;
}

/** A peer's identity key as the identity store holds it (per account, not per device). */
export interface TrustedIdentity {
  username: string;
  identityKey: PublicKey;
}

/**
 * libsignal's identity store plus what libsignal leaves out: creating the
 * local identity on first registration, and listing the peer identities
 * (for an encrypted backup, so that trust on first use carries over).
 */
export abstract class SecureChatIdentityKeyStore extends IdentityKeyStore {
  /** The local identity, or null before the first `register`. */
  abstract getLocalIdentity(): Promise<LocalIdentity | null>;
  abstract saveLocalIdentity(identity: LocalIdentity): Promise<void>;
  /** Every peer identity key `saveIdentity` recorded, one per username, in any order. */
  abstract getTrustedIdentities(): Promise<TrustedIdentity[]>;
}

/**
 * libsignal's Kyber store plus the distinction it needs but cannot express:
 * a last-resort key is kept after use (one-time keys are deleted), as PQXDH
 * specifies.
 */
export abstract class SecureChatKyberPreKeyStore extends KyberPreKeyStore {
  abstract saveLastResortKyberPreKey(kyberPreKeyId: number, record: KyberPreKeyRecord): Promise<void>;
}

/** The signed-in account of this install. */
export interface AccountRecord {
  username: string;
  deviceId: DeviceId;
}

export enum KeyIdKind {
  PreKey = 'preKey',
  SignedPreKey = 'signedPreKey',
  KyberPreKey = 'kyberPreKey',
}

/** What libsignal's stores do not cover. */
export abstract class SecureChatMetadataStore {
  abstract getAccount(): Promise<AccountRecord | null>;
  abstract saveAccount(account: AccountRecord): Promise<void>;
  /**
   * Reserves `count` consecutive key ids of `kind` and returns the first, so
   * that a new batch never reuses an id the relay or a peer may still hold.
   */
  abstract allocateKeyIds(kind: KeyIdKind, count: number): Promise<number>;
  /** The devices of `username` this install last addressed or heard from. */
  abstract getPeerDevices(username: string): Promise<DeviceId[]>;
  abstract savePeerDevices(username: string, deviceIds: DeviceId[]): Promise<void>;
}

/** Every store the client uses, grouped (the libsignal abstract store classes plus metadata). */
export interface SecureChatStores {
  session: SessionStore;
  identity: SecureChatIdentityKeyStore;
  preKey: PreKeyStore;
  signedPreKey: SignedPreKeyStore;
  kyberPreKey: SecureChatKyberPreKeyStore;
  senderKey: SenderKeyStore;
  metadata: SecureChatMetadataStore;
}

import { ProtocolAddress, type PublicKey } from '@signalapp/libsignal-client';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { assertComparedSafetyNumber, assertScannedSafetyNumber, safetyNumberOf, type SafetyNumber } from './safety-number.js';
import type { DeviceId } from '../ids.js';
import type { PeerIdentityRecord, SecureChatStores } from '../stores/stores.js';

/** How a peer's identity key stands with this install. */
export enum IdentityStatus {
  /** The first key seen for the peer (trust on first use), or one the app accepted. */
  Trusted = 'trusted',
  /** The key changed and the app has not accepted the new one. */
  Changed = 'changed',
  /** The user compared the safety number for this key (`verifySafetyNumber`). */
  Verified = 'verified',
}

/**
 * What the client does when a peer's identity key changes. `'block'` (the
 * default): nothing is sent to the new key until the app accepts it
 * (`acceptIdentity`) or the user verifies it. `'warn'`: the new key is
 * trusted at once, as Signal's apps do for a peer not verified; the change is
 * reported either way.
 */
export type IdentityPolicy = 'block' | 'warn';

export const IDENTITY_POLICIES: readonly IdentityPolicy[] = ['block', 'warn'];

/** What `identityChanged` reports. Keys are libsignal `PublicKey.serialize()` bytes (33). */
export interface IdentityChanged {
  /** The peer's canonical username. */
  readonly username: string;
  readonly previousKey: Uint8Array;
  readonly newKey: Uint8Array;
  /** The previous key had been verified; the peer is not verified any more. */
  readonly wasVerified: boolean;
  /** How the new key stands now: `changed` under `'block'`; `trusted` under `'warn'` or when the key went back to a trusted one. */
  readonly status: IdentityStatus;
}

export function identityStatusOf(record: PeerIdentityRecord): IdentityStatus {
  if (record.verifiedKey?.equals(record.identityKey)) return IdentityStatus.Verified;
  return record.trustedKey.equals(record.identityKey) ? IdentityStatus.Trusted : IdentityStatus.Changed;
}

/**
 * Trust decisions about peers' identity keys, over the identity store's
 * `PeerIdentityRecord`s. Every method takes the stores to use, so that it
 * can run inside the caller's store transaction.
 */
export class IdentityTrust {
  constructor(readonly policy: IdentityPolicy) {}

  /**
   * Records the identity key a prekey bundle names, before any session is
   * built from it. A key other than the one last seen is a change: the
   * peer's sessions are archived (they belong to the old key) and, under
   * `'warn'`, the new key is trusted. `sendable`: the key may be sent to.
   */
  async recordBundleKey(
    stores: SecureChatStores,
    username: string,
    key: PublicKey,
  ): Promise<{ change: IdentityChanged | null; sendable: boolean }> {
    const known = await stores.identity.getPeerIdentity(username);
    if (!known) {
      await stores.identity.savePeerIdentity({ username, identityKey: key, trustedKey: key, verifiedKey: null });
      return { change: null, sendable: true };
    }
    let change: IdentityChanged | null = null;
    let record = known;
    if (!known.identityKey.equals(key)) {
      record = this.applyPolicy({ ...known, identityKey: key });
      await stores.identity.savePeerIdentity(record);
      await archiveSessions(stores, username, await stores.metadata.getPeerDevices(username));
      change = changeOf(known, record);
    }
    return { change, sendable: identityStatusOf(record) !== IdentityStatus.Changed };
  }

  /**
   * After a decryption (which libsignal follows with `saveIdentity`): if the
   * key changed, archives the sessions with the peer's other devices and
   * applies the policy. Returns the change, if any, and how the peer's key
   * stands now (`trusted` for a peer with no record).
   */
  async noticeDecrypted(
    stores: SecureChatStores,
    username: string,
    senderDevice: DeviceId,
    before: PeerIdentityRecord | null,
  ): Promise<{ change: IdentityChanged | null; status: IdentityStatus }> {
    const after = await stores.identity.getPeerIdentity(username);
    if (!after) return { change: null, status: IdentityStatus.Trusted };
    if (!before || before.identityKey.equals(after.identityKey)) return { change: null, status: identityStatusOf(after) };
    const record = this.applyPolicy(after);
    if (record !== after) await stores.identity.savePeerIdentity(record);
    const otherDevices = (await stores.metadata.getPeerDevices(username)).filter((device) => device !== senderDevice);
    await archiveSessions(stores, username, otherDevices);
    return { change: changeOf(before, record), status: IdentityStatus.Changed };
  }

  /**
   * @throws {SecureChatError} `IdentityChanged` when the peer's key changed and is not accepted.
   */
  async assertSendable(stores: SecureChatStores, username: string): Promise<void> {
    const record = await stores.identity.getPeerIdentity(username);
    if (record && identityStatusOf(record) === IdentityStatus.Changed) throw identityChangedError(username);
  }

  /** The peer's current key and how it stands, or null. */
  async describe(stores: SecureChatStores, username: string): Promise<{ identityKey: Uint8Array; status: IdentityStatus } | null> {
    const record = await stores.identity.getPeerIdentity(username);
    return record && { identityKey: record.identityKey.serialize(), status: identityStatusOf(record) };
  }

  /**
   * Trusts the peer's current key; with `expectedKey`, only if it is that one.
   * @throws {SecureChatError} `UnknownIdentity`, `IdentityChanged` (the current key is not `expectedKey`).
   */
  async accept(stores: SecureChatStores, username: string, expectedKey?: Uint8Array): Promise<void> {
    const record = await requirePeerIdentity(stores, username);
    if (expectedKey && !Buffer.from(record.identityKey.serialize()).equals(Buffer.from(expectedKey))) throw identityChangedError(username);
    await stores.identity.savePeerIdentity({ ...record, trustedKey: record.identityKey });
  }

  /** @throws {SecureChatError} `UnknownIdentity`. */
  async safetyNumber(stores: SecureChatStores, local: LocalParty, username: string): Promise<SafetyNumber> {
    const record = await requirePeerIdentity(stores, username);
    return safetyNumberOf(local.username, local.identityKey, username, record.identityKey);
  }

  /**
   * Marks the peer's current key verified and trusted if `compared` is the
   * peer's scannable safety number for it, or the displayable digits.
   * @throws {SecureChatError} `SafetyNumberMismatch` (nothing is changed), `UnknownIdentity`.
   */
  async verify(stores: SecureChatStores, local: LocalParty, username: string, compared: Uint8Array | string): Promise<void> {
    const record = await requirePeerIdentity(stores, username);
    const check = typeof compared === 'string' ? assertComparedSafetyNumber : assertScannedSafetyNumber;
    check(local.username, local.identityKey, username, record.identityKey, compared as never);
    await stores.identity.savePeerIdentity({ ...record, trustedKey: record.identityKey, verifiedKey: record.identityKey });
  }

  /** Under `'warn'`, a changed key is trusted at once. */
  private applyPolicy(record: PeerIdentityRecord): PeerIdentityRecord {
    if (this.policy === 'warn' && identityStatusOf(record) === IdentityStatus.Changed) return { ...record, trustedKey: record.identityKey };
    return record;
  }
}

/** This install's side of a safety number. */
export interface LocalParty {
  username: string;
  identityKey: PublicKey;
}

async function requirePeerIdentity(stores: SecureChatStores, username: string): Promise<PeerIdentityRecord> {
  const record = await stores.identity.getPeerIdentity(username);
  if (!record) throw new SecureChatError(SecureChatErrorCode.UnknownIdentity, `no identity key is known for ${username} yet`);
  return record;
}

export function identityChangedError(username: string, cause?: unknown): SecureChatError {
  return new SecureChatError(
    SecureChatErrorCode.IdentityChanged,
    `the identity key of ${username} changed and is not accepted; nothing was sent`,
    cause === undefined ? {} : { cause },
  );
}

function changeOf(before: PeerIdentityRecord, after: PeerIdentityRecord): IdentityChanged {
  return {
    username: after.username,
    previousKey: before.identityKey.serialize(),
    newKey: after.identityKey.serialize(),
    wasVerified: before.verifiedKey?.equals(before.identityKey) ?? false,
    status: identityStatusOf(after),
  };
}

/**
 * Archives the current session with each device (libsignal keeps archived
 * states to decrypt late messages but never encrypts with them), so that the
 * next send starts a session from a fresh bundle.
 */
async function archiveSessions(stores: SecureChatStores, username: string, devices: DeviceId[]): Promise<void> {
  for (const device of devices) {
    const address = ProtocolAddress.new(username, device);
    const record = await stores.session.getSession(address);
    if (!record?.hasCurrentState()) continue;
    record.archiveCurrentState();
    await stores.session.saveSession(address, record);
  }
}

import {
  IdentityKeyPair,
  KyberPreKeyRecord,
  PreKeyRecord,
  PreKeyStore,
  ProtocolAddress,
  PublicKey,
  SenderKeyRecord,
  SenderKeyStore,
  SessionRecord,
  SignedPreKeyRecord,
  type Uuid,
} from '@signalapp/libsignal-client';
import { KEY_ID_MAX } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import type { DeviceId } from '../ids.js';
import { asRegistrationId } from '../ids.js';
import {
  KeyIdKind,
  MAX_PENDING_MESSAGES,
  MAX_PROCESSED_ENVELOPES,
  MAX_RECEIVED_MESSAGES,
  MAX_SENT_MESSAGES_PER_PEER,
  SecureChatIdentityKeyStore,
  SecureChatKyberPreKeyStore,
  SecureChatMetadataStore,
  SecureChatSessionStore,
  SecureChatSignedPreKeyStore,
  type AccountRecord,
  type LocalIdentity,
  type OutgoingMessageRecord,
  type PeerIdentityRecord,
  type PendingMessage,
  type ReceivedMessageRecord,
  type SecureChatStores,
  type SentMessageRecord,
  type SignedKeysState,
} from './stores.js';
import { receivedMessageKey, sentMessageKey } from './message-log-keys.js';
import type { GroupRecord } from '../groups/group-rules.js';
import type { MessageSequence, SequenceTrack } from '../session/message-sequence.js';
import { groupIdToString } from '../groups/group-wire.js';
import { STORE_NAMES, assertTransactionCoversStores, transactionalStores, type TransactionHooks } from './transactional-stores.js';

// Memory stores keep `serialize()` bytes, never live records, so that every
// read yields a fresh object and nothing depends on object identity
// (libsignal `test/protocol/TestStores.ts`). They lose everything on exit.

const addressKey = (address: ProtocolAddress) => `${address.name()}.${address.deviceId()}`;

const notFound = (what: string) => new SecureChatError(SecureChatErrorCode.RecordNotFound, `no ${what}`);

/** A memory store's state can be snapshotted and put back: that is its transaction rollback. */
export interface Snapshottable {
  snapshot(): Snapshot;
}

export interface Snapshot {
  /** Puts the state back as it was when the snapshot was taken (rollback). */
  restore(): void;
  /** Keeps the state as it is and ends the snapshot (commit). */
  release(): void;
}

/** One snapshot of several parts; `also` restores what is not a collection (a field). */
function snapshotOf(parts: Snapshot[], also: () => void = () => undefined): Snapshot {
  return {
    restore: () => {
      also();
      for (const part of parts) part.restore();
    },
    release: () => {
      for (const part of parts) part.release();
    },
  };
}

/**
 * A Map whose snapshot costs what a transaction changes, not the size of the
 * map: while a snapshot is open, the first write to each key remembers the
 * key's value before it. The message logs hold thousands of entries and every
 * message runs a transaction, so copying them made each message cost more the
 * longer the client ran (issue #9, SDK overhead).
 *
 * A rollback puts back the same entries in the same order, since pruning
 * takes the oldest entry by insertion order: a deleted first entry goes back
 * to the front. Any other delete, or a `clear`, falls back to a full copy
 * taken just before it (no per-message path does that to a large map).
 * Values are never mutated in place (every save stores a new object), so
 * remembering a value is remembering the entry.
 */
class SnapshotMap<K, V> extends Map<K, V> {
  private open: {
    /** Each key's state before its first change in the snapshot. */
    before: Map<K, { had: true; value: V } | { had: false }>;
    /** Keys that were first in the map when deleted, in order. */
    deletedFromFront: K[];
    /** The whole map, once a change the log does not cover happened. */
    copy: Map<K, V> | null;
  } | null = null;

  override set(key: K, value: V): this {
    this.remember(key);
    return super.set(key, value);
  }

  override delete(key: K): boolean {
    const open = this.open;
    if (open && !open.copy && super.has(key)) {
      if (this.keys().next().value === key) {
        this.remember(key);
        open.deletedFromFront.push(key);
      } else {
        open.copy = new Map(this.entriesBefore(open));
      }
    }
    return super.delete(key);
  }

  override clear(): void {
    if (this.open && !this.open.copy) this.open.copy = new Map(this.entriesBefore(this.open));
    super.clear();
  }

  snapshot(): Snapshot {
    const open = { before: new Map(), deletedFromFront: [] as K[], copy: null as Map<K, V> | null };
    this.open = open;
    const end = () => {
      if (this.open === open) this.open = null;
    };
    return {
      restore: () => {
        end();
        this.restore(open);
      },
      release: end,
    };
  }

  private remember(key: K): void {
    const open = this.open;
    if (!open || open.copy || open.before.has(key)) return;
    open.before.set(key, super.has(key) ? { had: true, value: super.get(key) as V } : { had: false });
  }

  private restore(open: NonNullable<SnapshotMap<K, V>['open']>): void {
    if (!open.copy && open.before.size === 0) return;
    const entries = open.copy ? [...open.copy] : this.entriesBefore(open);
    super.clear();
    for (const [key, value] of entries) super.set(key, value);
  }

  /** The entries, in order, as they were when the snapshot `open` was taken (it has no copy). */
  private entriesBefore(open: NonNullable<SnapshotMap<K, V>['open']>): Array<[K, V]> {
    const entries: Array<[K, V]> = [];
    const front = new Set(open.deletedFromFront);
    for (const key of open.deletedFromFront) {
      const before = open.before.get(key);
      if (before?.had) entries.push([key, before.value]);
    }
    for (const [key, value] of this) {
      if (front.has(key)) continue;
      const before = open.before.get(key);
      if (!before) entries.push([key, value]);
      else if (before.had) entries.push([key, before.value]);
    }
    return entries;
  }
}

/** The sets stay small (profile keys shared, last-resort key uses), so a copy is their snapshot. */
function snapshotSet<V>(set: Set<V>): Snapshot {
  const copy = new Set(set);
  return {
    restore: () => {
      set.clear();
      for (const value of copy) set.add(value);
    },
    release: () => undefined,
  };
}

export class MemorySessionStore extends SecureChatSessionStore implements Snapshottable {
  private readonly sessions = new SnapshotMap<string, Uint8Array<ArrayBuffer>>();

  snapshot(): Snapshot {
    return this.sessions.snapshot();
  }

  async saveSession(address: ProtocolAddress, record: SessionRecord): Promise<void> {
    this.sessions.set(addressKey(address), record.serialize());
  }

  async getSession(address: ProtocolAddress): Promise<SessionRecord | null> {
    const bytes = this.sessions.get(addressKey(address));
    return bytes ? SessionRecord.deserialize(bytes) : null;
  }

  async removeSession(address: ProtocolAddress): Promise<void> {
    this.sessions.delete(addressKey(address));
  }

  async getExistingSessions(addresses: ProtocolAddress[]): Promise<SessionRecord[]> {
    return addresses.map((address) => {
      const bytes = this.sessions.get(addressKey(address));
      if (!bytes) throw notFound(`session for ${addressKey(address)}`);
      return SessionRecord.deserialize(bytes);
    });
  }
}

interface StoredPeerIdentity {
  identityKey: Uint8Array<ArrayBuffer>;
  trustedKey: Uint8Array<ArrayBuffer>;
  verifiedKey: Uint8Array<ArrayBuffer> | null;
}

/** Identities are per account, so peers are keyed by name, not device; the trust policy is the base class's. */
export class MemoryIdentityKeyStore extends SecureChatIdentityKeyStore implements Snapshottable {
  private local: { keyPair: Uint8Array<ArrayBuffer>; registrationId: number } | null = null;
  private readonly remote = new SnapshotMap<string, StoredPeerIdentity>();

  snapshot(): Snapshot {
    const local = this.local;
    return snapshotOf([this.remote.snapshot()], () => {
      this.local = local;
    });
  }

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

  async getPeerIdentity(username: string): Promise<PeerIdentityRecord | null> {
    const stored = this.remote.get(username);
    return stored ? peerIdentityOf(username, stored) : null;
  }

  async savePeerIdentity(record: PeerIdentityRecord): Promise<void> {
    this.remote.set(record.username, {
      identityKey: record.identityKey.serialize(),
      trustedKey: record.trustedKey.serialize(),
      verifiedKey: record.verifiedKey?.serialize() ?? null,
    });
  }

  async getPeerIdentities(): Promise<PeerIdentityRecord[]> {
    return [...this.remote].map(([username, stored]) => peerIdentityOf(username, stored));
  }
}

const peerIdentityOf = (username: string, stored: StoredPeerIdentity): PeerIdentityRecord => ({
  username,
  identityKey: PublicKey.deserialize(stored.identityKey),
  trustedKey: PublicKey.deserialize(stored.trustedKey),
  verifiedKey: stored.verifiedKey ? PublicKey.deserialize(stored.verifiedKey) : null,
});

export class MemoryPreKeyStore extends PreKeyStore implements Snapshottable {
  private readonly preKeys = new SnapshotMap<number, Uint8Array<ArrayBuffer>>();

  snapshot(): Snapshot {
    return this.preKeys.snapshot();
  }

  async savePreKey(id: number, record: PreKeyRecord): Promise<void> {
    this.preKeys.set(id, record.serialize());
  }

  async getPreKey(id: number): Promise<PreKeyRecord> {
    const bytes = this.preKeys.get(id);
    if (!bytes) throw notFound(`prekey ${id}`);
    return PreKeyRecord.deserialize(bytes);
  }

  /** One-time prekeys are deleted once a session used them (X3DH). */
  async removePreKey(id: number): Promise<void> {
    this.preKeys.delete(id);
  }
}

export class MemorySignedPreKeyStore extends SecureChatSignedPreKeyStore implements Snapshottable {
  private readonly signedPreKeys = new SnapshotMap<number, Uint8Array<ArrayBuffer>>();

  snapshot(): Snapshot {
    return this.signedPreKeys.snapshot();
  }

  async saveSignedPreKey(id: number, record: SignedPreKeyRecord): Promise<void> {
    this.signedPreKeys.set(id, record.serialize());
  }

  async getSignedPreKey(id: number): Promise<SignedPreKeyRecord> {
    const bytes = this.signedPreKeys.get(id);
    if (!bytes) throw notFound(`signed prekey ${id}`);
    return SignedPreKeyRecord.deserialize(bytes);
  }

  async getSignedPreKeys(): Promise<SignedPreKeyRecord[]> {
    return [...this.signedPreKeys.values()].map((bytes) => SignedPreKeyRecord.deserialize(bytes));
  }

  async removeSignedPreKey(id: number): Promise<void> {
    this.signedPreKeys.delete(id);
  }
}

export class MemoryKyberPreKeyStore extends SecureChatKyberPreKeyStore implements Snapshottable {
  private readonly kyberPreKeys = new SnapshotMap<number, { record: Uint8Array<ArrayBuffer>; lastResort: boolean }>();
  /** (last-resort key, signed prekey, base key) triples already used, to refuse a replayed PreKey message. */
  private readonly usedLastResort = new Set<string>();

  snapshot(): Snapshot {
    return snapshotOf([this.kyberPreKeys.snapshot(), snapshotSet(this.usedLastResort)]);
  }

  async saveKyberPreKey(id: number, record: KyberPreKeyRecord): Promise<void> {
    this.kyberPreKeys.set(id, { record: record.serialize(), lastResort: false });
  }

  async saveLastResortKyberPreKey(id: number, record: KyberPreKeyRecord): Promise<void> {
    this.kyberPreKeys.set(id, { record: record.serialize(), lastResort: true });
  }

  async getKyberPreKey(id: number): Promise<KyberPreKeyRecord> {
    const entry = this.kyberPreKeys.get(id);
    if (!entry) throw notFound(`kyber prekey ${id}`);
    return KyberPreKeyRecord.deserialize(entry.record);
  }

  async getLastResortKyberPreKeys(): Promise<KyberPreKeyRecord[]> {
    return [...this.kyberPreKeys.values()].filter((entry) => entry.lastResort).map((entry) => KyberPreKeyRecord.deserialize(entry.record));
  }

  async removeKyberPreKey(id: number): Promise<void> {
    this.kyberPreKeys.delete(id);
    for (const use of this.usedLastResort) if (use.startsWith(`${id}:`)) this.usedLastResort.delete(use);
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
    if (this.usedLastResort.has(use)) {
      throw new SecureChatError(SecureChatErrorCode.PreKeyReused, `kyber last-resort prekey ${id} reused with the same base key`);
    }
    this.usedLastResort.add(use);
  }
}

export class MemorySenderKeyStore extends SenderKeyStore implements Snapshottable {
  private readonly senderKeys = new SnapshotMap<string, Uint8Array<ArrayBuffer>>();

  snapshot(): Snapshot {
    return this.senderKeys.snapshot();
  }

  async saveSenderKey(sender: ProtocolAddress, distributionId: Uuid, record: SenderKeyRecord): Promise<void> {
    this.senderKeys.set(`${addressKey(sender)}::${distributionId}`, record.serialize());
  }

  async getSenderKey(sender: ProtocolAddress, distributionId: Uuid): Promise<SenderKeyRecord | null> {
    const bytes = this.senderKeys.get(`${addressKey(sender)}::${distributionId}`);
    return bytes ? SenderKeyRecord.deserialize(bytes) : null;
  }
}

export class MemoryMetadataStore extends SecureChatMetadataStore implements Snapshottable {
  private account: AccountRecord | null = null;
  private refreshToken: string | null = null;
  private signedKeysState: SignedKeysState | null = null;
  private readonly nextKeyIds = new SnapshotMap<KeyIdKind, number>();
  private readonly peerDevices = new SnapshotMap<string, DeviceId[]>();
  /** In insertion order, so the first entry is the oldest. */
  private readonly pendingMessages = new SnapshotMap<string, PendingMessage>();
  /**
   * Per recipient username, keyed by `sentMessageKey`. Each peer's log is
   * changed in place (every sent message is saved here: copying the log per
   * message cost more than the save), so a transaction snapshots a log the
   * first time it changes one (`sentLogsInTransaction`).
   */
  private readonly sentMessages = new SnapshotMap<string, SnapshotMap<string, SentMessageRecord>>();
  /** While a transaction is open: the snapshot of each peer's log it changed. */
  private sentLogsInTransaction: Map<SnapshotMap<string, SentMessageRecord>, Snapshot> | null = null;
  /** Keyed by `receivedMessageKey`, in insertion order; the value is `receivedAt`. */
  private readonly receivedMessages = new SnapshotMap<string, number>();
  /** Envelope id to `processedAt`, in insertion order (the first entry is the oldest). */
  private readonly processedEnvelopes = new SnapshotMap<string, number>();
  /** The outbox by id, in the order queued (`Map.set` on a present key keeps its place). */
  private readonly outgoing = new SnapshotMap<string, OutgoingMessageRecord>();
  /** Group records by base64url group id; replaced whole on save. */
  private readonly groups = new SnapshotMap<string, GroupRecord>();
  // Gap detection: the last sequence position used per recipient, and the tracks by `sequenceTrackKey`.
  private readonly sendSequences = new SnapshotMap<string, MessageSequence>();
  private readonly sequenceTracks = new SnapshotMap<string, SequenceTrack>();
  // Sealed sender: profile keys and account ids.
  private ownProfileKey: Uint8Array | null = null;
  private readonly peerProfileKeys = new SnapshotMap<string, Uint8Array>();
  private readonly sharedProfileKeys = new Set<string>();
  private readonly accountIds = new SnapshotMap<string, string>();
  private readonly usernamesOfAccounts = new SnapshotMap<string, string>();

  snapshot(): Snapshot {
    const { account, refreshToken, signedKeysState, ownProfileKey } = this;
    const sentLogs = new Map<SnapshotMap<string, SentMessageRecord>, Snapshot>();
    this.sentLogsInTransaction = sentLogs;
    const endSentLogs = (end: (snapshot: Snapshot) => void): Snapshot['restore'] => () => {
      if (this.sentLogsInTransaction === sentLogs) this.sentLogsInTransaction = null;
      for (const snapshot of sentLogs.values()) end(snapshot);
    };
    const parts = [
      { restore: endSentLogs((log) => log.restore()), release: endSentLogs((log) => log.release()) },
      this.nextKeyIds.snapshot(),
      this.peerDevices.snapshot(),
      this.pendingMessages.snapshot(),
      this.sentMessages.snapshot(),
      this.receivedMessages.snapshot(),
      this.processedEnvelopes.snapshot(),
      this.outgoing.snapshot(),
      this.groups.snapshot(),
      this.sendSequences.snapshot(),
      this.sequenceTracks.snapshot(),
      this.peerProfileKeys.snapshot(),
      snapshotSet(this.sharedProfileKeys),
      this.accountIds.snapshot(),
      this.usernamesOfAccounts.snapshot(),
    ];
    return snapshotOf(parts, () => {
      this.ownProfileKey = ownProfileKey;
      this.account = account;
      this.refreshToken = refreshToken;
      this.signedKeysState = signedKeysState;
    });
  }

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

  async getRefreshToken(): Promise<string | null> {
    return this.refreshToken;
  }

  async saveRefreshToken(refreshToken: string | null): Promise<void> {
    this.refreshToken = refreshToken;
  }

  async getSignedKeysState(): Promise<SignedKeysState | null> {
    return this.signedKeysState && structuredClone(this.signedKeysState);
  }

  async saveSignedKeysState(state: SignedKeysState): Promise<void> {
    this.signedKeysState = structuredClone(state);
  }

  async savePendingMessage(envelopeId: string, message: PendingMessage): Promise<void> {
    if (!this.pendingMessages.has(envelopeId) && this.pendingMessages.size >= MAX_PENDING_MESSAGES) {
      const oldest = this.pendingMessages.keys().next().value;
      if (oldest !== undefined) this.pendingMessages.delete(oldest);
    }
    this.pendingMessages.set(envelopeId, copyPending(message));
  }

  async getPendingMessage(envelopeId: string): Promise<PendingMessage | null> {
    const message = this.pendingMessages.get(envelopeId);
    return message ? copyPending(message) : null;
  }

  async removePendingMessage(envelopeId: string): Promise<void> {
    this.pendingMessages.delete(envelopeId);
  }

  async saveSentMessage(message: SentMessageRecord): Promise<void> {
    // At most one entry over the bound to drop: the oldest (the first saved among equal timestamps,
    // as SqliteStores drops), found in one pass, no sort per message.
    let kept = this.sentMessages.get(message.recipient);
    if (kept) {
      if (this.sentLogsInTransaction && !this.sentLogsInTransaction.has(kept)) this.sentLogsInTransaction.set(kept, kept.snapshot());
    } else {
      kept = new SnapshotMap();
      this.sentMessages.set(message.recipient, kept);
    }
    kept.set(sentMessageKey(message.recipientDevice, message.timestamp), copySent(message));
    while (kept.size > MAX_SENT_MESSAGES_PER_PEER) {
      let oldest: string | undefined;
      let oldestTimestamp = Number.POSITIVE_INFINITY;
      for (const [key, { timestamp }] of kept) {
        if (timestamp < oldestTimestamp) {
          oldest = key;
          oldestTimestamp = timestamp;
        }
      }
      if (oldest === undefined) break;
      kept.delete(oldest);
    }
  }

  async getSentMessages(recipient: string, recipientDevice: DeviceId, sinceServerTimestamp: number): Promise<SentMessageRecord[]> {
    return [...(this.sentMessages.get(recipient)?.values() ?? [])]
      .filter((m) => m.recipientDevice === recipientDevice && m.serverTimestamp >= sinceServerTimestamp)
      .sort((a, b) => a.timestamp - b.timestamp)
      .map(copySent);
  }

  async saveReceivedMessage(message: ReceivedMessageRecord): Promise<void> {
    const key = receivedMessageKey(message);
    if (!this.receivedMessages.has(key) && this.receivedMessages.size >= MAX_RECEIVED_MESSAGES) {
      const oldest = this.receivedMessages.keys().next().value;
      if (oldest !== undefined) this.receivedMessages.delete(oldest);
    }
    this.receivedMessages.set(key, message.receivedAt);
  }

  async hasReceivedMessage(message: Omit<ReceivedMessageRecord, 'receivedAt'>): Promise<boolean> {
    return this.receivedMessages.has(receivedMessageKey(message));
  }

  async pruneMessageLogs(before: number): Promise<void> {
    for (const [recipient, kept] of this.sentMessages) {
      const recent = [...kept].filter(([, m]) => m.timestamp >= before);
      if (recent.length === 0) this.sentMessages.delete(recipient);
      else if (recent.length < kept.size) {
        const log = new SnapshotMap<string, SentMessageRecord>();
        for (const [key, message] of recent) log.set(key, message);
        this.sentMessages.set(recipient, log);
      }
    }
    for (const [key, receivedAt] of this.receivedMessages) {
      if (receivedAt < before) this.receivedMessages.delete(key);
    }
    for (const [envelopeId, processedAt] of this.processedEnvelopes) {
      if (processedAt < before) this.processedEnvelopes.delete(envelopeId);
    }
  }

  async hasProcessedEnvelope(envelopeId: string): Promise<boolean> {
    return this.processedEnvelopes.has(envelopeId);
  }

  async saveProcessedEnvelope(envelopeId: string, processedAt: number): Promise<void> {
    if (this.processedEnvelopes.has(envelopeId)) return;
    if (this.processedEnvelopes.size >= MAX_PROCESSED_ENVELOPES) {
      const oldest = this.processedEnvelopes.keys().next().value;
      if (oldest !== undefined) this.processedEnvelopes.delete(oldest);
    }
    this.processedEnvelopes.set(envelopeId, processedAt);
  }

  async saveOutgoing(message: OutgoingMessageRecord): Promise<void> {
    this.outgoing.set(message.id, copyOutgoing(message));
  }

  async getOutgoing(): Promise<OutgoingMessageRecord[]> {
    return [...this.outgoing.values()].map(copyOutgoing);
  }

  async removeOutgoing(id: string): Promise<void> {
    this.outgoing.delete(id);
  }

  async getOwnProfileKey(): Promise<Uint8Array | null> {
    return this.ownProfileKey?.slice() ?? null;
  }

  async saveOwnProfileKey(profileKey: Uint8Array): Promise<void> {
    this.ownProfileKey = profileKey.slice();
  }

  async getPeerProfileKey(username: string): Promise<Uint8Array | null> {
    return this.peerProfileKeys.get(username)?.slice() ?? null;
  }

  async savePeerProfileKey(username: string, profileKey: Uint8Array | null): Promise<void> {
    if (profileKey === null) this.peerProfileKeys.delete(username);
    else this.peerProfileKeys.set(username, profileKey.slice());
  }

  async hasSharedProfileKey(username: string): Promise<boolean> {
    return this.sharedProfileKeys.has(username);
  }

  async saveSharedProfileKey(username: string, shared: boolean): Promise<void> {
    if (shared) this.sharedProfileKeys.add(username);
    else this.sharedProfileKeys.delete(username);
  }

  async getAccountId(username: string): Promise<string | null> {
    return this.accountIds.get(username) ?? null;
  }

  async getUsernameOfAccount(accountId: string): Promise<string | null> {
    return this.usernamesOfAccounts.get(accountId) ?? null;
  }

  async saveAccountId(username: string, accountId: string): Promise<void> {
    const previous = this.accountIds.get(username);
    if (previous !== undefined && previous !== accountId) this.usernamesOfAccounts.delete(previous);
    this.accountIds.set(username, accountId);
    this.usernamesOfAccounts.set(accountId, username);
  }

  async getGroup(groupId: string): Promise<GroupRecord | null> {
    const record = this.groups.get(groupId);
    return record ? structuredClone(record) : null;
  }

  async saveGroup(record: GroupRecord): Promise<void> {
    this.groups.set(groupIdToString(record.state.id), structuredClone(record));
  }

  async getGroups(): Promise<GroupRecord[]> {
    return [...this.groups.values()].map((record) => structuredClone(record));
  }

  async getSendSequence(recipient: string): Promise<MessageSequence | null> {
    const sequence = this.sendSequences.get(recipient);
    return sequence ? { ...sequence } : null;
  }

  async saveSendSequence(recipient: string, sequence: MessageSequence): Promise<void> {
    this.sendSequences.set(recipient, { stream: sequence.stream, number: sequence.number });
  }

  async getSequenceTrack(sender: string, senderDevice: DeviceId, recipient: string): Promise<SequenceTrack | null> {
    const track = this.sequenceTracks.get(sequenceTrackKey(sender, senderDevice, recipient));
    return track ? structuredClone(track) : null;
  }

  async saveSequenceTrack(track: SequenceTrack): Promise<void> {
    this.sequenceTracks.set(sequenceTrackKey(track.sender, track.senderDevice, track.recipient), structuredClone(track));
  }

  async getSequenceTracks(): Promise<SequenceTrack[]> {
    return [...this.sequenceTracks.values()].map((track) => structuredClone(track));
  }

  async deleteSequenceTracks(recipient: string): Promise<void> {
    for (const [key, track] of [...this.sequenceTracks.entries()]) if (track.recipient === recipient) this.sequenceTracks.delete(key);
  }
}

/** Usernames cannot hold a space, so the key names one track. */
const sequenceTrackKey = (sender: string, senderDevice: DeviceId, recipient: string) => `${sender} ${senderDevice} ${recipient}`;

const copyOutgoing = (message: OutgoingMessageRecord): OutgoingMessageRecord => ({ ...message, content: message.content.slice() });

const copySent = (message: SentMessageRecord): SentMessageRecord => ({ ...message, content: message.content.slice() });

const copyPending = (message: PendingMessage): PendingMessage => ({
  sender: message.sender,
  senderDevice: message.senderDevice,
  content: message.content.slice(),
});

/**
 * A full set of memory stores with `transaction`: a transaction snapshots
 * every store first and puts the snapshot back if it fails.
 */
export function createMemoryStores(): SecureChatStores {
  const stores = {
    session: new MemorySessionStore(),
    identity: new MemoryIdentityKeyStore(),
    preKey: new MemoryPreKeyStore(),
    signedPreKey: new MemorySignedPreKeyStore(),
    kyberPreKey: new MemoryKyberPreKeyStore(),
    senderKey: new MemorySenderKeyStore(),
    metadata: new MemoryMetadataStore(),
  };
  return transactionalStores(stores, snapshotTransactions(Object.values(stores)));
}

function snapshotTransactions(parts: Snapshottable[]): TransactionHooks {
  let snapshots: Snapshot[] = [];
  return {
    begin: () => {
      snapshots = parts.map((part) => part.snapshot());
    },
    commit: () => {
      for (const snapshot of snapshots) snapshot.release();
      snapshots = [];
    },
    rollback: () => {
      for (const snapshot of snapshots) snapshot.restore();
      snapshots = [];
    },
  };
}

/**
 * Fills every store the caller left out with a memory store (matrix-js-sdk
 * `amendClientOpts`). A complete set is used as given, with its
 * `transaction`; none at all gives `createMemoryStores()`. A partial set has
 * no transaction: one over some of the stores cannot be atomic over all.
 * @throws {SecureChatError} `InvalidOptions` for a partial set that has a `transaction`, or a
 *   set whose stores are not all the ones its `transaction` covers.
 */
export function amendStores(stores: Partial<SecureChatStores> = {}): SecureChatStores {
  const given = STORE_NAMES.filter((name) => stores[name] !== undefined);
  if (given.length === 0) return createMemoryStores();
  if (given.length === STORE_NAMES.length) {
    assertTransactionCoversStores(stores as SecureChatStores);
    return stores as SecureChatStores;
  }
  if (stores.transaction) {
    throw new SecureChatError(SecureChatErrorCode.InvalidOptions, 'stores with a transaction must be given complete');
  }
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

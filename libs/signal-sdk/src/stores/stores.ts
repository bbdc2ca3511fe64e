import {
  Direction,
  IdentityChange,
  IdentityKeyStore,
  KyberPreKeyStore,
  SessionStore,
  SignedPreKeyStore,
  type IdentityKeyPair,
  type KyberPreKeyRecord,
  type PreKeyStore,
  type PrivateKey,
  type ProtocolAddress,
  type PublicKey,
  type SenderKeyStore,
  type SignedPreKeyRecord,
} from '@signalapp/libsignal-client';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import type { DeviceId, RegistrationId } from '../ids.js';
import type { GroupRecord } from '../groups/group-rules.js';
import type { MessageSequence, SequenceTrack } from '../session/message-sequence.js';

/** This install's own long-term identity: created once, never changed. */
export interface LocalIdentity {
  identityKeyPair: IdentityKeyPair;
  registrationId: RegistrationId;
}

/** A peer identity key a backup carries: the one trusted for sending, and whether the user verified it. */
export interface TrustedIdentity {
  username: string;
  identityKey: PublicKey;
  verified: boolean;
}

/**
 * What this install knows of a peer's identity (per account, not per
 * device). Three keys, so that trust is a property of a key, not of a name:
 *
 * - `identityKey`: the key last seen for the peer, in a bundle or a message.
 * - `trustedKey`: the key sending is allowed to: the first one seen (trust on
 *   first use), or the one the app accepted or verified since. While it
 *   differs from `identityKey` the peer's key has changed and the change is
 *   not accepted: sending to it is refused.
 * - `verifiedKey`: the key whose safety number the user compared, or null.
 *   The peer is verified while it equals `identityKey`.
 */
export interface PeerIdentityRecord {
  username: string;
  identityKey: PublicKey;
  trustedKey: PublicKey;
  verifiedKey: PublicKey | null;
}

/**
 * libsignal's identity store plus what libsignal leaves out: creating the
 * local identity on first registration, and the peer identity records
 * (`PeerIdentityRecord`) behind trust decisions and safety numbers.
 *
 * An implementation keeps records; the policy is here, shared by every store:
 * receiving always trusts and records the key it saw (Signal's policy: a
 * changed key never blocks incoming messages, it is reported), sending trusts
 * a peer never seen, or the key that is both the last seen and the trusted one.
 */
export abstract class SecureChatIdentityKeyStore extends IdentityKeyStore {
  /** The local identity, or null before the first `register`. */
  abstract getLocalIdentity(): Promise<LocalIdentity | null>;
  abstract saveLocalIdentity(identity: LocalIdentity): Promise<void>;
  abstract getPeerIdentity(username: string): Promise<PeerIdentityRecord | null>;
  /** Replaces the record of `record.username`. */
  abstract savePeerIdentity(record: PeerIdentityRecord): Promise<void>;
  /** Every peer identity record, one per username, in any order. */
  abstract getPeerIdentities(): Promise<PeerIdentityRecord[]>;

  async getIdentityKey(): Promise<PrivateKey> {
    return (await this.requireLocalIdentity()).identityKeyPair.privateKey;
  }

  async getLocalRegistrationId(): Promise<number> {
    return (await this.requireLocalIdentity()).registrationId;
  }

  /**
   * Records the key libsignal saw for the peer: a first key is trusted (trust
   * on first use); another key becomes `identityKey`, leaving `trustedKey`
   * and `verifiedKey` as they were, so that the change shows until accepted.
   */
  async saveIdentity(address: ProtocolAddress, key: PublicKey): Promise<IdentityChange> {
    const username = address.name();
    const known = await this.getPeerIdentity(username);
    if (!known) {
      await this.savePeerIdentity({ username, identityKey: key, trustedKey: key, verifiedKey: null });
      return IdentityChange.NewOrUnchanged;
    }
    if (known.identityKey.equals(key)) return IdentityChange.NewOrUnchanged;
    await this.savePeerIdentity({ ...known, identityKey: key });
    return IdentityChange.ReplacedExisting;
  }

  async isTrustedIdentity(address: ProtocolAddress, key: PublicKey, direction: Direction): Promise<boolean> {
    if (direction === Direction.Receiving) return true;
    const known = await this.getPeerIdentity(address.name());
    return !known || (known.identityKey.equals(key) && known.trustedKey.equals(key));
  }

  async getIdentity(address: ProtocolAddress): Promise<PublicKey | null> {
    return (await this.getPeerIdentity(address.name()))?.identityKey ?? null;
  }

  /** The key each peer is trusted with (not a changed key the app has not accepted), for a backup. */
  async getTrustedIdentities(): Promise<TrustedIdentity[]> {
    return (await this.getPeerIdentities()).map((peer) => ({
      username: peer.username,
      identityKey: peer.trustedKey,
      verified: peer.verifiedKey?.equals(peer.trustedKey) ?? false,
    }));
  }

  private async requireLocalIdentity(): Promise<LocalIdentity> {
    const local = await this.getLocalIdentity();
    if (!local) throw new SecureChatError(SecureChatErrorCode.NoLocalIdentity, 'no local identity');
    return local;
  }
}

/**
 * libsignal's session store plus removal: a session with a device that left
 * the account (unlinked, or replaced under another registration id) is
 * deleted, not kept (docs/architecture.md, "Fan-out and device correction").
 */
export abstract class SecureChatSessionStore extends SessionStore {
  /** Deletes the session with `address`; resolves also when there is none. */
  abstract removeSession(address: ProtocolAddress): Promise<void>;
}

/**
 * libsignal's signed prekey store plus listing and removal, so that old
 * signed prekeys can be deleted once their grace period has passed.
 */
export abstract class SecureChatSignedPreKeyStore extends SignedPreKeyStore {
  /** Every signed prekey kept, in any order. */
  abstract getSignedPreKeys(): Promise<SignedPreKeyRecord[]>;
  /** Deletes it; resolves also when there is none. */
  abstract removeSignedPreKey(id: number): Promise<void>;
}

/**
 * libsignal's Kyber store plus the distinction it needs but cannot express:
 * a last-resort key is kept after use (one-time keys are deleted), as PQXDH
 * specifies; and listing and removal of last-resort keys, so that replaced
 * ones can be deleted after their grace period.
 */
export abstract class SecureChatKyberPreKeyStore extends KyberPreKeyStore {
  abstract saveLastResortKyberPreKey(kyberPreKeyId: number, record: KyberPreKeyRecord): Promise<void>;
  /** Every last-resort Kyber prekey kept (not the one-time ones), in any order. */
  abstract getLastResortKyberPreKeys(): Promise<KyberPreKeyRecord[]>;
  /**
   * Deletes a Kyber prekey, and for a last-resort one the uses
   * `markKyberPreKeyUsed` remembered, so a later key under the same id starts
   * clean. Resolves also when there is none.
   */
  abstract removeKyberPreKey(kyberPreKeyId: number): Promise<void>;
}

/** The ids of one signed EC prekey and the Kyber last-resort prekey uploaded with it. */
export interface SignedKeyIds {
  signedPreKeyId: number;
  kyberLastResortPreKeyId: number;
}

/**
 * Which signed keys the relay hands out. `active`: the pair the relay last
 * confirmed storing. `pending`: a pair made and kept but whose upload was not
 * confirmed (it failed, or the process stopped); the next rotation uploads
 * it again rather than making another.
 */
export interface SignedKeysState {
  active: SignedKeyIds | null;
  pending: SignedKeyIds | null;
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
  /**
   * The relay's current refresh token, so that a restarted client can
   * `resume()` without the password; null when none is kept. Single use: each
   * refresh replaces it.
   */
  abstract getRefreshToken(): Promise<string | null>;
  abstract saveRefreshToken(refreshToken: string | null): Promise<void>;
  /** Which signed prekey and Kyber last-resort prekey are at the relay; null before the first upload. */
  abstract getSignedKeysState(): Promise<SignedKeysState | null>;
  abstract saveSignedKeysState(state: SignedKeysState): Promise<void>;
  /**
   * Keeps a decrypted message until the relay has its ack. The ratchet has
   * moved past it, so a redelivered envelope can never decrypt again; it is
   * re-emitted from here instead. The client saves it in the same transaction
   * as the decryption. At most `MAX_PENDING_MESSAGES` are kept: saving one
   * more drops the oldest.
   */
  abstract savePendingMessage(envelopeId: string, message: PendingMessage): Promise<void>;
  abstract getPendingMessage(envelopeId: string): Promise<PendingMessage | null>;
  abstract removePendingMessage(envelopeId: string): Promise<void>;

  // Session repair (docs/architecture.md, "Session repair"): what was sent,
  // to resend it when a recipient device could not decrypt it, and what was
  // received, to drop a resend of a message already delivered.

  /**
   * Keeps a message sent to one recipient device, or replaces the one with
   * the same recipient, device and `timestamp` (a resend updates its
   * `serverTimestamp`). At most `MAX_SENT_MESSAGES_PER_PEER` are kept per
   * recipient username: saving one more drops the one with the oldest `timestamp`.
   */
  abstract saveSentMessage(message: SentMessageRecord): Promise<void>;
  /**
   * The messages kept for `recipient`'s device `recipientDevice` whose
   * `serverTimestamp` is at least `sinceServerTimestamp`, in the order they
   * were first sent (ascending `timestamp`).
   */
  abstract getSentMessages(recipient: string, recipientDevice: DeviceId, sinceServerTimestamp: number): Promise<SentMessageRecord[]>;
  /**
   * Remembers a message delivered to the app. At most `MAX_RECEIVED_MESSAGES`
   * are kept: saving one more drops the one saved first.
   */
  abstract saveReceivedMessage(message: ReceivedMessageRecord): Promise<void>;
  /** Whether a message with this sender, device, timestamp and content digest was saved (`receivedAt` is not compared). */
  abstract hasReceivedMessage(message: Omit<ReceivedMessageRecord, 'receivedAt'>): Promise<boolean>;
  /**
   * Forgets sent messages whose `timestamp`, received ones whose
   * `receivedAt`, and processed envelope ids whose `processedAt` is before `before`.
   */
  abstract pruneMessageLogs(before: number): Promise<void>;

  // Receive dedupe (docs/architecture.md, "Dedupe and acks"): the relay's
  // envelope ids already decrypted or dropped, so that a redelivery (its ack
  // was lost) is acked without reaching the app again.

  /** Whether `envelopeId` was saved as processed (and not pruned since). */
  abstract hasProcessedEnvelope(envelopeId: string): Promise<boolean>;
  /**
   * Remembers an envelope id as processed; saving a known id again keeps the
   * first `processedAt`. At most `MAX_PROCESSED_ENVELOPES` are kept: saving
   * one more drops the one saved first.
   */
  abstract saveProcessedEnvelope(envelopeId: string, processedAt: number): Promise<void>;

  // The outbox (docs/architecture.md, "The outbox"): sends not yet accepted
  // by the relay, in the order queued. Not bounded: an entry leaves only when
  // the relay accepted or permanently refused it.

  /** Appends `message`; one with the same `id` already queued is replaced in place (it keeps its position). */
  abstract saveOutgoing(message: OutgoingMessageRecord): Promise<void>;
  /** Every queued send, oldest queued first, as copies. */
  abstract getOutgoing(): Promise<OutgoingMessageRecord[]>;
  /** Removes the send; resolves also when there is none. */
  abstract removeOutgoing(id: string): Promise<void>;

  // Sealed sender (docs/protocol.md, "Sealed sender (client side)"): the
  // account's profile key (its access key is derived from it), the profile
  // keys peers shared in kind 7 records, and which account id (the UUID of
  // sender certificates and multi-recipient sends) is which username.

  /** This account's profile key (`PROFILE_KEY_BYTES`, the same on all its devices), or null before one is made. */
  abstract getOwnProfileKey(): Promise<Uint8Array | null>;
  abstract saveOwnProfileKey(profileKey: Uint8Array): Promise<void>;
  /** The profile key `username` shared with this account, or null (none shared, or forgotten after a refused sealed send). */
  abstract getPeerProfileKey(username: string): Promise<Uint8Array | null>;
  /** Keeps `username`'s profile key, replacing an earlier one; null forgets it. */
  abstract savePeerProfileKey(username: string, profileKey: Uint8Array | null): Promise<void>;
  /** Whether this install has sent this account's profile key to `username` (kind 7). */
  abstract hasSharedProfileKey(username: string): Promise<boolean>;
  abstract saveSharedProfileKey(username: string, shared: boolean): Promise<void>;
  /** The account id of `username`, or null when not known. */
  abstract getAccountId(username: string): Promise<string | null>;
  /** The username of the account `accountId` (lower-case UUID), or null when not known. */
  abstract getUsernameOfAccount(accountId: string): Promise<string | null>;
  /**
   * Records that `username` is the account `accountId` (kept both ways). A
   * username saved again with another account id (the name was taken by a
   * new account after the old one was deleted) drops the old id's entry.
   */
  abstract saveAccountId(username: string, accountId: string): Promise<void>;

  // Groups (docs/architecture.md, "Groups"): each group's latest state and
  // this device's sender key epoch in it. Not bounded: a group is kept also
  // after this account was removed from it (so that it knows it was).

  /** The record of the group `groupId` (base64url, `groupIdToString`), or null. */
  abstract getGroup(groupId: string): Promise<GroupRecord | null>;
  /** Replaces the record of `record.state.id`'s group. */
  abstract saveGroup(record: GroupRecord): Promise<void>;
  /** Every group record, in any order, as copies. */
  abstract getGroups(): Promise<GroupRecord[]>;

  // Gap detection (docs/architecture.md, "Gap detection"): the position this
  // install last used in its sequence to each recipient account, and per
  // sender device and recipient account the sequence it receives; the
  // `recipient` of a group's is `group:<group id>` (`groupSequenceKey`). Not
  // bounded by count: one entry per peer (per peer device), like sessions;
  // each track's missing ranges are bounded (`MAX_MISSING_RANGES`).
  /** The stream and number of the last message this install numbered for `recipient`, or null before the first. */
  abstract getSendSequence(recipient: string): Promise<MessageSequence | null>;
  /** Replaces the last position used for `recipient`; the client saves it with the outbox entry that uses it. */
  abstract saveSendSequence(recipient: string, sequence: MessageSequence): Promise<void>;
  /** The track of `sender`'s device `senderDevice` to the account `recipient`, as a copy, or null. */
  abstract getSequenceTrack(sender: string, senderDevice: DeviceId, recipient: string): Promise<SequenceTrack | null>;
  /** Replaces the track of `track.sender`, `track.senderDevice` and `track.recipient`. */
  abstract saveSequenceTrack(track: SequenceTrack): Promise<void>;
  /** Every track, in any order, as copies. */
  abstract getSequenceTracks(): Promise<SequenceTrack[]>;
  /** Deletes every track whose `recipient` is `recipient` (a group's, when this account joins it again). */
  abstract deleteSequenceTracks(recipient: string): Promise<void>;
}

/** A send waiting in the outbox. */
export interface OutgoingMessageRecord {
  /** The send's UUID, also the relay request's `id` (a repeat of an accepted send stores nothing). */
  id: string;
  /** Canonical username. */
  recipient: string;
  /** The padded content record (`session/content.ts`), encrypted afresh on each attempt. */
  content: Uint8Array;
  /** The content's timestamp. */
  timestamp: number;
  /** This install's clock when `send` queued it, ms since the epoch. */
  queuedAt: number;
}

/** How long a sent message may be resent, and a received one is remembered: 24 hours. */
export const SESSION_REPAIR_WINDOW_MS = 24 * 60 * 60 * 1000;
/** How many sent messages a metadata store keeps per recipient username (all its devices). */
export const MAX_SENT_MESSAGES_PER_PEER = 100;
/** How many received messages a metadata store remembers, over all senders. */
export const MAX_RECEIVED_MESSAGES = 5000;
/** How many processed envelope ids a metadata store remembers. */
export const MAX_PROCESSED_ENVELOPES = 10_000;

/** A message this install sent to one recipient device, kept so that it can be resent. */
export interface SentMessageRecord {
  /** Canonical username. */
  recipient: string;
  recipientDevice: DeviceId;
  /** The sender timestamp inside the content; unique per sending install. */
  timestamp: number;
  /** The relay's `serverTimestamp` of the latest send of it to this device. */
  serverTimestamp: number;
  /** The encoded content record (`session/content.ts`), as encrypted. */
  content: Uint8Array;
}

/** A message delivered to the app, remembered to recognise a resend of it. */
export interface ReceivedMessageRecord {
  sender: string;
  senderDevice: DeviceId;
  /** The sender timestamp inside the content. */
  timestamp: number;
  /** SHA-256 of the decrypted content record (32 bytes). */
  contentDigest: Uint8Array;
  /** This install's clock when it was received, ms since the epoch. */
  receivedAt: number;
}

/** How many decrypted-but-unacked messages a metadata store keeps. */
export const MAX_PENDING_MESSAGES = 1000;

/** A message decrypted and not yet acked at the relay. */
export interface PendingMessage {
  /** The sender the relay named in the envelope (canonical username). */
  sender: string;
  senderDevice: DeviceId;
  /** The decrypted content record, as libsignal returned it (`session/content.ts` format). */
  content: Uint8Array;
}

/** Every store the client uses, grouped (the libsignal abstract store classes plus metadata). */
export interface SecureChatStores {
  session: SecureChatSessionStore;
  identity: SecureChatIdentityKeyStore;
  preKey: PreKeyStore;
  signedPreKey: SecureChatSignedPreKeyStore;
  kyberPreKey: SecureChatKyberPreKeyStore;
  senderKey: SenderKeyStore;
  metadata: SecureChatMetadataStore;
  /**
   * Runs `fn` as one atomic unit: every store call it makes through the
   * `stores` it is given commits together when it resolves, or none does when
   * it rejects (the rejection is passed on). While it runs, calls through any
   * other reference to these stores, and other transactions, wait.
   *
   * `fn` must use the `stores` argument, never the outer stores: libsignal
   * calls the stores from native code, which loses any async context, so the
   * transaction cannot recognise its own calls otherwise (knex's
   * `transaction(trx => ...)` pattern). A call on the outer stores from inside
   * `fn` waits for `fn` itself and never returns. `stores.transaction` inside
   * `fn` joins the open transaction.
   *
   * Optional: without it the client runs each step's store calls one by one,
   * and a crash between them can leave a step half done.
   */
  transaction?<T>(fn: (stores: SecureChatStores) => Promise<T>): Promise<T>;
}

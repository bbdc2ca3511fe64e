/**
 * Groups on top of the client's sessions and sealed sender
 * (docs/architecture.md, "Groups"): keeps each group's record, sends group
 * updates (kind 8) and this device's sender key (kind 9) over the 1:1
 * sessions, and sends group messages (kind 10) as ONE multi-recipient
 * sealed-sender upload to every member device, this account's other
 * devices included.
 *
 * Locking: a group's record is read, changed and saved under that group's
 * lock, and nothing holding the lock waits for the network or for a peer's
 * serial queue; sends happen outside it. So the receive path (which runs in
 * the sender's serial queue) can always take the lock.
 */

import { randomBytes, randomUUID } from 'node:crypto';
import { ProtocolAddress, type SenderCertificate } from '@signalapp/libsignal-client';
import { ErrorCode } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { derivedRequestId, type DeviceId } from '../ids.js';
import { accountAddressStores, combinedAccessKey } from '../sealed/index.js';
import { ContentKind, MAX_BODY_BYTES, decodeContent, encodeContent, type MessageContent } from '../session/content.js';
import { groupSequenceKey, numberGroupSend } from '../session/message-sequence.js';
import type { SecureChatStores } from '../stores/stores.js';
import { acceptDistribution, createDistribution, decryptFromGroup, encryptForGroup, sealForGroup } from './group-crypto.js';
import {
  decideGroupUpdate,
  deviceKey,
  isAdmin,
  isMember,
  newDistributionId,
  newGroupState,
  recordAfterUpdate,
  withMemberRemoved,
  withMembersAdded,
  type GroupRecord,
  type UpdateRefusal,
} from './group-rules.js';
import {
  GROUP_ID_BYTES,
  GroupWireError,
  encodeGroupMessageBody,
  encodeGroupUpdateBody,
  encodeSenderKeyDistributionBody,
  groupIdFromString,
  groupIdToString,
  parseGroupMessageBody,
  parseGroupUpdateBody,
  parseSenderKeyDistributionBody,
  type GroupMember,
  type GroupState,
} from './group-wire.js';

/** Correction rounds after a 409 or 410 of a multi-recipient send (as for 1:1 fan-out). */
const MAX_GROUP_SEND_CORRECTIONS = 3;

/** A group as the API shows it. */
export interface GroupInfo {
  /** base64url of the 32-byte group id. */
  id: string;
  title: string;
  revision: number;
  /** Member usernames, sorted; this account's included while it is a member. */
  members: string[];
  admins: string[];
  /** Whether this account is a member (false once it was removed). */
  member: boolean;
}

/** What `groupUpdated` reports: a group update this install applied. */
export interface GroupUpdated {
  group: GroupInfo;
  /** The admin who made the change (canonical username). */
  author: string;
  added: string[];
  removed: string[];
  /** This account was removed: it gets nothing sent to the group from now on. */
  removedSelf: boolean;
}

/** What `sendGroupMessage` returns. */
export interface SentGroupMessage {
  /** The send's UUID (the relay stores a repeat of it once). */
  id: string;
  /** The timestamp inside the encrypted content. */
  timestamp: number;
  serverTimestamp: number;
  /** How many devices of the other members the one upload addressed. */
  recipientDevices: number;
  /** Whether that upload was unauthenticated (every access key known) or the authenticated fallback. */
  sealed: boolean;
  /**
   * This account's other devices, reached by a second, authenticated upload
   * of the same group ciphertext (as Signal's sync messages: the relay
   * cannot exempt the sending device from a sealed upload to its own account).
   */
  ownDevices: number;
}

/** A group message opened from a sealed envelope. */
export interface OpenedGroupMessage {
  content: MessageContent & { kind: ContentKind.Text | ContentKind.Bytes };
  group: { id: string; title: string };
}

/** What the client lends the group code. Every method may throw the client's usual errors. */
export interface GroupHost {
  readonly stores: SecureChatStores;
  transaction<T>(fn: (stores: SecureChatStores) => Promise<T>): Promise<T>;
  localAccount(): { username: string; deviceId: DeviceId };
  ownAccountId(): Promise<string>;
  nextContentTimestamp(): number;
  /**
   * The account id of `username`: from the store, else from its bundle
   * (opening sessions with its devices on the way).
   */
  accountIdOf(username: string): Promise<string>;
  /** The devices of `username` this install has sessions with, opening them from its bundle when there are none; never this device. */
  devicesOf(username: string): Promise<DeviceId[]>;
  /** A control record to every device of `username` over the 1:1 sessions (this account: its other devices); the devices it went to. */
  sendContent(username: string, plaintext: Uint8Array<ArrayBuffer>): Promise<DeviceId[]>;
  /** Applies a 409/410 of a multi-recipient send to the device lists it names; false when `error` is neither. */
  correctDevices(error: unknown): Promise<boolean>;
  senderCertificate(): Promise<SenderCertificate>;
  /** The access key of `username`'s account (this account's own too), or null when its profile key is unknown. */
  accessKeyOf(username: string): Promise<Uint8Array | null>;
  /** `POST /v1/messages/multi-recipient`, with the combined access key or, when null, authenticated. */
  sendMultiRecipient(payload: Uint8Array, accessKey: Uint8Array | null, id: string): Promise<number>;
  /** Reports a failure nobody awaits (an `error` event). */
  report(error: unknown): void;
  emitGroupUpdated(update: GroupUpdated): void;
}

export const groupInfoOf = (record: GroupRecord, self: string): GroupInfo => ({
  id: groupIdToString(record.state.id),
  title: record.state.title,
  revision: record.state.revision,
  members: record.state.members.map((m) => m.username),
  admins: [...record.state.admins],
  member: isMember(record.state, self),
});

const invalid = (message: string, cause?: unknown) => new SecureChatError(SecureChatErrorCode.InvalidArgument, message, { cause });

export class GroupService {
  /** Per group id: the tail of its record updates. */
  private readonly locks = new Map<string, Promise<unknown>>();

  constructor(private readonly host: GroupHost) {}

  // --- the API ------------------------------------------------------------------

  async groups(): Promise<GroupInfo[]> {
    const self = this.host.localAccount().username;
    return (await this.host.stores.metadata.getGroups()).map((record) => groupInfoOf(record, self)).sort((a, b) => (a.id < b.id ? -1 : 1));
  }

  /**
   * A new group with this account as its only admin: saved, then its state
   * (kind 8) and this device's sender key (kind 9) go to every member device
   * and this account's other devices.
   */
  async createGroup(title: string, usernames: string[]): Promise<GroupInfo> {
    const self = this.host.localAccount().username;
    const others = await this.membersOf(usernames.filter((u) => u !== self));
    const creator: GroupMember = { username: self, accountId: await this.host.ownAccountId() };
    let state: GroupState;
    try {
      state = newGroupState(new Uint8Array(randomBytes(GROUP_ID_BYTES)), title, creator, others);
    } catch (cause) {
      throw invalid(cause instanceof Error ? cause.message : 'not a valid group', cause);
    }
    const record: GroupRecord = { state, distributionId: newDistributionId(), sharedWith: [] };
    await this.host.stores.metadata.saveGroup(record);
    await this.publish(state, []);
    await this.shareSenderKey(groupIdToString(state.id));
    return groupInfoOf(record, self);
  }

  /** Adds members (an admin only): the new state to everyone, then this device's current sender key to the newcomers (no history). */
  async addGroupMembers(groupId: string, usernames: string[]): Promise<GroupInfo> {
    const self = this.host.localAccount().username;
    const current = await this.adminRecord(groupId);
    const added = await this.membersOf(usernames.filter((u) => u !== self && !isMember(current.state, u)));
    if (added.length === 0) return groupInfoOf(current, self);
    const record = await this.change(groupId, (state) => withMembersAdded(state, added));
    await this.publish(record.state, []);
    await this.shareSenderKey(groupId);
    return groupInfoOf(record, self);
  }

  /**
   * Removes a member (an admin only): the new state to the remaining members
   * and to the removed one (so that it knows), and this device starts a new
   * sender key shared with the remaining member devices only. The other
   * member devices do the same when the update reaches them.
   */
  async removeGroupMember(groupId: string, username: string): Promise<GroupInfo> {
    const self = this.host.localAccount().username;
    const current = await this.adminRecord(groupId);
    if (!isMember(current.state, username)) throw invalid(`${username} is not a member of the group`);
    const record = await this.change(groupId, (state) => withMemberRemoved(state, username), true);
    await this.publish(record.state, [username]);
    await this.shareSenderKey(groupId);
    return groupInfoOf(record, self);
  }

  /**
   * One multi-recipient sealed upload of `content` (a text or bytes record)
   * to every member device. Devices without this device's current sender
   * key get it first, over their 1:1 sessions.
   */
  async sendGroupMessage(groupId: string, kind: ContentKind.Text | ContentKind.Bytes, body: Uint8Array, id: string): Promise<SentGroupMessage> {
    if (body.length > MAX_BODY_BYTES) throw invalid(`body larger than ${MAX_BODY_BYTES} bytes`);
    const self = this.host.localAccount();
    await this.requireRecord(groupId);
    // The message's number in this device's sequence to the group (docs/architecture.md, "Gap detection"),
    // taken once per send id and kept in the group's record in one transaction: every encryption below
    // (a device correction encrypts again) and a retry of this send id carry the same number.
    const { timestamp, plaintext } = await this.locked(groupId, () =>
      this.host.transaction(async (stores) => {
        const record = await stores.metadata.getGroup(groupId);
        if (!record) throw invalid(`no group ${groupId}`);
        if (!isMember(record.state, self.username)) throw new SecureChatError(SecureChatErrorCode.InvalidState, 'this account is no longer a member of the group');
        const { sequence, next } = numberGroupSend(record.sendSequence, record.distributionId, id);
        if (next) await stores.metadata.saveGroup({ ...record, sendSequence: next });
        const at = this.host.nextContentTimestamp();
        const groupBody = encodeGroupMessageBody({ groupId: record.state.id, innerKind: kind, body });
        return { timestamp: at, plaintext: encodeContent({ kind: ContentKind.GroupMessage, timestamp: at, body: groupBody, sequence }) };
      }),
    );
    const certificate = await this.host.senderCertificate();
    for (let round = 0; ; round++) {
      const current = await this.shareSenderKey(groupId);
      // The other members' devices in one upload, sealed when every access key is known; this
      // account's other devices in a second, authenticated one (see SentGroupMessage.ownDevices).
      const members: ProtocolAddress[] = [];
      const own: ProtocolAddress[] = [];
      const usernames = new Map<string, string>();
      const accessKeys: Array<Uint8Array | null> = [];
      for (const member of current.state.members) {
        const devices = await this.host.devicesOf(member.username).catch((error: unknown) => this.unreachable(member.username, error));
        if (devices.length === 0) continue;
        usernames.set(member.accountId, member.username);
        const isSelf = member.username === self.username;
        if (!isSelf) accessKeys.push(await this.host.accessKeyOf(member.username));
        for (const deviceId of devices) (isSelf ? own : members).push(ProtocolAddress.new(member.accountId, deviceId));
      }
      if (members.length === 0 && own.length === 0) {
        throw new SecureChatError(SecureChatErrorCode.InvalidState, 'the group has no other member device to send to');
      }
      const payloads = await this.host.transaction(async (stores) => {
        const ciphertext = await encryptForGroup(ProtocolAddress.new(self.username, self.deviceId), current.distributionId, stores.senderKey, plaintext);
        const adapted = accountAddressStores(stores, usernames);
        const seal = (recipients: ProtocolAddress[]) =>
          recipients.length === 0
            ? null
            : sealForGroup({ ciphertext, certificate, groupId: current.state.id, recipients, identityStore: adapted.identity, sessionStore: adapted.session });
        return { members: await seal(members), own: await seal(own) };
      });
      const accessKey = accessKeys.every((key): key is Uint8Array => key !== null) ? combinedAccessKey(accessKeys as Uint8Array[]) : null;
      try {
        const upload = payloads.members ? await this.sendUpload(payloads.members, accessKey, id) : null;
        const ownAt = payloads.own ? await this.host.sendMultiRecipient(payloads.own, null, derivedRequestId('group-own-copy', id)) : null;
        const serverTimestamp = upload?.at ?? (ownAt as number);
        return { id, timestamp, serverTimestamp, recipientDevices: members.length, sealed: upload?.sealed ?? false, ownDevices: own.length };
      } catch (error) {
        if (round >= MAX_GROUP_SEND_CORRECTIONS || !(await this.host.correctDevices(error))) throw error;
      }
    }
  }

  // --- receiving --------------------------------------------------------------------

  /**
   * A group update (kind 8) from `author` over a 1:1 session: applied by the
   * rules of `decideGroupUpdate`, reported with `groupUpdated`. On a removal
   * that leaves this account in, this device starts a new sender key and
   * shares it with the remaining member devices (in the background: the
   * receive path holds the author's serial queue).
   * @returns why it was not applied, or null.
   */
  async receiveGroupUpdate(author: string, content: MessageContent): Promise<UpdateRefusal | null> {
    const self = this.host.localAccount().username;
    const update = parseGroupUpdateBody(content.body);
    const groupId = groupIdToString(update.id);
    const outcome = await this.locked(groupId, () =>
      this.host.transaction(async (stores) => {
        const record = await stores.metadata.getGroup(groupId);
        const decision = decideGroupUpdate(record?.state ?? null, update, author, self);
        if (!decision.applied) return { decision, next: null };
        const next = recordAfterUpdate(record, decision);
        await stores.metadata.saveGroup(next);
        // A member again: what it was not sent while out is not missing (docs/architecture.md, "Gap detection").
        if (decision.selfAdded) await stores.metadata.deleteSequenceTracks(groupSequenceKey(groupId));
        return { decision, next };
      }),
    );
    const { decision, next } = outcome;
    if (!decision.applied || !next) return decision.applied ? null : decision.reason;
    this.host.emitGroupUpdated({
      group: groupInfoOf(next, self),
      author,
      added: decision.added.map((m) => m.username),
      removed: decision.removed.map((m) => m.username),
      removedSelf: decision.selfRemoved,
    });
    if (decision.rotate) {
      void this.shareSenderKey(groupId).catch((error: unknown) => this.host.report(error));
    }
    return null;
  }

  /**
   * A sender key (kind 9) from `sender`'s device: kept whatever the group
   * (it may arrive before the update that names its sender); a group
   * message is only accepted from a member, which is checked when one comes.
   */
  async receiveSenderKey(sender: string, senderDevice: DeviceId, content: MessageContent, stores: SecureChatStores = this.host.stores): Promise<void> {
    const { distribution } = parseSenderKeyDistributionBody(content.body);
    await acceptDistribution(ProtocolAddress.new(sender, senderDevice), distribution, stores.senderKey);
  }

  /**
   * A SenderKey message from a sealed envelope (the sealed receive path has
   * opened it and named its sender): decrypted with the sender's key for
   * the group, and accepted when the group is known, names both the sender
   * and this account as members, and the content is a group message of the
   * same group.
   * @throws {DuplicateGroupMessage} for a message decrypted before (a replay).
   * @throws {SecureChatError} `DecryptionFailed` (no sender key: e.g. this account was removed and the
   *   sender rotated; or a bad message), `MalformedContent` (not a group message of a group this
   *   account is in, or from a non-member).
   */
  async openGroupMessage(
    sender: string,
    senderDevice: DeviceId,
    ciphertext: Uint8Array,
    usmcGroupId: Uint8Array | null,
    stores: SecureChatStores,
  ): Promise<{ plaintext: Uint8Array<ArrayBuffer>; opened: OpenedGroupMessage }> {
    const self = this.host.localAccount().username;
    if (!usmcGroupId || usmcGroupId.length !== GROUP_ID_BYTES) throw malformed('a sender-key message without a group id');
    const groupId = groupIdToString(usmcGroupId);
    const record = await stores.metadata.getGroup(groupId);
    if (!record) throw malformed(`a message to unknown group ${groupId}`);
    if (!isMember(record.state, self)) throw malformed(`a message to group ${groupId}, which this account was removed from`);
    if (!isMember(record.state, sender)) throw malformed(`a message to group ${groupId} from ${sender}, who is not a member`);
    const plaintext = await decryptFromGroup(ProtocolAddress.new(sender, senderDevice), stores.senderKey, ciphertext);
    const opened = describeGroupMessage(plaintext, record);
    if (opened.group.id !== groupId) throw malformed('the group message names another group than its envelope');
    return { plaintext, opened };
  }

  /**
   * A group message decrypted before (kept as a pending message until its
   * ack), described again for a redelivery.
   * @throws {SecureChatError} `MalformedContent` when it is not a group message of a known group.
   */
  async recallGroupMessage(plaintext: Uint8Array, stores: SecureChatStores): Promise<OpenedGroupMessage> {
    let groupId: string;
    try {
      groupId = groupIdToString(parseGroupMessageBody(decodeContent(plaintext).body).groupId);
    } catch (cause) {
      throw malformed('a kept group message does not parse', cause);
    }
    const record = await stores.metadata.getGroup(groupId);
    if (!record) throw malformed(`a kept message of unknown group ${groupId}`);
    return describeGroupMessage(plaintext, record);
  }

  // --- internals ----------------------------------------------------------------

  /** Sends `state` as a group update to every member and to `alsoTo` (removed members), this account's other devices included. */
  private async publish(state: GroupState, alsoTo: string[]): Promise<void> {
    const self = this.host.localAccount().username;
    const plaintext = encodeContent({ kind: ContentKind.GroupUpdate, timestamp: this.host.nextContentTimestamp(), body: encodeGroupUpdateBody(state) });
    const recipients = [...new Set([...state.members.map((m) => m.username), ...alsoTo])];
    for (const username of recipients) {
      try {
        await this.host.sendContent(username, plaintext);
      } catch (error) {
        // This account without another device: nothing to sync. Anyone else: reported, the others still get it.
        if (username === self && this.isNoOtherDevice(error)) continue;
        this.host.report(error);
      }
    }
  }

  /**
   * Gives this device's current sender key to every member device that does
   * not have it yet (kind 9 over the 1:1 sessions, to the whole account),
   * and returns the record as it then stands.
   */
  private async shareSenderKey(groupId: string): Promise<GroupRecord> {
    const self = this.host.localAccount();
    let record = await this.requireRecord(groupId);
    if (!isMember(record.state, self.username)) return record;
    const distribution = await this.host.transaction((stores) =>
      createDistribution(ProtocolAddress.new(self.username, self.deviceId), record.distributionId, stores.senderKey),
    );
    const plaintext = encodeContent({
      kind: ContentKind.SenderKeyDistribution,
      timestamp: this.host.nextContentTimestamp(),
      body: encodeSenderKeyDistributionBody(record.state.id, distribution),
    });
    for (const member of record.state.members) {
      const devices = await this.host.devicesOf(member.username).catch((error: unknown) => this.unreachable(member.username, error));
      if (devices.every((deviceId) => record.sharedWith.includes(deviceKey(member.username, deviceId)))) continue;
      const reached = await this.host.sendContent(member.username, plaintext);
      record = await this.locked(groupId, async () => {
        const latest = await this.requireRecord(groupId);
        // A rotation meanwhile: what was sent is the old key, and the new one is shared afresh.
        if (latest.distributionId !== record.distributionId) return latest;
        const sharedWith = [...new Set([...latest.sharedWith, ...reached.map((deviceId) => deviceKey(member.username, deviceId))])];
        const next = { ...latest, sharedWith };
        await this.host.stores.metadata.saveGroup(next);
        return next;
      });
    }
    return record;
  }

  private async sendUpload(payload: Uint8Array, accessKey: Uint8Array | null, id: string): Promise<{ at: number; sealed: boolean }> {
    if (accessKey) {
      try {
        return { at: await this.host.sendMultiRecipient(payload, accessKey, id), sealed: true };
      } catch (error) {
        // Some member's key changed: the authenticated fallback, where the relay knows the sender.
        if (!SecureChatError.isRelay(error, ErrorCode.SealedSenderRefused)) throw error;
      }
    }
    return { at: await this.host.sendMultiRecipient(payload, null, id), sealed: false };
  }

  /** Applies `change` to the group's state under its lock (and, with `rotate`, starts a new sender key). */
  private change(groupId: string, change: (state: GroupState) => GroupState, rotate = false): Promise<GroupRecord> {
    return this.locked(groupId, async () => {
      const record = await this.requireRecord(groupId);
      let state: GroupState;
      try {
        state = change(record.state);
      } catch (cause) {
        throw invalid(cause instanceof Error ? cause.message : 'not a valid group change', cause);
      }
      const next: GroupRecord = rotate ? { ...record, state, distributionId: newDistributionId(), sharedWith: [] } : { ...record, state };
      await this.host.stores.metadata.saveGroup(next);
      return next;
    });
  }

  private async adminRecord(groupId: string): Promise<GroupRecord> {
    const record = await this.requireRecord(groupId);
    if (!isAdmin(record.state, this.host.localAccount().username)) {
      throw new SecureChatError(SecureChatErrorCode.InvalidState, 'only an admin of the group can change it');
    }
    return record;
  }

  private async requireRecord(groupId: string): Promise<GroupRecord> {
    try {
      groupIdFromString(groupId);
    } catch (cause) {
      throw invalid('not a group id', cause);
    }
    const record = await this.host.stores.metadata.getGroup(groupId);
    if (!record) throw invalid(`no group ${groupId}`);
    return record;
  }

  private async membersOf(usernames: string[]): Promise<GroupMember[]> {
    const members: GroupMember[] = [];
    for (const username of [...new Set(usernames)]) members.push({ username, accountId: await this.host.accountIdOf(username) });
    return members;
  }

  /**
   * A member whose devices cannot be had: an account that no longer exists
   * (reported; the group still reaches the others), or this account with no
   * other device. Anything else is passed on.
   */
  private unreachable(username: string, error: unknown): DeviceId[] {
    if (username === this.host.localAccount().username && this.isNoOtherDevice(error)) return [];
    if (SecureChatError.isRelay(error, ErrorCode.UnknownRecipient)) {
      this.host.report(error);
      return [];
    }
    throw error;
  }

  private isNoOtherDevice(error: unknown): boolean {
    return SecureChatError.isRelay(error, ErrorCode.UnknownRecipient) || SecureChatError.is(error, SecureChatErrorCode.InvalidArgument);
  }

  private locked<T>(groupId: string, task: () => Promise<T>): Promise<T> {
    const run = (this.locks.get(groupId) ?? Promise.resolve()).then(task, task);
    const tail = run.catch(() => undefined);
    this.locks.set(groupId, tail);
    void tail.then(() => {
      if (this.locks.get(groupId) === tail) this.locks.delete(groupId);
    });
    return run;
  }
}

const malformed = (message: string, cause?: unknown) => new SecureChatError(SecureChatErrorCode.MalformedContent, message, { cause });

/** The app's view of a decrypted group message (kind 10) of `record`'s group. @throws {SecureChatError} `MalformedContent`. */
function describeGroupMessage(plaintext: Uint8Array, record: GroupRecord): OpenedGroupMessage {
  let content: MessageContent;
  let body: ReturnType<typeof parseGroupMessageBody>;
  try {
    content = decodeContent(plaintext);
    if (content.kind !== ContentKind.GroupMessage) throw new GroupWireError(`a sender-key message of kind ${content.kind}`);
    body = parseGroupMessageBody(content.body);
  } catch (cause) {
    throw malformed(cause instanceof Error ? cause.message : 'not a group message', cause);
  }
  const kind = body.innerKind === 1 ? ContentKind.Text : ContentKind.Bytes;
  return {
    content: { kind, timestamp: content.timestamp, body: body.body, ...(content.sequence ? { sequence: content.sequence } : {}) },
    group: { id: groupIdToString(body.groupId), title: record.state.title },
  };
}

/** A fresh send id. */
export const newGroupSendId = (): string => randomUUID();


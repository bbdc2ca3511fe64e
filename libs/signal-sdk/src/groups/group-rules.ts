/**
 * The group rules (docs/architecture.md, "Groups"), kept free of I/O so
 * that they are tested alone:
 *
 * - A group changes only by a group update carrying its whole new state.
 * - An update is applied when its author is an admin of the state this
 *   install holds and its revision is newer; an older or equal revision is
 *   ignored (a replay or a late copy), a non-admin's is refused. A group
 *   this install does not know yet is taken from an update whose author is
 *   an admin of the new state and that names this account as a member.
 * - A member that leaves the state was removed: every remaining member
 *   device then starts a new sender key (a new distribution id), so that
 *   nothing sent afterwards can be read with a key the removed one holds.
 */

import { randomUUID } from 'node:crypto';
import type { GroupSendSequence } from '../session/message-sequence.js';
import { checkGroupState, type GroupMember, type GroupState } from './group-wire.js';

/** What this install keeps of a group (the metadata store's group record). */
export interface GroupRecord {
  state: GroupState;
  /**
   * This device's sender key for the group's current epoch: the libsignal
   * distribution id (UUID) it encrypts under. A new one after each removal.
   */
  distributionId: string;
  /** Member devices (`username.deviceId`) that were sent this device's distribution message for `distributionId`. */
  sharedWith: string[];
  /**
   * This device's position in its sequence to the group (gap detection,
   * `numberGroupSend`); absent before its first group message. Kept across
   * a new sender key, which starts a new stream when the next send is numbered.
   */
  sendSequence?: GroupSendSequence;
}

export enum UpdateRefusal {
  /** The revision is not newer than the one held: a replay or a late copy. */
  Stale = 'stale',
  /** The author is not an admin of the state held (or, for an unknown group, of the new one). */
  NotAdmin = 'not-admin',
  /** An unknown group that does not name this account. */
  NotMember = 'not-member',
}

export type UpdateDecision =
  | {
      applied: true;
      state: GroupState;
      added: GroupMember[];
      removed: GroupMember[];
      /** This account is no longer a member. */
      selfRemoved: boolean;
      /**
       * This account is a member again after it was removed (or the group is
       * new to it): what it follows of the group's sequences starts again.
       */
      selfAdded: boolean;
      /** Members were removed and this account stays: start a new sender key. */
      rotate: boolean;
    }
  | { applied: false; reason: UpdateRefusal };

const memberKey = (member: GroupMember) => `${member.username}/${member.accountId}`;

/** Whether `username` is a member of `state`. */
export const isMember = (state: GroupState, username: string): boolean => state.members.some((m) => m.username === username);

/** Whether `username` is an admin of `state`. */
export const isAdmin = (state: GroupState, username: string): boolean => state.admins.includes(username);

/**
 * Decides what to do with `update`, authored by `author` (the sender the
 * session authenticated), for this account `self`, over `current` (null for
 * a group not known yet). The update must have passed `checkGroupState`
 * (the wire codec does that) and name the same group as `current`.
 */
export function decideGroupUpdate(current: GroupState | null, update: GroupState, author: string, self: string): UpdateDecision {
  if (!current) {
    if (!isAdmin(update, author)) return { applied: false, reason: UpdateRefusal.NotAdmin };
    if (!isMember(update, self)) return { applied: false, reason: UpdateRefusal.NotMember };
    return {
      applied: true,
      state: update,
      added: update.members.filter((m) => m.username !== self),
      removed: [],
      selfRemoved: false,
      selfAdded: true,
      rotate: false,
    };
  }
  if (update.revision <= current.revision) return { applied: false, reason: UpdateRefusal.Stale };
  if (!isAdmin(current, author)) return { applied: false, reason: UpdateRefusal.NotAdmin };
  const before = new Set(current.members.map(memberKey));
  const after = new Set(update.members.map(memberKey));
  const removed = current.members.filter((m) => !after.has(memberKey(m)));
  const added = update.members.filter((m) => !before.has(memberKey(m)));
  const selfRemoved = !isMember(update, self);
  const selfAdded = !isMember(current, self) && !selfRemoved;
  return { applied: true, state: update, added, removed, selfRemoved, selfAdded, rotate: removed.length > 0 && !selfRemoved };
}

const byUsername = (a: GroupMember, b: GroupMember) => (a.username < b.username ? -1 : a.username > b.username ? 1 : 0);

/** A new group of revision 1 whose only admin is `creator`. @throws {GroupWireError} */
export function newGroupState(id: Uint8Array, title: string, creator: GroupMember, others: GroupMember[]): GroupState {
  const members = uniqueMembers([creator, ...others]);
  const state: GroupState = { id, title, revision: 1, members, admins: [creator.username] };
  checkGroupState(state);
  return state;
}

/** `state` with `added` as members (those already in stay as they are), one revision on. @throws {GroupWireError} */
export function withMembersAdded(state: GroupState, added: GroupMember[]): GroupState {
  const next: GroupState = { ...state, revision: state.revision + 1, members: uniqueMembers([...state.members, ...added]) };
  checkGroupState(next);
  return next;
}

/** `state` without `username` (as member and admin), one revision on. @throws {GroupWireError} when no admin would be left. */
export function withMemberRemoved(state: GroupState, username: string): GroupState {
  const next: GroupState = {
    ...state,
    revision: state.revision + 1,
    members: state.members.filter((m) => m.username !== username),
    admins: state.admins.filter((a) => a !== username),
  };
  checkGroupState(next);
  return next;
}

function uniqueMembers(members: GroupMember[]): GroupMember[] {
  const seen = new Map<string, GroupMember>();
  for (const member of members) if (!seen.has(member.username)) seen.set(member.username, member);
  return [...seen.values()].sort(byUsername);
}

/** A fresh distribution id: a new sender key epoch for this device. */
export const newDistributionId = (): string => randomUUID();

/**
 * The record after `decision` was applied over `record` (null: a group new
 * to this install). A new sender key keeps the send position (its next
 * send starts a new stream).
 */
export function recordAfterUpdate(record: GroupRecord | null, decision: Extract<UpdateDecision, { applied: true }>): GroupRecord {
  if (!record) return { state: decision.state, distributionId: newDistributionId(), sharedWith: [] };
  if (decision.rotate) return { ...record, state: decision.state, distributionId: newDistributionId(), sharedWith: [] };
  return { ...record, state: decision.state };
}

/** The key of a member device in `GroupRecord.sharedWith`. */
export const deviceKey = (username: string, deviceId: number): string => `${username}.${deviceId}`;

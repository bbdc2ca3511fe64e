/**
 * Bodies of the group content kinds (docs/protocol.md, "Groups"). They sit
 * inside the ordinary content record (`session/content.ts`); this file
 * knows only their bodies, so that the record codec can check them without
 * an import cycle. All integers big-endian.
 *
 *   8 group update   32 group id | u64 revision | u8 t | t bytes title (UTF-8) |
 *                    u8 m | m x member
 *                    member: u8 n | n bytes username (canonical) | 16 bytes account id (UUID) |
 *                            u8 role (0 member, 1 admin)
 *   9 sender key     32 group id | libsignal SenderKeyDistributionMessage bytes (rest)
 *   10 group message 32 group id | u8 inner kind (1 text, 2 bytes) | inner body
 */

import { SenderKeyDistributionMessage } from '@signalapp/libsignal-client';
import { USERNAME_PATTERN } from '@chat/protocol';

/** A group id: 32 random bytes (base64url without padding in the API). */
export const GROUP_ID_BYTES = 32;
/** Largest group, members counted once per account (Signal's groups go further; one multi-recipient upload stays small this way). */
export const MAX_GROUP_MEMBERS = 100;
/** Longest group title, UTF-8 bytes. */
export const MAX_GROUP_TITLE_BYTES = 128;

const ACCOUNT_ID_BYTES = 16;
const ROLE_MEMBER = 0;
const ROLE_ADMIN = 1;
const INNER_TEXT = 1;
const INNER_BYTES = 2;
const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** A group body that is not exactly what this version writes. */
export class GroupWireError extends Error {
  override readonly name = 'GroupWireError';
}

export interface GroupMember {
  /** Canonical username: the address of its sessions and sender keys. */
  username: string;
  /** The account id (lower-case UUID): its address in a multi-recipient send and in sender certificates. */
  accountId: string;
}

/** A group's state as a group update carries it: always whole, never a delta. */
export interface GroupState {
  /** 32 bytes. */
  id: Uint8Array;
  title: string;
  /** Increases with every update; an update is applied only over an older one. */
  revision: number;
  /** Every member account, this one included, sorted by username. */
  members: GroupMember[];
  /** Usernames of the members allowed to change the group, sorted; at least one. */
  admins: string[];
}

export interface GroupMessageBody {
  groupId: Uint8Array;
  /** 1 text or 2 bytes, as the record kinds. */
  innerKind: 1 | 2;
  body: Uint8Array;
}

export interface SenderKeyDistributionBody {
  groupId: Uint8Array;
  /** libsignal `SenderKeyDistributionMessage.serialize()` bytes, checked to deserialize. */
  distribution: Uint8Array;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function utf8(bytes: Uint8Array, what: string): string {
  try {
    return strictUtf8.decode(bytes);
  } catch (cause) {
    throw new GroupWireError(`${what} is not valid UTF-8`, { cause });
  }
}

function uuidToBytes(uuid: string): Uint8Array {
  if (!UUID_PATTERN.test(uuid)) throw new GroupWireError('account id is not a lower-case UUID');
  return Uint8Array.from(Buffer.from(uuid.replaceAll('-', ''), 'hex'));
}

function bytesToUuid(bytes: Uint8Array): string {
  const hex = Buffer.from(bytes).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * Checks a state's invariants: a 32-byte id, a title of 1..128 bytes, a
 * revision >= 1, 1..100 members with unique canonical usernames and unique
 * account ids, sorted by username, and 1.. admins, each a member, sorted.
 * @throws {GroupWireError}
 */
export function checkGroupState(state: GroupState): void {
  if (!(state.id instanceof Uint8Array) || state.id.length !== GROUP_ID_BYTES) throw new GroupWireError('group id must be 32 bytes');
  const title = typeof state.title === 'string' ? new TextEncoder().encode(state.title) : null;
  if (!title || title.length < 1 || title.length > MAX_GROUP_TITLE_BYTES) throw new GroupWireError(`title must be 1..${MAX_GROUP_TITLE_BYTES} UTF-8 bytes`);
  if (!Number.isSafeInteger(state.revision) || state.revision < 1) throw new GroupWireError('revision must be an integer >= 1');
  const { members, admins } = state;
  if (!Array.isArray(members) || members.length < 1 || members.length > MAX_GROUP_MEMBERS) {
    throw new GroupWireError(`a group has 1..${MAX_GROUP_MEMBERS} members`);
  }
  const accountIds = new Set<string>();
  members.forEach((member, i) => {
    if (typeof member.username !== 'string' || !USERNAME_PATTERN.test(member.username)) throw new GroupWireError('member username is not canonical');
    uuidToBytes(member.accountId);
    if (i > 0 && members[i - 1].username >= member.username) throw new GroupWireError('members must be sorted by username, each once');
    if (accountIds.has(member.accountId)) throw new GroupWireError('two members share an account id');
    accountIds.add(member.accountId);
  });
  if (!Array.isArray(admins) || admins.length < 1) throw new GroupWireError('a group has at least one admin');
  admins.forEach((admin, i) => {
    if (!members.some((member) => member.username === admin)) throw new GroupWireError('an admin is not a member');
    if (i > 0 && admins[i - 1] >= admin) throw new GroupWireError('admins must be sorted, each once');
  });
}

/** @throws {GroupWireError} when `state` breaks an invariant of `checkGroupState`. */
export function encodeGroupUpdateBody(state: GroupState): Uint8Array {
  checkGroupState(state);
  const title = new TextEncoder().encode(state.title);
  const parts: Uint8Array[] = [state.id];
  const header = new Uint8Array(8);
  new DataView(header.buffer).setBigUint64(0, BigInt(state.revision));
  parts.push(header, Uint8Array.of(title.length), title, Uint8Array.of(state.members.length));
  for (const member of state.members) {
    const name = new TextEncoder().encode(member.username);
    parts.push(Uint8Array.of(name.length), name, uuidToBytes(member.accountId));
    parts.push(Uint8Array.of(state.admins.includes(member.username) ? ROLE_ADMIN : ROLE_MEMBER));
  }
  return Buffer.concat(parts);
}

/** @throws {GroupWireError} when `body` is not exactly a group update this version writes. */
export function parseGroupUpdateBody(body: Uint8Array): GroupState {
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  let at = 0;
  const take = (n: number): Uint8Array => {
    if (at + n > body.length) throw new GroupWireError('group update body too short');
    const slice = body.slice(at, at + n);
    at += n;
    return slice;
  };
  const id = take(GROUP_ID_BYTES);
  take(8);
  const revision = view.getBigUint64(GROUP_ID_BYTES);
  if (revision > BigInt(Number.MAX_SAFE_INTEGER)) throw new GroupWireError('revision out of range');
  const title = utf8(take(take(1)[0]), 'title');
  const count = take(1)[0];
  const members: GroupMember[] = [];
  const admins: string[] = [];
  for (let i = 0; i < count; i++) {
    const username = utf8(take(take(1)[0]), 'member username');
    const accountId = bytesToUuid(take(ACCOUNT_ID_BYTES));
    const role = take(1)[0];
    if (role !== ROLE_MEMBER && role !== ROLE_ADMIN) throw new GroupWireError(`unknown member role ${role}`);
    members.push({ username, accountId });
    if (role === ROLE_ADMIN) admins.push(username);
  }
  if (at !== body.length) throw new GroupWireError('group update body has trailing bytes');
  const state: GroupState = { id, title, revision: Number(revision), members, admins };
  checkGroupState(state);
  return state;
}

/** @throws {GroupWireError} for a group id that is not 32 bytes or distribution bytes libsignal does not read. */
export function encodeSenderKeyDistributionBody(groupId: Uint8Array, distribution: Uint8Array): Uint8Array {
  return checkedDistribution(Buffer.concat([checkGroupId(groupId), distribution]));
}

/** @throws {GroupWireError} */
export function parseSenderKeyDistributionBody(body: Uint8Array): SenderKeyDistributionBody {
  checkedDistribution(body);
  return { groupId: body.slice(0, GROUP_ID_BYTES), distribution: body.slice(GROUP_ID_BYTES) };
}

function checkedDistribution(body: Uint8Array): Uint8Array {
  if (body.length <= GROUP_ID_BYTES) throw new GroupWireError('sender key distribution body too short');
  try {
    SenderKeyDistributionMessage.deserialize(new Uint8Array(body.subarray(GROUP_ID_BYTES)));
  } catch (cause) {
    throw new GroupWireError('not a libsignal sender key distribution message', { cause });
  }
  return body;
}

/** @throws {GroupWireError} */
export function encodeGroupMessageBody(message: GroupMessageBody): Uint8Array {
  if (message.innerKind !== INNER_TEXT && message.innerKind !== INNER_BYTES) throw new GroupWireError('a group message wraps only text or bytes');
  if (message.innerKind === INNER_TEXT) utf8(message.body, 'text body');
  return Buffer.concat([checkGroupId(message.groupId), Uint8Array.of(message.innerKind), message.body]);
}

/** @throws {GroupWireError} */
export function parseGroupMessageBody(body: Uint8Array): GroupMessageBody {
  if (body.length < GROUP_ID_BYTES + 1) throw new GroupWireError('group message body too short');
  const innerKind = body[GROUP_ID_BYTES];
  if (innerKind !== INNER_TEXT && innerKind !== INNER_BYTES) throw new GroupWireError(`group message of inner kind ${innerKind}`);
  const inner = body.slice(GROUP_ID_BYTES + 1);
  if (innerKind === INNER_TEXT) utf8(inner, 'text body');
  return { groupId: body.slice(0, GROUP_ID_BYTES), innerKind, body: inner };
}

function checkGroupId(groupId: Uint8Array): Uint8Array {
  if (!(groupId instanceof Uint8Array) || groupId.length !== GROUP_ID_BYTES) throw new GroupWireError('group id must be 32 bytes');
  return groupId;
}

/** The API's form of a group id: base64url, no padding (43 characters). */
export const groupIdToString = (id: Uint8Array): string => Buffer.from(id).toString('base64url');

/** @throws {GroupWireError} for anything but the 43-character base64url form of 32 bytes. */
export function groupIdFromString(id: string): Uint8Array {
  if (typeof id !== 'string' || !/^[A-Za-z0-9_-]{43}$/.test(id)) throw new GroupWireError('not a group id');
  const bytes = Uint8Array.from(Buffer.from(id, 'base64url'));
  if (bytes.length !== GROUP_ID_BYTES || groupIdToString(bytes) !== id) throw new GroupWireError('not a group id');
  return bytes;
}

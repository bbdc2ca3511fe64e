/**
 * The plaintext that goes into libsignal's encryption (our equivalent of
 * Signal's `Content` protobuf). Byte layout, all integers big-endian:
 *
 *   offset 0   u8   version        1, or CONTENT_VERSION (2) for a sequenced record
 *   offset 1   u8   kind           1 = UTF-8 text, 2 = opaque bytes,
 *                                  3 = session reset request (a control record, never shown to the app)
 *   offset 2   u64  timestamp      sender's clock, ms since the epoch (<= 2^53 - 1)
 *   version 2 only:
 *   offset 10  u32  stream         the sender's sequence to this recipient account, or group (1..2^32 - 1)
 *   offset 14  u32  sequence       this message's number in it (1..2^32 - 1)
 *   then (offset h = 10 in version 1, 18 in version 2):
 *   offset h   u32  bodyLength     n
 *   offset h+4 n    body
 *   then        u8  0x80           padding start marker
 *   ...        0x00 until the total length is a multiple of PADDING_BLOCK (160)
 *
 * Version 2 (gap detection, `session/message-sequence.ts`) is written for
 * the kinds a user sends and reads, text and bytes, and for their sync
 * copies (kind 4, which carry the original message's stream and number),
 * and for group messages (kind 10, numbered in the sender device's
 * sequence to the group, not to an account); every other kind is written as version 1, and version 2 of another kind
 * is rejected. A version 1 text, bytes, sync copy or group message (an older sender, or a
 * record stored before this version) is accepted and has no sequence.
 *
 * Padding hides the length of short messages from anyone who sees the
 * ciphertext (the relay), as Signal pads message bodies to 160-byte blocks.
 * Parsing is strict: any deviation is rejected.
 *
 * A session reset request's body is exactly 8 bytes: u64 `since`, the relay's
 * `serverTimestamp` of the earliest envelope from the recipient that the
 * requester could not decrypt (<= 2^53 - 1). The recipient resends what it
 * sent since then (docs/architecture.md, "Session repair").
 *
 * Kinds 4 to 6 (docs/protocol.md, "Inside the ciphertext"):
 *
 *   4 sync copy   u8 n | n bytes destination username (canonical, UTF-8) |
 *                 u8 inner kind (1 text or 2 bytes) | inner body.
 *                 A message this account sent from another of its devices;
 *                 the record's timestamp is the original message's.
 *   5 receipt     u8 type (1 delivery, 2 read) | u16 count (1..100) |
 *                 count x u64 timestamps of the messages it acknowledges.
 *   6 typing      u8 action (1 started, 2 stopped).
 *
 * Kind 7 (docs/protocol.md, "Sealed sender (client side)"):
 *
 *   7 profile key 32 bytes: the sender account's profile key (zkgroup
 *                 `ProfileKey`), from which the access key of its sealed
 *                 sends is derived. Never shown to the app.
 *
 * Kinds 8 to 10 (docs/protocol.md, "Groups"; bodies in `groups/group-wire.ts`):
 *
 *   8 group update   32 group id | u64 revision | u8 t | title | u8 m | m x
 *                    (u8 n | username | 16 bytes account id | u8 role).
 *   9 sender key     32 group id | libsignal SenderKeyDistributionMessage.
 *   10 group message 32 group id | u8 inner kind (1 text or 2 bytes) | inner
 *                    body; only ever the plaintext of a `groupEncrypt`.
 */

import { PROFILE_KEY_BYTES, USERNAME_MAX_LENGTH, USERNAME_PATTERN } from '@chat/protocol';
import { GroupWireError, parseGroupMessageBody, parseGroupUpdateBody, parseSenderKeyDistributionBody } from '../groups/group-wire.js';
import { isSequenceNumber, type MessageSequence } from './message-sequence.js';

/** The version written for a sequenced record; other records are written as `UNSEQUENCED_CONTENT_VERSION`. */
export const CONTENT_VERSION = 2;
/** The version of a record with no sequence (every kind but text, bytes and sync copies). */
export const UNSEQUENCED_CONTENT_VERSION = 1;
export const PADDING_BLOCK = 160;
const HEADER_BYTES = 14;
const SEQUENCED_HEADER_BYTES = 22;
const headerBytesOf = (sequenced: boolean) => (sequenced ? SEQUENCED_HEADER_BYTES : HEADER_BYTES);
const PADDING_MARKER = 0x80;

/**
 * Largest body, chosen so that a padded content inside a PreKey message
 * (about 1.7 KB of PQXDH overhead) stays under the relay's
 * `MAX_CIPHERTEXT_BYTES` (64 KiB).
 */
export const MAX_BODY_BYTES = 60 * 1024;

export enum ContentKind {
  Text = 1,
  Bytes = 2,
  /** Control: "I could not decrypt what you sent since `since`; I started a new session, resend it." */
  SessionResetRequest = 3,
  /** A message another device of this account sent, copied to this one (never accepted from another account). */
  SyncCopy = 4,
  /** Delivery or read receipt for messages named by their content timestamps. */
  Receipt = 5,
  /** The sender started or stopped typing; sent ephemeral, never stored by the relay. */
  Typing = 6,
  /** The sender account's profile key, so that this account can send to it sealed (control, never shown). */
  ProfileKey = 7,
  /** A group's whole new state (control, never shown; the `groupUpdated` event reports it). */
  GroupUpdate = 8,
  /** This sender device's sender key for a group (control, never shown). */
  SenderKeyDistribution = 9,
  /** A text or bytes message to a group, sender-key encrypted. */
  GroupMessage = 10,
}

/** The kinds a user sends and reads: what a sync copy may wrap. */
export type UserContentKind = ContentKind.Text | ContentKind.Bytes;

export enum ReceiptType {
  Delivery = 1,
  Read = 2,
}

export enum TypingAction {
  Started = 1,
  Stopped = 2,
}

/** Length of a session reset request's body: one u64. */
export const SESSION_RESET_REQUEST_BODY_BYTES = 8;
/** Timestamps one receipt may carry. */
export const MAX_RECEIPT_TIMESTAMPS = 100;
/** A sync copy's bytes before its inner body: the destination's length, the destination, the inner kind. */
const SYNC_COPY_MAX_PREFIX_BYTES = 1 + USERNAME_MAX_LENGTH + 1;
/**
 * Largest body of any record: a sync copy of a `MAX_BODY_BYTES` message.
 * It pads to the same length as a `MAX_BODY_BYTES` text (61,600 bytes), so
 * a sync copy never needs a larger ciphertext than the message it copies.
 */
const MAX_RECORD_BODY_BYTES = MAX_BODY_BYTES + SYNC_COPY_MAX_PREFIX_BYTES;

const isContentKind = (kind: number): kind is ContentKind => Number.isInteger(kind) && kind >= ContentKind.Text && kind <= ContentKind.GroupMessage;
export const isUserContentKind = (kind: number): kind is UserContentKind => kind === ContentKind.Text || kind === ContentKind.Bytes;
/** The kinds that carry a sequence (content version 2): what a user sends, its sync copies, and group messages. */
export const isSequencedKind = (kind: ContentKind): boolean => isUserContentKind(kind) || kind === ContentKind.SyncCopy || kind === ContentKind.GroupMessage;

export interface MessageContent {
  kind: ContentKind;
  /** The sender's clock when it sent, ms since the epoch. */
  timestamp: number;
  body: Uint8Array;
  /**
   * The message's place in its sender's sequence to the recipient account
   * or group (only text, bytes, sync copies and group messages; absent in a
   * version 1 record).
   */
  sequence?: MessageSequence;
}

export class ContentFormatError extends Error {
  override readonly name = 'ContentFormatError';
}

/** The padded length of a content whose body has `bodyLength` bytes (`sequenced`: a version 2 record). */
export function paddedContentLength(bodyLength: number, sequenced = false): number {
  const unpadded = headerBytesOf(sequenced) + bodyLength + 1;
  return Math.ceil(unpadded / PADDING_BLOCK) * PADDING_BLOCK;
}

/**
 * Version 2 when `content.sequence` is given, else version 1.
 * @throws {ContentFormatError} for an unknown kind, a bad timestamp, a body too large or malformed for
 *   its kind, or a sequence on a kind that has none or out of range.
 */
export function encodeContent(content: MessageContent): Uint8Array<ArrayBuffer> {
  const { kind, timestamp, body, sequence } = content;
  if (!isContentKind(kind)) throw new ContentFormatError('unknown content kind');
  if (!Number.isSafeInteger(timestamp) || timestamp < 0) throw new ContentFormatError('timestamp out of range');
  if (body.length > maxBodyBytes(kind)) throw new ContentFormatError(`body larger than ${maxBodyBytes(kind)} bytes`);
  if (sequence !== undefined) {
    if (!isSequencedKind(kind)) throw new ContentFormatError(`a record of kind ${kind} carries no sequence`);
    if (!isSequenceNumber(sequence.stream) || !isSequenceNumber(sequence.number)) throw new ContentFormatError('sequence out of range');
  }
  checkBody(kind, body);

  // Zero-filled, so the padding after the marker is already in place.
  const header = headerBytesOf(sequence !== undefined);
  const bytes = new Uint8Array(paddedContentLength(body.length, sequence !== undefined));
  const view = new DataView(bytes.buffer);
  view.setUint8(0, sequence ? CONTENT_VERSION : UNSEQUENCED_CONTENT_VERSION);
  view.setUint8(1, kind);
  view.setBigUint64(2, BigInt(timestamp));
  if (sequence) {
    view.setUint32(10, sequence.stream);
    view.setUint32(14, sequence.number);
  }
  view.setUint32(header - 4, body.length);
  bytes.set(body, header);
  bytes[header + body.length] = PADDING_MARKER;
  return bytes;
}

/** @throws {ContentFormatError} when `bytes` is not exactly a content this version writes. */
export function decodeContent(bytes: Uint8Array): MessageContent {
  if (bytes.length < PADDING_BLOCK || bytes.length % PADDING_BLOCK !== 0) {
    throw new ContentFormatError('content length is not a multiple of the padding block');
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint8(0);
  if (version !== CONTENT_VERSION && version !== UNSEQUENCED_CONTENT_VERSION) throw new ContentFormatError(`unsupported content version ${version}`);
  const sequenced = version === CONTENT_VERSION;
  const kind = view.getUint8(1);
  if (!isContentKind(kind)) throw new ContentFormatError(`unknown content kind ${kind}`);
  if (sequenced && !isSequencedKind(kind)) throw new ContentFormatError(`a record of kind ${kind} carries no sequence`);
  const timestamp = view.getBigUint64(2);
  if (timestamp > BigInt(Number.MAX_SAFE_INTEGER)) throw new ContentFormatError('timestamp out of range');
  let sequence: MessageSequence | undefined;
  if (sequenced) {
    sequence = { stream: view.getUint32(10), number: view.getUint32(14) };
    if (sequence.stream === 0 || sequence.number === 0) throw new ContentFormatError('sequence out of range');
  }
  const header = headerBytesOf(sequenced);
  const bodyLength = view.getUint32(header - 4);
  if (bodyLength > maxBodyBytes(kind) || paddedContentLength(bodyLength, sequenced) !== bytes.length) {
    throw new ContentFormatError('body length does not match the padded length');
  }
  const markerAt = header + bodyLength;
  if (bytes[markerAt] !== PADDING_MARKER) throw new ContentFormatError('padding marker missing');
  for (let i = markerAt + 1; i < bytes.length; i++) {
    if (bytes[i] !== 0) throw new ContentFormatError('padding is not zero');
  }
  const body = bytes.slice(header, markerAt);
  checkBody(kind, body);
  return sequence ? { kind, timestamp: Number(timestamp), body, sequence } : { kind, timestamp: Number(timestamp), body };
}

const maxBodyBytes = (kind: ContentKind) => (kind === ContentKind.SyncCopy || kind === ContentKind.GroupMessage ? MAX_RECORD_BODY_BYTES : MAX_BODY_BYTES);

/** Parses a control or sync body by its kind, so that `decodeContent` accepts only well-formed records. */
function checkBody(kind: ContentKind, body: Uint8Array): void {
  switch (kind) {
    case ContentKind.SessionResetRequest:
      sessionResetSince(body);
      return;
    case ContentKind.SyncCopy:
      parseSyncCopyBody(body);
      return;
    case ContentKind.Receipt:
      parseReceiptBody(body);
      return;
    case ContentKind.Typing:
      parseTypingBody(body);
      return;
    case ContentKind.ProfileKey:
      parseProfileKeyBody(body);
      return;
    case ContentKind.GroupUpdate:
    case ContentKind.SenderKeyDistribution:
    case ContentKind.GroupMessage:
      checkGroupBody(kind, body);
      return;
    default:
      return;
  }
}

const u64Safe = (view: DataView, offset: number, what: string): number => {
  const value = view.getBigUint64(offset);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new ContentFormatError(`${what} out of range`);
  return Number(value);
};

const viewOf = (bytes: Uint8Array) => new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);

// --- kind 4: sync copy --------------------------------------------------------

/** A message another device of this account sent to `destination`. */
export interface SyncCopy {
  /** Canonical username the original message went to. */
  destination: string;
  /** The original message: its kind, timestamp, body and sequence (in its sender's sequence to `destination`). */
  message: MessageContent & { kind: UserContentKind };
}

/**
 * The sync copy of `message` (a text or bytes content this device sends to
 * `destination`), for the sender's other devices. Same timestamp, same sequence.
 * @throws {ContentFormatError} for another kind, a destination that is not a canonical username, or a body too large.
 */
export function encodeSyncCopy(destination: string, message: MessageContent): Uint8Array<ArrayBuffer> {
  if (!isUserContentKind(message.kind)) throw new ContentFormatError('a sync copy wraps only text or bytes');
  if (typeof destination !== 'string' || !USERNAME_PATTERN.test(destination)) {
    throw new ContentFormatError('sync copy destination is not a canonical username');
  }
  if (message.body.length > MAX_BODY_BYTES) throw new ContentFormatError(`body larger than ${MAX_BODY_BYTES} bytes`);
  const name = new TextEncoder().encode(destination);
  const body = new Uint8Array(1 + name.length + 1 + message.body.length);
  body[0] = name.length;
  body.set(name, 1);
  body[1 + name.length] = message.kind;
  body.set(message.body, 2 + name.length);
  return encodeContent({ kind: ContentKind.SyncCopy, timestamp: message.timestamp, body, ...(message.sequence ? { sequence: message.sequence } : {}) });
}

/** @throws {ContentFormatError} when `content` is not a well-formed sync copy (a text inner body must be UTF-8). */
export function syncCopyOf(content: MessageContent): SyncCopy {
  if (content.kind !== ContentKind.SyncCopy) throw new ContentFormatError('not a sync copy');
  const { destination, kind, body } = parseSyncCopyBody(content.body);
  const message = { kind, timestamp: content.timestamp, body };
  return { destination, message: content.sequence ? { ...message, sequence: content.sequence } : message };
}

function parseSyncCopyBody(body: Uint8Array): { destination: string; kind: UserContentKind; body: Uint8Array } {
  if (body.length < 2) throw new ContentFormatError('sync copy body too short');
  const nameLength = body[0];
  if (body.length < 1 + nameLength + 1) throw new ContentFormatError('sync copy body too short for its destination');
  const destination = decodeText(body.subarray(1, 1 + nameLength));
  if (!USERNAME_PATTERN.test(destination)) throw new ContentFormatError('sync copy destination is not a canonical username');
  const kind = body[1 + nameLength];
  if (!isUserContentKind(kind)) throw new ContentFormatError(`sync copy of kind ${kind}`);
  const inner = body.slice(2 + nameLength);
  if (inner.length > MAX_BODY_BYTES) throw new ContentFormatError(`sync copy inner body larger than ${MAX_BODY_BYTES} bytes`);
  if (kind === ContentKind.Text) decodeText(inner);
  return { destination, kind, body: inner };
}

// --- kind 5: receipt ----------------------------------------------------------

export interface Receipt {
  type: ReceiptType;
  /** Content timestamps of the acknowledged messages, as written (1..100). */
  timestamps: number[];
}

/**
 * A receipt record for the messages with these content timestamps.
 * @throws {ContentFormatError} for an unknown type, 0 or more than 100 timestamps, or one that is not a safe integer >= 0.
 */
export function encodeReceipt(timestamp: number, receipt: Receipt): Uint8Array<ArrayBuffer> {
  const { type, timestamps } = receipt;
  if (type !== ReceiptType.Delivery && type !== ReceiptType.Read) throw new ContentFormatError('unknown receipt type');
  if (!Array.isArray(timestamps) || timestamps.length < 1 || timestamps.length > MAX_RECEIPT_TIMESTAMPS) {
    throw new ContentFormatError(`a receipt carries 1..${MAX_RECEIPT_TIMESTAMPS} timestamps`);
  }
  const body = new Uint8Array(3 + 8 * timestamps.length);
  const view = viewOf(body);
  view.setUint8(0, type);
  view.setUint16(1, timestamps.length);
  timestamps.forEach((value, i) => {
    if (!Number.isSafeInteger(value) || value < 0) throw new ContentFormatError('receipt timestamp out of range');
    view.setBigUint64(3 + 8 * i, BigInt(value));
  });
  return encodeContent({ kind: ContentKind.Receipt, timestamp, body });
}

/** @throws {ContentFormatError} when `content` is not a well-formed receipt. */
export function receiptOf(content: MessageContent): Receipt {
  if (content.kind !== ContentKind.Receipt) throw new ContentFormatError('not a receipt');
  return parseReceiptBody(content.body);
}

function parseReceiptBody(body: Uint8Array): Receipt {
  if (body.length < 3) throw new ContentFormatError('receipt body too short');
  const view = viewOf(body);
  const type = view.getUint8(0);
  if (type !== ReceiptType.Delivery && type !== ReceiptType.Read) throw new ContentFormatError(`unknown receipt type ${type}`);
  const count = view.getUint16(1);
  if (count < 1 || count > MAX_RECEIPT_TIMESTAMPS) throw new ContentFormatError(`a receipt carries 1..${MAX_RECEIPT_TIMESTAMPS} timestamps`);
  if (body.length !== 3 + 8 * count) throw new ContentFormatError('receipt body length does not match its count');
  const timestamps: number[] = [];
  for (let i = 0; i < count; i++) timestamps.push(u64Safe(view, 3 + 8 * i, 'receipt timestamp'));
  return { type, timestamps };
}

// --- kind 6: typing -----------------------------------------------------------

/** A typing record: the sender started (`true`) or stopped typing, at `timestamp`. */
export function encodeTyping(timestamp: number, typing: boolean): Uint8Array<ArrayBuffer> {
  const body = Uint8Array.of(typing ? TypingAction.Started : TypingAction.Stopped);
  return encodeContent({ kind: ContentKind.Typing, timestamp, body });
}

/** @throws {ContentFormatError} when `content` is not a well-formed typing record. */
export function typingOf(content: MessageContent): TypingAction {
  if (content.kind !== ContentKind.Typing) throw new ContentFormatError('not a typing record');
  return parseTypingBody(content.body);
}

function parseTypingBody(body: Uint8Array): TypingAction {
  if (body.length !== 1) throw new ContentFormatError('typing body must be 1 byte');
  const action = body[0];
  if (action !== TypingAction.Started && action !== TypingAction.Stopped) throw new ContentFormatError(`unknown typing action ${action}`);
  return action;
}

// --- kind 7: profile key --------------------------------------------------------

/** A profile key record carrying this account's 32-byte profile key. */
export function encodeProfileKey(timestamp: number, profileKey: Uint8Array): Uint8Array<ArrayBuffer> {
  return encodeContent({ kind: ContentKind.ProfileKey, timestamp, body: parseProfileKeyBody(profileKey).slice() });
}

/** @throws {ContentFormatError} when `content` is not a well-formed profile key record. */
export function profileKeyOf(content: MessageContent): Uint8Array {
  if (content.kind !== ContentKind.ProfileKey) throw new ContentFormatError('not a profile key record');
  return parseProfileKeyBody(content.body).slice();
}

function parseProfileKeyBody(body: Uint8Array): Uint8Array {
  if (body.length !== PROFILE_KEY_BYTES) throw new ContentFormatError(`profile key body must be ${PROFILE_KEY_BYTES} bytes`);
  return body;
}

// --- kinds 8 to 10: groups -------------------------------------------------------

function checkGroupBody(kind: ContentKind, body: Uint8Array): void {
  try {
    if (kind === ContentKind.GroupUpdate) parseGroupUpdateBody(body);
    else if (kind === ContentKind.SenderKeyDistribution) parseSenderKeyDistributionBody(body);
    else parseGroupMessageBody(body);
  } catch (cause) {
    if (cause instanceof GroupWireError) throw new ContentFormatError(cause.message, { cause });
    throw cause;
  }
}

/** A session reset request asking for everything sent since `since` (a relay `serverTimestamp`). */
export function encodeSessionResetRequest(timestamp: number, since: number): Uint8Array<ArrayBuffer> {
  if (!Number.isSafeInteger(since) || since < 0) throw new ContentFormatError('since out of range');
  const body = new Uint8Array(SESSION_RESET_REQUEST_BODY_BYTES);
  new DataView(body.buffer).setBigUint64(0, BigInt(since));
  return encodeContent({ kind: ContentKind.SessionResetRequest, timestamp, body });
}

/** @throws {ContentFormatError} when `body` is not exactly a session reset request's body. */
export function sessionResetSince(body: Uint8Array): number {
  if (body.length !== SESSION_RESET_REQUEST_BODY_BYTES) throw new ContentFormatError('session reset request body must be 8 bytes');
  return u64Safe(viewOf(body), 0, 'since');
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** @throws {ContentFormatError} when a text body is not valid UTF-8. */
export function decodeText(body: Uint8Array): string {
  try {
    return strictUtf8.decode(body);
  } catch (cause) {
    throw new ContentFormatError('text body is not valid UTF-8', { cause });
  }
}

/**
 * The plaintext that goes into libsignal's encryption (our equivalent of
 * Signal's `Content` protobuf). Byte layout, all integers big-endian:
 *
 *   offset 0   u8   version        CONTENT_VERSION (1)
 *   offset 1   u8   kind           1 = UTF-8 text, 2 = opaque bytes,
 *                                  3 = session reset request (a control record, never shown to the app)
 *   offset 2   u64  timestamp      sender's clock, ms since the epoch (<= 2^53 - 1)
 *   offset 10  u32  bodyLength     n
 *   offset 14  n    body
 *   offset 14+n u8  0x80           padding start marker
 *   ...        0x00 until the total length is a multiple of PADDING_BLOCK (160)
 *
 * Padding hides the length of short messages from anyone who sees the
 * ciphertext (the relay), as Signal pads message bodies to 160-byte blocks.
 * Parsing is strict: any deviation is rejected.
 *
 * A session reset request's body is exactly 8 bytes: u64 `since`, the relay's
 * `serverTimestamp` of the earliest envelope from the recipient that the
 * requester could not decrypt (<= 2^53 - 1). The recipient resends what it
 * sent since then (docs/architecture.md, "Session repair").
 */

export const CONTENT_VERSION = 1;
export const PADDING_BLOCK = 160;
const HEADER_BYTES = 14;
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
}

/** Length of a session reset request's body: one u64. */
export const SESSION_RESET_REQUEST_BODY_BYTES = 8;

const isContentKind = (kind: number): kind is ContentKind =>
  kind === ContentKind.Text || kind === ContentKind.Bytes || kind === ContentKind.SessionResetRequest;

export interface MessageContent {
  kind: ContentKind;
  /** The sender's clock when it sent, ms since the epoch. */
  timestamp: number;
  body: Uint8Array;
}

export class ContentFormatError extends Error {
  override readonly name = 'ContentFormatError';
}

/** The padded length of a content whose body has `bodyLength` bytes. */
export function paddedContentLength(bodyLength: number): number {
  const unpadded = HEADER_BYTES + bodyLength + 1;
  return Math.ceil(unpadded / PADDING_BLOCK) * PADDING_BLOCK;
}

export function encodeContent(content: MessageContent): Uint8Array<ArrayBuffer> {
  const { kind, timestamp, body } = content;
  if (!isContentKind(kind)) throw new ContentFormatError('unknown content kind');
  if (!Number.isSafeInteger(timestamp) || timestamp < 0) throw new ContentFormatError('timestamp out of range');
  if (body.length > MAX_BODY_BYTES) throw new ContentFormatError(`body larger than ${MAX_BODY_BYTES} bytes`);
  if (kind === ContentKind.SessionResetRequest) sessionResetSince(body);

  // Zero-filled, so the padding after the marker is already in place.
  const bytes = new Uint8Array(paddedContentLength(body.length));
  const view = new DataView(bytes.buffer);
  view.setUint8(0, CONTENT_VERSION);
  view.setUint8(1, kind);
  view.setBigUint64(2, BigInt(timestamp));
  view.setUint32(10, body.length);
  bytes.set(body, HEADER_BYTES);
  bytes[HEADER_BYTES + body.length] = PADDING_MARKER;
  return bytes;
}

/** @throws {ContentFormatError} when `bytes` is not exactly a content this version writes. */
export function decodeContent(bytes: Uint8Array): MessageContent {
  if (bytes.length < PADDING_BLOCK || bytes.length % PADDING_BLOCK !== 0) {
    throw new ContentFormatError('content length is not a multiple of the padding block');
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint8(0);
  if (version !== CONTENT_VERSION) throw new ContentFormatError(`unsupported content version ${version}`);
  const kind = view.getUint8(1);
  if (!isContentKind(kind)) throw new ContentFormatError(`unknown content kind ${kind}`);
  const timestamp = view.getBigUint64(2);
  if (timestamp > BigInt(Number.MAX_SAFE_INTEGER)) throw new ContentFormatError('timestamp out of range');
  const bodyLength = view.getUint32(10);
  if (bodyLength > MAX_BODY_BYTES || paddedContentLength(bodyLength) !== bytes.length) {
    throw new ContentFormatError('body length does not match the padded length');
  }
  const markerAt = HEADER_BYTES + bodyLength;
  if (bytes[markerAt] !== PADDING_MARKER) throw new ContentFormatError('padding marker missing');
  for (let i = markerAt + 1; i < bytes.length; i++) {
    if (bytes[i] !== 0) throw new ContentFormatError('padding is not zero');
  }
  const body = bytes.slice(HEADER_BYTES, markerAt);
  if (kind === ContentKind.SessionResetRequest) sessionResetSince(body);
  return { kind, timestamp: Number(timestamp), body };
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
  const since = new DataView(body.buffer, body.byteOffset, body.byteLength).getBigUint64(0);
  if (since > BigInt(Number.MAX_SAFE_INTEGER)) throw new ContentFormatError('since out of range');
  return Number(since);
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

// The frames the throughput load sends and reads, built and read as strings:
// the load generator shares a core with what it measures, so it never
// JSON-encodes a frame or parses a `message` frame it can read by position.
import { randomBytes, randomUUID } from 'node:crypto';

/** Bytes of the message number at the start of each payload (the rest is random and fixed). */
const SEQUENCE_BYTES = 6;
/** base64 characters of the sequence bytes: 6 bytes are 8 characters, with no padding. */
const SEQUENCE_CHARS = 8;

/**
 * A fixed-size random "ciphertext" whose first six bytes carry the message's
 * number within its pair, so the receiver can tell send time and order from
 * the payload alone. Everything else of the payload is encoded once.
 */
export class PayloadTemplate {
  private readonly tail: string;

  constructor(readonly sizeBytes: number) {
    if (sizeBytes < SEQUENCE_BYTES + 1) throw new Error(`payloads need at least ${SEQUENCE_BYTES + 1} bytes`);
    this.tail = randomBytes(sizeBytes - SEQUENCE_BYTES).toString('base64');
  }

  /** The base64 ciphertext of message `sequence`. */
  ciphertext(sequence: number): string {
    const head = Buffer.allocUnsafe(SEQUENCE_BYTES);
    head.writeUIntBE(sequence, 0, SEQUENCE_BYTES);
    return head.toString('base64') + this.tail;
  }
}

/** The message number of a ciphertext made by `PayloadTemplate`, read from its first eight base64 characters. */
export function sequenceOf(ciphertextBase64Head: string): number {
  return Buffer.from(ciphertextBase64Head.slice(0, SEQUENCE_CHARS), 'base64').readUIntBE(0, SEQUENCE_BYTES);
}

/**
 * The relay's `send` frame (docs/protocol.md, "Client to relay") for one
 * recipient device, with a fresh send `id` as the SDK always sets. The
 * bare forwarder gets the same bytes.
 */
export function sendFrame(to: string, registrationId: number, requestId: string, ciphertext: string): string {
  return (
    `{"type":"send","requestId":"${requestId}","message":{"to":"${to}","id":"${randomUUID()}",` +
    `"messages":[{"deviceId":1,"registrationId":${registrationId},"type":"signal","ciphertext":"${ciphertext}"}]}}`
  );
}

export const ackFrame = (id: string): string => `{"type":"ack","id":"${id}"}`;

/** What the receiver reads of a frame: the id to ack and the message number, or another frame's type. */
export type ReceivedFrame = { kind: 'message'; id: string; sequence: number } | { kind: 'other'; type: string; text: string };

const CIPHERTEXT_KEY = '"ciphertext":"';
const ID_KEY = '"id":"';
const UUID_CHARS = 36;

/**
 * Reads a relay `message` frame, or a forwarded `send` frame (bare
 * forwarder), by position: the ciphertext's head gives the number, the
 * envelope's (or send's) `id` the ack. Anything else is parsed as JSON.
 */
export function readFrame(text: string): ReceivedFrame {
  const cipherAt = text.indexOf(CIPHERTEXT_KEY);
  if (cipherAt >= 0 && (text.startsWith('{"type":"message"') || text.startsWith('{"type":"send"'))) {
    const idAt = text.indexOf(ID_KEY);
    const sequence = sequenceOf(text.slice(cipherAt + CIPHERTEXT_KEY.length, cipherAt + CIPHERTEXT_KEY.length + SEQUENCE_CHARS));
    // A relay envelope's id is its first field; a send frame's first `"id"` is the send id.
    return { kind: 'message', id: text.slice(idAt + ID_KEY.length, idAt + ID_KEY.length + UUID_CHARS), sequence };
  }
  const frame = JSON.parse(text) as { type?: unknown };
  return { kind: 'other', type: typeof frame.type === 'string' ? frame.type : '?', text };
}

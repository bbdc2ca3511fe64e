import { describe, expect, it } from '@jest/globals';
import { AckFrame, SendFrame } from '@chat/protocol';
import { validateFrame } from './client-frames.js';
import { plainAckFrame, plainSendFrame } from './frame-fast-path.js';

const UUID = '6f1c1f0e-8a49-4c39-9f0e-2f4b7c8f9a10';
const deviceMessage = (deviceId = 1) => ({ deviceId, registrationId: 4711, type: 'signal', ciphertext: Buffer.from(`to ${deviceId}`).toString('base64') });
const send = (message: Record<string, unknown> = {}, frame: Record<string, unknown> = {}): Record<string, unknown> => ({
  type: 'send',
  requestId: 'r-1',
  message: { to: 'bob', id: UUID, messages: [deviceMessage(1), deviceMessage(2)], ...message },
  ...frame,
});

/** What the full validation makes of a frame: the frame as plain data, or the refusal's details. */
function fullValidation<T extends object>(type: new () => T, frame: unknown): { accepted: unknown } | { refused: unknown } {
  try {
    return { accepted: JSON.parse(JSON.stringify(validateFrame(type, frame))) };
  } catch (error) {
    return { refused: error };
  }
}

/** The fast path either defers (undefined) or gives exactly what the full validation accepts. */
function expectAgreement<T extends object>(type: new () => T, fast: (frame: Record<string, unknown>) => T | undefined, frame: Record<string, unknown>): boolean {
  const quick = fast(frame);
  if (quick === undefined) return false;
  expect(fullValidation(type, frame)).toEqual({ accepted: JSON.parse(JSON.stringify(quick)) });
  return true;
}

const refusedSends: Array<[string, Record<string, unknown>]> = [
  ['an unknown frame field', send({}, { extra: 1 })],
  ['an unknown message field', send({ source: 'alice' })],
  ['an unknown device message field', send({ messages: [{ ...deviceMessage(), extra: true }] })],
  ['no requestId', send({}, { requestId: undefined })],
  ['an empty requestId', send({}, { requestId: '' })],
  ['a requestId of 65 characters', send({}, { requestId: 'x'.repeat(65) })],
  ['a numeric requestId', send({}, { requestId: 7 })],
  ['a `to` that is not a username', send({ to: 'b!' })],
  ['a `to` too short', send({ to: 'bo' })],
  ['a `to` that is a number', send({ to: 42 })],
  ['an id that is not a UUID', send({ id: 'not-a-uuid' })],
  ['no messages', send({ messages: [] })],
  ['messages not an array', send({ messages: deviceMessage() })],
  ['17 messages', send({ messages: Array.from({ length: 17 }, (_, i) => deviceMessage(i + 1)) })],
  ['device id 0', send({ messages: [deviceMessage(0)] })],
  ['device id 128', send({ messages: [deviceMessage(128)] })],
  ['a fractional device id', send({ messages: [{ ...deviceMessage(), deviceId: 1.5 }] })],
  ['a device id as text', send({ messages: [{ ...deviceMessage(), deviceId: '1' }] })],
  ['registration id 0', send({ messages: [{ ...deviceMessage(), registrationId: 0 }] })],
  ['registration id 16384', send({ messages: [{ ...deviceMessage(), registrationId: 16384 }] })],
  ['no registration id', send({ messages: [{ ...deviceMessage(), registrationId: undefined }] })],
  ['an unknown type', send({ messages: [{ ...deviceMessage(), type: 'whisper' }] })],
  ['unpadded base64', send({ messages: [{ ...deviceMessage(), ciphertext: 'YWJj' + 'ZA' }] })],
  ['an empty ciphertext', send({ messages: [{ ...deviceMessage(), ciphertext: '' }] })],
  ['a ciphertext over 64 KiB', send({ messages: [{ ...deviceMessage(), ciphertext: Buffer.alloc(65_537).toString('base64') }] })],
  ['sync not an array', send({ sync: {} })],
  ['a bad sync entry', send({ sync: [{ ...deviceMessage(), deviceId: -1 }] })],
  ['partial as text', send({ partial: 'yes' })],
  ['ephemeral as a number', send({ ephemeral: 1 })],
];

describe('the send and ack fast path', () => {
  it('takes the plain frames clients send and gives exactly what the full validation gives', () => {
    const plain: Array<Record<string, unknown>> = [
      send(),
      send({ id: undefined }),
      send({ to: 'Bob.Smith_2' }),
      send({ sync: [] }),
      send({ sync: [deviceMessage(3)], messages: [{ ...deviceMessage(1), type: 'prekey' }] }),
      send({ partial: true }),
      send({ ephemeral: true, id: undefined }),
      send({ messages: [{ ...deviceMessage(), ciphertext: Buffer.alloc(65_536).toString('base64') }] }),
      send({}, { requestId: 'x'.repeat(64) }),
      send({ messages: Array.from({ length: 16 }, (_, i) => deviceMessage(i + 1)) }),
      send({ messages: [{ ...deviceMessage(127), registrationId: 16383, type: 'sealed' }] }),
    ];
    for (const frame of plain) expect(expectAgreement(SendFrame, plainSendFrame, frame)).toBe(true);
    expect(plainSendFrame(send({ to: 'Bob' }))?.message.to).toBe('bob');
  });

  it.each(refusedSends)('leaves a send with %s to the full validation, which refuses it', (_what, frame) => {
    expect(plainSendFrame(frame)).toBeUndefined();
    expect(fullValidation(SendFrame, frame)).toHaveProperty('refused');
  });

  it('leaves to the full validation what it accepts in a shape clients do not send (null for an optional field, a non-ASCII requestId)', () => {
    for (const frame of [send({ id: null }), send({ sync: null }), send({}, { requestId: 'ü' })]) {
      expect(plainSendFrame(frame)).toBeUndefined();
      expect(fullValidation(SendFrame, frame)).toHaveProperty('accepted');
    }
  });

  it('leaves a `message` that is not a plain object to the full validation', () => {
    for (const message of [[], 'text', null, 1]) expect(plainSendFrame(send({}, { message }))).toBeUndefined();
  });

  it('takes a plain ack, and leaves any other to the full validation', () => {
    expect(expectAgreement(AckFrame, plainAckFrame, { type: 'ack', id: UUID })).toBe(true);
    for (const frame of [{ type: 'ack', id: 'nope' }, { type: 'ack' }, { type: 'ack', id: UUID, extra: 1 }, { type: 'ack', id: 7 }]) {
      expect(plainAckFrame(frame)).toBeUndefined();
      expect(fullValidation(AckFrame, frame)).toHaveProperty('refused');
    }
  });
});

/**
 * Fuzzing the WebSocket frames (issue #10, "Fuzzing"): over a real
 * authenticated socket a hostile client sends random text and binary frames,
 * truncated and mutated `send`/`ack` frames, unknown types, requestId abuse,
 * invalid base64 ciphertexts, hostile numbers and JSON nested thousands deep.
 *
 * The expected answer of each frame follows docs/protocol.md ("Client to
 * relay", the paragraph on refusals), worked out from the frame's bytes as
 * the relay receives them: not JSON is `MALFORMED_JSON`; JSON that is not an
 * object `VALIDATION_FAILED`; an unknown `type` `UNKNOWN_FRAME_TYPE`; a send
 * either `sent` or refused; an ack silent or `VALIDATION_FAILED`. Every error
 * carries a protocol ErrorCode (never INTERNAL) and the frame's requestId
 * whenever the protocol would accept it as one (`SendFrame`'s rule); the
 * socket stays open; a bystander on another socket keeps receiving.
 *
 * A frame's answers are told apart from the next frame's by a probe frame of
 * an unknown type sent right behind it: the relay answers frames of a socket
 * that it refuses before touching the database in the order they came.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { Logger } from '@nestjs/common';
import fc from 'fast-check';
import WebSocket from 'ws';
import {
  ClientFrameType,
  EnvelopeType,
  ErrorCode,
  MAX_JSON_VALUES,
  ServerFrameType,
  type AuthResponse,
  type ErrorFrame,
  type MessageFrame,
  type ServerFrame,
} from '@chat/protocol';
import { httpJson, registerKeyedUser, startTestRelay, type TestRelay } from '../support/test-relay.js';
import { connectWs, waitForFrame, type WsClient } from '../support/ws-client.js';
import type { DeviceKeys } from '../support/libsignal-keys.js';
import { deeplyNested, fuzzParameters, hostileFrame, readableRequestId, type FuzzFrame } from './support/fuzz-arbitraries.js';

const ERROR_CODES = new Set<string>(Object.values(ErrorCode));
const ERROR_FRAME_FIELDS = new Set(['type', 'requestId', 'code', 'message', 'details', 'mismatched', 'stale', 'retryAfter']);
/** What a send that parses may be refused with: its fields, or its addressing (to the relay's knowledge of the recipient). */
const SEND_REFUSALS = [ErrorCode.ValidationFailed, ErrorCode.UnknownRecipient, ErrorCode.MismatchedDevices, ErrorCode.StaleDevices];

/** The answer docs/protocol.md prescribes for a frame. */
interface Expectation {
  /** `send`: `sent` or a refusal; `ack`: silence or VALIDATION_FAILED; `refused`: exactly one error. */
  kind: 'send' | 'ack' | 'refused';
  codes: ErrorCode[];
  /** The requestId every answer must carry (undefined: none). */
  requestId: string | undefined;
}

/** What the relay must answer to `frame`, from the bytes it receives (a text frame's lone surrogates arrive as U+FFFD). */
function expectationOf(frame: FuzzFrame): Expectation {
  const received = Buffer.from(frame.data).toString('utf8');
  let value: unknown;
  try {
    value = JSON.parse(received);
  } catch {
    return { kind: 'refused', codes: [ErrorCode.MalformedJson], requestId: undefined };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { kind: 'refused', codes: [ErrorCode.ValidationFailed], requestId: undefined };
  }
  const type = (value as { type?: unknown }).type;
  const requestId = readableRequestId(value);
  if (type === ClientFrameType.Send) return { kind: 'send', codes: SEND_REFUSALS, requestId };
  if (type === ClientFrameType.Ack) return { kind: 'ack', codes: [ErrorCode.ValidationFailed], requestId };
  return { kind: 'refused', codes: [ErrorCode.UnknownFrameType], requestId };
}

describe('adversarial: fuzzing every WebSocket frame', () => {
  let relay: TestRelay;
  let attacker: AuthResponse;
  let target: { user: AuthResponse; keys: DeviceKeys };
  let bystander: { user: AuthResponse; keys: DeviceKeys };
  let bystanderPeer: AuthResponse;
  let attackerSocket: WsClient;
  let bystanderSocket: WsClient;
  const sockets: WebSocket[] = [];
  let errorLogs: jest.SpiedFunction<Logger['error']>;
  let probes = 0;
  let deliveries = 0;

  beforeAll(async () => {
    relay = await startTestRelay();
    attacker = (await registerKeyedUser(relay, 'fuzzer')).user;
    target = await registerKeyedUser(relay, 'target');
    bystander = await registerKeyedUser(relay, 'bystander');
    bystanderPeer = (await registerKeyedUser(relay, 'peer')).user;
    attackerSocket = await connectWs(relay.wsUrl, attacker.accessToken);
    bystanderSocket = await connectWs(relay.wsUrl, bystander.user.accessToken);
    sockets.push(attackerSocket.socket, bystanderSocket.socket);
    await waitForFrame(attackerSocket, (frame) => frame.type === ServerFrameType.QueueEmpty);
    await waitForFrame(bystanderSocket, (frame) => frame.type === ServerFrameType.QueueEmpty);
    errorLogs = jest.spyOn(Logger.prototype, 'error');
  });

  afterEach(async () => {
    try {
      expect(attackerSocket.socket.readyState).toBe(WebSocket.OPEN);
      await expectBystanderServed();
      expect(errorLogs.mock.calls.map((call) => String(call[0]))).toEqual([]);
    } finally {
      errorLogs.mockClear();
    }
  });

  afterAll(async () => {
    errorLogs?.mockRestore();
    for (const socket of sockets) socket.terminate();
    await relay?.close();
  });

  /** Another account sends to the bystander over HTTP; the bystander's socket receives it, and acks it. */
  async function expectBystanderServed(): Promise<void> {
    const ciphertext = randomBytes(20).toString('base64');
    const sent = await httpJson(relay, 'POST', '/v1/messages', {
      token: bystanderPeer.accessToken,
      body: { to: bystander.user.username, messages: [{ deviceId: 1, registrationId: bystander.keys.registrationId, type: EnvelopeType.Signal, ciphertext }] },
    });
    expect(sent.status).toBe(201);
    const delivered = await waitForFrame<MessageFrame>(
      bystanderSocket,
      (frame) => frame.type === ServerFrameType.Message && frame.envelope.ciphertext === ciphertext,
    );
    bystanderSocket.send({ type: ClientFrameType.Ack, id: delivered.envelope.id });
    deliveries++;
  }

  /** Resolves with the first frame from index `start` on that satisfies `predicate`; rejects after `timeoutMs`. */
  function frameAfter(client: WsClient, start: number, predicate: (frame: ServerFrame) => boolean, timeoutMs = 5000): Promise<ServerFrame> {
    const seen = client.frames.slice(start).find(predicate);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        client.onFrame.delete(listener);
        reject(new Error(`no matching frame within ${timeoutMs} ms; frames since: ${JSON.stringify(client.frames.slice(start)).slice(0, 500)}`));
      }, timeoutMs);
      const listener = (frame: ServerFrame) => {
        if (!predicate(frame)) return;
        clearTimeout(timer);
        client.onFrame.delete(listener);
        resolve(frame);
      };
      client.onFrame.add(listener);
    });
  }

  /** Sends `frame` then a probe; resolves with the answers (`sent`/`error` frames) to `frame`. */
  async function answersTo(frame: FuzzFrame, expectation: Expectation): Promise<ServerFrame[]> {
    const start = attackerSocket.frames.length;
    const probeId = `probe-${++probes}`;
    attackerSocket.socket.send(frame.data, { binary: frame.binary });
    attackerSocket.send({ type: 'fuzz-probe', requestId: probeId });
    const isProbeAnswer = (answer: ServerFrame) => answer.type === ServerFrameType.Error && answer.requestId === probeId;
    await frameAfter(attackerSocket, start, isProbeAnswer);
    if (expectation.kind === 'send' && expectation.requestId !== undefined) {
      // A send that passes validation is answered after its commit, so after the probe.
      const requestId = expectation.requestId;
      await frameAfter(attackerSocket, start, (answer) => (answer.type === ServerFrameType.Sent || answer.type === ServerFrameType.Error) && answer.requestId === requestId);
    }
    return attackerSocket.frames
      .slice(start)
      .filter((answer) => (answer.type === ServerFrameType.Sent || answer.type === ServerFrameType.Error) && !isProbeAnswer(answer));
  }

  /** What is wrong with the answers to a frame, or undefined. */
  function problemWith(answers: ServerFrame[], expectation: Expectation): string | undefined {
    const seen = JSON.stringify(answers).slice(0, 500);
    const silentAllowed = expectation.kind === 'ack';
    if (answers.length === 0) return silentAllowed ? undefined : `no answer (expected one of ${expectation.codes.join(', ')})`;
    if (answers.length > 1) return `${answers.length} answers: ${seen}`;
    const answer = answers[0]!;
    if (answer.type === ServerFrameType.Sent) {
      return expectation.kind === 'send' && answer.requestId === expectation.requestId ? undefined : `an unexpected sent: ${seen}`;
    }
    const error = answer as ErrorFrame;
    const unknownFields = Object.keys(error).filter((key) => !ERROR_FRAME_FIELDS.has(key));
    if (unknownFields.length > 0) return `an error frame with fields outside ErrorFrame (${unknownFields.join(', ')}): ${seen}`;
    if (!ERROR_CODES.has(error.code) || error.code === ErrorCode.Internal) return `an error frame without a stable code: ${seen}`;
    if (!expectation.codes.includes(error.code)) return `${error.code}, expected one of ${expectation.codes.join(', ')}: ${seen}`;
    if (typeof error.message !== 'string') return `an error frame without a message: ${seen}`;
    if (error.requestId !== expectation.requestId) return `requestId ${JSON.stringify(error.requestId)}, expected ${JSON.stringify(expectation.requestId)}: ${seen}`;
    return undefined;
  }

  /** `frame` as fast-check prints a counterexample: its kind and at most 300 characters. */
  function printable(frame: FuzzFrame): FuzzFrame {
    return Object.assign(frame, {
      [fc.toStringMethod]: () => {
        const shown = frame.binary ? `bytes ${Buffer.from(frame.data).toString('hex').slice(0, 300)}` : String(frame.data).slice(0, 300);
        return `${frame.kind} (${frame.binary ? 'binary' : 'text'}, ${frame.data.length}): ${JSON.stringify(shown)}`;
      },
    });
  }

  async function expectAnsweredAsDocumented(frame: FuzzFrame): Promise<void> {
    const expectation = expectationOf(frame);
    const problem = problemWith(await answersTo(frame, expectation), expectation);
    if (problem !== undefined) throw new Error(problem);
    if (attackerSocket.socket.readyState !== WebSocket.OPEN) throw new Error('the socket was closed');
  }

  const validSend = fc.tuple(fc.stringMatching(/^[\x20-\x7e]{1,64}$/), fc.uint8Array({ minLength: 1, maxLength: 64 }), fc.option(fc.uuid(), { nil: undefined })).map(
    ([requestId, bytes, id]) => ({
      type: ClientFrameType.Send,
      requestId,
      message: {
        to: target.user.username,
        ...(id !== undefined && { id }),
        messages: [{ deviceId: 1, registrationId: target.keys.registrationId, type: EnvelopeType.Signal, ciphertext: Buffer.from(bytes).toString('base64') }],
      },
    }),
  );
  const validAck = fc.uuid().map((id) => ({ type: ClientFrameType.Ack, id }));

  it('a client sends random text and binary frames, random JSON, truncated and mutated send/ack frames, unknown types, requestId abuse, invalid base64 ciphertexts, hostile numbers and deep nesting: every frame is answered as docs/protocol.md says, with a stable ErrorCode and its requestId, and the socket stays open', async () => {
    let frames = 0;
    await fc.assert(
      fc.asyncProperty(
        hostileFrame(validSend, validAck).map((frame) => printable(frame)),
        async (frame) => {
          await expectAnsweredAsDocumented(frame);
          // Meanwhile another client on another socket is served.
          if (++frames % 40 === 0) await expectBystanderServed();
        },
      ),
      fuzzParameters(400),
    );
    expect(deliveries).toBeGreaterThan(0);
  });

  it('a client abuses requestId (empty, 65 characters, 64 wide characters, NUL, numbers, objects) on invalid and unknown frames: an error frame echoes exactly the requestIds the protocol accepts, and no other', async () => {
    const cases: unknown[] = ['', 'x', 'x'.repeat(64), 'x'.repeat(65), '😀'.repeat(40), '😀'.repeat(64), '😀'.repeat(65), 'a\u0000b', 7, null, ['r'], { r: 1 }];
    for (const requestId of cases) {
      for (const frame of [
        { type: ClientFrameType.Send, requestId, message: { to: target.user.username, messages: [] } },
        { type: 'subscribe', requestId },
        { type: ClientFrameType.Ack, requestId, id: 'not-a-uuid' },
      ]) {
        const fuzzFrame: FuzzFrame = { kind: 'requestId', data: JSON.stringify(frame), binary: false };
        const expectation = expectationOf(fuzzFrame);
        expect({ frame, problem: problemWith(await answersTo(fuzzFrame, expectation), expectation) }).toEqual({ frame, problem: undefined });
      }
    }
    // A wide-character requestId the DTO accepts is echoed on refusal as on success.
    const wide = '😀'.repeat(40);
    const refused = await answersTo({ kind: 'requestId', data: JSON.stringify({ type: 'send', requestId: wide, message: { to: target.user.username, messages: [] } }), binary: false }, { kind: 'send', codes: SEND_REFUSALS, requestId: wide });
    expect(refused).toEqual([expect.objectContaining({ type: ServerFrameType.Error, code: ErrorCode.ValidationFailed, requestId: wide })]);
  });

  it('a client sends binary frames that are not JSON (random bytes, invalid UTF-8, a PNG header): each is answered with MALFORMED_JSON, as docs/protocol.md says of a frame that is not JSON, and the socket stays open', async () => {
    const frames = [Buffer.from([0xff, 0xfe, 0xfd]), Buffer.from([0xc0, 0xae]), Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex'), randomBytes(512), Buffer.alloc(0)];
    for (const data of frames) {
      const answers = await answersTo({ kind: 'binary', data: new Uint8Array(data), binary: true }, { kind: 'refused', codes: [ErrorCode.MalformedJson], requestId: undefined });
      expect(answers).toEqual([expect.objectContaining({ type: ServerFrameType.Error, code: ErrorCode.MalformedJson })]);
      expect((answers[0] as ErrorFrame).requestId).toBeUndefined();
    }
    expect(attackerSocket.socket.readyState).toBe(WebSocket.OPEN);
  });

  it('a client sends a send frame whose messages are 150,000 empty objects (validation work and answer bytes per value): VALIDATION_FAILED naming the bound, with the requestId, the socket stays open', async () => {
    const requestId = 'wide';
    const data = JSON.stringify({ type: ClientFrameType.Send, requestId, message: { to: target.user.username, messages: Array.from({ length: 150_000 }, () => ({})) } });
    const answers = await answersTo({ kind: 'wide', data, binary: false }, { kind: 'send', codes: [ErrorCode.ValidationFailed], requestId });
    expect(answers).toEqual([
      expect.objectContaining({ type: ServerFrameType.Error, code: ErrorCode.ValidationFailed, requestId, details: [`frame: must not hold more than ${MAX_JSON_VALUES} values`] }),
    ]);
    expect(attackerSocket.socket.readyState).toBe(WebSocket.OPEN);
  });

  it('a client sends a send frame whose message is nested 10_000 deep, and a frame that is nothing but nesting: VALIDATION_FAILED with the requestId, the socket stays open', async () => {
    for (const shape of ['array', 'object', 'mixed'] as const) {
      const requestId = `deep-${shape}`;
      const data = `{"type":"send","requestId":"${requestId}","message":${deeplyNested(10_000, shape).text}}`;
      const answers = await answersTo({ kind: 'deep', data, binary: false }, { kind: 'send', codes: [ErrorCode.ValidationFailed], requestId });
      expect(answers).toEqual([expect.objectContaining({ type: ServerFrameType.Error, code: ErrorCode.ValidationFailed, requestId })]);
      const bare = await answersTo({ kind: 'deep', data: deeplyNested(10_000, shape).text, binary: false }, { kind: 'refused', codes: [], requestId: undefined });
      expect(bare).toEqual([expect.objectContaining({ type: ServerFrameType.Error, code: shape === 'array' || shape === 'mixed' ? ErrorCode.ValidationFailed : ErrorCode.UnknownFrameType })]);
    }
    expect(attackerSocket.socket.readyState).toBe(WebSocket.OPEN);
  });
});

import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { Logger } from '@nestjs/common';
import { JwtService } from '@nestjs/jwt';
import WebSocket from 'ws';
import {
  CloseCode,
  EnvelopeType,
  ErrorCode,
  MAX_WS_FRAME_BYTES,
  ServerFrameType,
  type AuthResponse,
  type ErrorFrame,
  type MessageFrame,
  type SentFrame,
  type ServerFrame,
} from '@chat/protocol';
import { MAX_FRAMES_IN_PROGRESS } from '../src/gateway/chat.gateway.js';
import { httpJson, registerKeyedUser, startTestRelay, TEST_JWT_SECRET, type TestRelay } from './support/test-relay.js';
import { connectWs, refusedUpgrade, waitForClose, waitForFrame, type WsClient } from './support/ws-client.js';

const ciphertext = (text: string) => Buffer.from(text).toString('base64');
const textOf = (frame: ServerFrame) => Buffer.from((frame as MessageFrame).envelope.ciphertext, 'base64').toString();
const isMessage = (frame: ServerFrame): frame is MessageFrame => frame.type === ServerFrameType.Message;
const b64url = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');

describe('gateway (e2e)', () => {
  let relay: TestRelay;
  const open: WebSocket[] = [];

  /** Registration id of each keyed user's device 1, which every device message must name. */
  const registrationIds = new Map<string, number>();
  const keyedUser = async (prefix: string) => {
    const { user, keys } = await registerKeyedUser(relay, prefix);
    registrationIds.set(user.username, keys.registrationId);
    return user;
  };
  const toDevice1 = (to: AuthResponse, text: string) => ({
    deviceId: 1,
    registrationId: registrationIds.get(to.username),
    type: EnvelopeType.Signal,
    ciphertext: ciphertext(text),
  });
  const connect = async (user: AuthResponse | string, options?: WebSocket.ClientOptions) => {
    const client = await connectWs(relay.wsUrl, typeof user === 'string' ? user : user.accessToken, options);
    open.push(client.socket);
    return client;
  };
  const sendHttp = async (from: AuthResponse, to: AuthResponse, text: string) => {
    const { status } = await httpJson(relay, 'POST', '/v1/messages', {
      token: from.accessToken,
      body: { to: to.username, messages: [toDevice1(to, text)] },
    });
    expect(status).toBe(201);
  };
  const sendFrame = (to: AuthResponse, text: string, requestId: string) => ({
    type: 'send',
    requestId,
    message: { to: to.username, messages: [toDevice1(to, text)] },
  });
  /** A send over the socket and its `sent` answer: the socket works. */
  const roundTrip = async (client: WsClient, to: AuthResponse, requestId: string) => {
    client.send(sendFrame(to, `ping ${requestId}`, requestId));
    return waitForFrame<SentFrame>(client, (f) => f.type === ServerFrameType.Sent && f.requestId === requestId);
  };
  const queued = async (user: AuthResponse) =>
    (await httpJson(relay, 'GET', '/v1/messages', { token: user.accessToken })).body.messages as { id: string }[];
  const eventually = async (check: () => Promise<boolean>, timeoutMs = 3000) => {
    const deadline = Date.now() + timeoutMs;
    while (!(await check())) {
      if (Date.now() > deadline) throw new Error('condition not reached in time');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  };
  const deviceRowIdOf = async (user: AuthResponse) => {
    const [row] = await relay.sql<{ id: string }>('SELECT id FROM devices WHERE account_id = $1::uuid AND device_id = $2', user.accountId, user.deviceId);
    return row!.id;
  };
  const token = async (user: AuthResponse, expiresIn: number, secret = TEST_JWT_SECRET) =>
    new JwtService().sign(
      { sub: user.accountId, dev: user.deviceId, did: await deviceRowIdOf(user), usr: user.username, cv: 0 },
      { secret, algorithm: 'HS256', issuer: 'chat-relay', audience: 'chat-relay', expiresIn },
    );

  beforeAll(async () => {
    relay = await startTestRelay(); // heartbeat every 500 ms (the harness default)
  });

  afterAll(async () => {
    for (const socket of open) socket.terminate();
    await relay?.close();
  });

  describe('handshake', () => {
    let user: AuthResponse;
    beforeAll(async () => {
      user = await keyedUser('hs');
    });

    it.each([
      ['no token', async () => ({}), ErrorCode.AuthenticationRequired],
      ['a token signed with another secret', async () => ({ authorization: `Bearer ${await token(user, 60, 'x'.repeat(48))}` }), ErrorCode.InvalidToken],
      ['an expired token', async () => ({ authorization: `Bearer ${await token(user, -10)}` }), ErrorCode.TokenExpired],
      [
        'an alg=none token',
        async () => ({
          authorization: `Bearer ${b64url({ alg: 'none', typ: 'JWT' })}.${b64url({
            sub: user.accountId,
            dev: 1,
            usr: user.username,
            cv: 0,
            iss: 'chat-relay',
            aud: 'chat-relay',
            exp: Math.floor(Date.now() / 1000) + 600,
          })}.`,
        }),
        ErrorCode.InvalidToken,
      ],
    ])('refuses the upgrade with %s: HTTP 401 and a JSON ErrorBody', async (_what, headers, code) => {
      const refusal = await refusedUpgrade(relay.wsUrl, await headers());
      expect(refusal.status).toBe(401);
      expect(refusal.contentType).toMatch(/^application\/json/);
      expect(refusal.body).toEqual({ code, message: expect.any(String) });
    });

    it('accepts a valid token', async () => {
      const client = await connect(user);
      await waitForFrame(client, (f) => f.type === ServerFrameType.QueueEmpty);
    });
  });

  it('sends the stored queue in order, then queue-empty, then live messages', async () => {
    const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
    for (const text of ['q1', 'q2', 'q3']) await sendHttp(alice, bob, text);
    const client = await connect(bob);
    await waitForFrame(client, (f) => f.type === ServerFrameType.QueueEmpty);
    await sendHttp(alice, bob, 'live');
    await waitForFrame(client, (f) => isMessage(f) && textOf(f) === 'live');
    // bob uploaded no one-time prekeys, so keys-low follows queue-empty.
    expect(client.frames.map((f) => (isMessage(f) ? textOf(f) : f.type))).toEqual(['q1', 'q2', 'q3', 'queue-empty', 'keys-low', 'live']);
    const envelope = (client.frames[0] as MessageFrame).envelope;
    expect(envelope).toMatchObject({ source: alice.username, sourceDevice: 1, type: EnvelopeType.Signal });
  });

  it('delivers 200 messages exactly once and in order across the queue/live boundary to a client that acks', async () => {
    const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
    const labels = Array.from({ length: 200 }, (_, i) => `m${i}`);
    for (const label of labels.slice(0, 100)) await sendHttp(alice, bob, label);
    // The second half is stored while the first half is being drained.
    const sending = (async () => {
      for (const label of labels.slice(100)) await sendHttp(alice, bob, label);
    })();
    const client = await connect(bob);
    // A client acks what it has handled; unacked frames hold the delivery window (MAX_INFLIGHT_DELIVERIES).
    client.onFrame.add((f) => {
      if (isMessage(f)) client.send({ type: 'ack', id: f.envelope.id });
    });
    await sending;
    await waitForFrame(client, (f) => isMessage(f) && textOf(f) === 'm199', 15000);
    // A last message proves nothing else was still on its way behind m199.
    await sendHttp(alice, bob, 'end');
    await waitForFrame(client, (f) => isMessage(f) && textOf(f) === 'end');
    const received = client.frames.filter(isMessage).map(textOf);
    expect(received).toEqual([...labels, 'end']);
    expect(client.frames.filter((f) => f.type === ServerFrameType.QueueEmpty)).toHaveLength(1);
  });

  it('answers a send frame with sent and delivers it live; an ack frame deletes only its own message', async () => {
    const [alice, bob, carol] = [await keyedUser('alice'), await keyedUser('bob'), await keyedUser('carol')];
    const aliceWs = await connect(alice);
    const bobWs = await connect(bob);
    await waitForFrame(bobWs, (f) => f.type === ServerFrameType.QueueEmpty);

    const sent = await roundTrip(aliceWs, bob, 'r1');
    expect(sent).toEqual({ type: ServerFrameType.Sent, requestId: 'r1', serverTimestamp: expect.any(Number) });
    const delivered = await waitForFrame<MessageFrame>(bobWs, (f) => isMessage(f) && textOf(f) === 'ping r1');
    expect(delivered.envelope).toMatchObject({ source: alice.username, serverTimestamp: sent.serverTimestamp });

    const carolWs = await connect(carol);
    await sendHttp(alice, carol, 'for carol');
    const carolMessage = await waitForFrame<MessageFrame>(carolWs, (f) => isMessage(f) && textOf(f) === 'for carol');
    carolWs.send({ type: 'ack', id: delivered.envelope.id });
    carolWs.send({ type: 'ack', id: carolMessage.envelope.id });
    await eventually(async () => (await queued(carol)).length === 0);
    expect((await queued(bob)).map((m) => m.id)).toEqual([delivered.envelope.id]);

    bobWs.send({ type: 'ack', id: delivered.envelope.id });
    await eventually(async () => (await queued(bob)).length === 0);
  });

  it('answers every frame of a client that writes more than MAX_FRAMES_IN_PROGRESS sends without waiting, and delivers them all', async () => {
    const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
    const aliceWs = await connect(alice);
    const bobWs = await connect(bob);
    await waitForFrame(bobWs, (f) => f.type === ServerFrameType.QueueEmpty);
    bobWs.onFrame.add((f) => {
      if (isMessage(f)) bobWs.send({ type: 'ack', id: f.envelope.id });
    });
    const count = MAX_FRAMES_IN_PROGRESS * 2 + 10;
    // Written in one go: the relay stops reading the socket at its limit and reads on once half is answered.
    for (let i = 0; i < count; i++) aliceWs.send(sendFrame(bob, `burst ${i}`, `b${i}`));
    await waitForFrame(aliceWs, () => aliceWs.frames.filter((f) => f.type === ServerFrameType.Sent).length === count, 30_000);
    expect(aliceWs.frames.filter((f) => f.type === ServerFrameType.Error)).toEqual([]);
    await waitForFrame(bobWs, () => bobWs.frames.filter(isMessage).length === count, 30_000);
    expect(new Set(bobWs.frames.filter(isMessage).map(textOf)).size).toBe(count);
    await eventually(async () => (await queued(bob)).length === 0, 10_000);
  });

  it('answers malformed, unknown and invalid frames with error frames and keeps the socket working', async () => {
    const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
    const client = await connect(alice);
    const nextError = () => waitForFrame<ErrorFrame>(client, (f) => f.type === ServerFrameType.Error && !seen.has(f));
    const seen = new Set<ServerFrame>();
    const expectError = async (frame: unknown, expected: Partial<ErrorFrame>) => {
      client.send(frame);
      const error = await nextError();
      seen.add(error);
      expect(error).toMatchObject({ type: ServerFrameType.Error, ...expected });
      return error;
    };

    await expectError('{"type": "send", ', { code: ErrorCode.MalformedJson });
    await expectError({ type: 'subscribe', requestId: 'u1' }, { code: ErrorCode.UnknownFrameType, requestId: 'u1' });
    const invalid = await expectError(
      { ...sendFrame(bob, 'x', 'v1'), message: { to: bob.username, messages: [{ deviceId: 0, registrationId: 1, type: 'smoke', ciphertext: '***' }] } },
      { code: ErrorCode.ValidationFailed, requestId: 'v1' },
    );
    expect(invalid.details).toEqual(expect.arrayContaining([expect.stringContaining('message.messages[0].deviceId')]));
    await expectError({ ...sendFrame(bob, 'x', 'v2'), source: 'mallory' }, { code: ErrorCode.ValidationFailed, requestId: 'v2' });
    await expectError(sendFrame(alice, 'to self', 'v3'), { code: ErrorCode.UnknownRecipient, requestId: 'v3' });
    await expectError({ type: 'ack', id: 'not-a-uuid' }, { code: ErrorCode.ValidationFailed });

    expect(client.socket.readyState).toBe(WebSocket.OPEN);
    await roundTrip(client, bob, 'after-abuse');
  });

  it('closes a socket that sends a frame over the limit with 1009, and serves others meanwhile', async () => {
    const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
    const abuser = await connect(alice);
    const bystander = await connect(bob);
    const closed = waitForClose(abuser.socket);
    const errorLogs = jest.spyOn(Logger.prototype, 'error');
    try {
      abuser.socket.send('x'.repeat(MAX_WS_FRAME_BYTES + 1));
      expect((await closed).code).toBe(CloseCode.MessageTooBig);
      await roundTrip(bystander, alice, 'still-serving');
      // A client's protocol error is not the relay's: it must not reach the error log.
      expect(errorLogs).not.toHaveBeenCalled();
    } finally {
      errorLogs.mockRestore();
    }
  });

  it('closes the older socket of a device with 4409 when it connects again', async () => {
    const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
    const first = await connect(bob);
    const closed = waitForClose(first.socket);
    const second = await connect(bob);
    expect(await closed).toEqual({ code: CloseCode.ConnectionReplaced, reason: 'CONNECTION_REPLACED' });
    await waitForFrame(second, (f) => f.type === ServerFrameType.QueueEmpty);
    await sendHttp(alice, bob, 'to the new socket');
    await waitForFrame(second, (f) => isMessage(f) && textOf(f) === 'to the new socket');
  });

  it('terminates a socket that does not answer pings, and keeps one that does', async () => {
    const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
    const silent = await connect(alice, { autoPong: false });
    const healthy = await connect(bob);
    const closed = await waitForClose(silent.socket, 3000);
    expect(closed.code).toBe(1006); // terminated: no close frame
    expect(silent.pings).toBeGreaterThanOrEqual(1);
    expect(healthy.socket.readyState).toBe(WebSocket.OPEN);
    await roundTrip(healthy, alice, 'alive');
  });

  it('closes the socket with 4401 when its token expires', async () => {
    const alice = await keyedUser('alice');
    const client = await connect(await token(alice, 2));
    await waitForFrame(client, (f) => f.type === ServerFrameType.QueueEmpty);
    expect(await waitForClose(client.socket, 4000)).toEqual({ code: CloseCode.TokenExpired, reason: ErrorCode.TokenExpired });
  });
});

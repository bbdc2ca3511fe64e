/**
 * The attacker speaks WebSocket badly on purpose (the Autobahn testsuite's
 * sections 1-7, on an authenticated socket of the real relay), holds
 * connections open without finishing them, stops reading, or opens more
 * sockets than it may. Each test checks the exact close code or HTTP status
 * a conforming server gives (RFC 6455 section 7.4.1) and that the relay
 * goes on serving a bystander.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import WebSocket from 'ws';
import {
  CloseCode,
  EnvelopeType,
  ErrorCode,
  MAX_CIPHERTEXT_BYTES,
  MAX_WS_FRAME_BYTES,
  ServerFrameType,
  type AuthResponse,
  type ErrorBody,
  type MessageFrame,
  type ProvisioningSlotResponse,
  type SentFrame,
} from '@chat/protocol';
import { httpJson, registerKeyedUser, registerUser, startTestRelay, uniqueUsername, type HttpResult, type TestRelay } from '../support/test-relay.js';
import { until } from '../support/wait.js';
import { connectWs, waitForClose, waitForFrame, type WsClient } from '../support/ws-client.js';
import { attemptUpgrade, encodeFrame, Opcode, openRawWebSocket, openTcp, type RawWebSocket } from './support/raw-ws.js';

/** RFC 6455 section 7.4.1. */
const PROTOCOL_ERROR = 1002;
const INVALID_PAYLOAD = 1007;

/** HTTP_HEADERS_TIMEOUT_MS, short enough to wait out in a test; the production default is 15 s. */
const HTTP_TIMEOUT_MS = 1000;
/** Sockets per client address. The relay trusts one proxy hop (TRUST_PROXY=1): the test plays the proxy and names the client in X-Forwarded-For. */
const CAP = 4;
const MAX_DEVICES = 3;
const SOCKETS_PER_DEVICE = 3;

let lastAddress = 0;
/** A client address no other test uses (TEST-NET-3, RFC 5737), as the trusted proxy reports it. */
const newClientAddress = () => `203.0.113.${++lastAddress}`;
const behindProxy = (address: string, token?: string): Record<string, string> => ({
  'X-Forwarded-For': address,
  ...(token !== undefined && { Authorization: `Bearer ${token}` }),
});

describe('adversarial: WebSocket conformance', () => {
  let relay: TestRelay;
  let alice: { user: AuthResponse; registrationId: number };
  let bob: { user: AuthResponse; registrationId: number };
  /** Never connects: the sends of these tests go to her, so no one else's queue fills. */
  let carol: { user: AuthResponse; registrationId: number };
  /** Bob's well-behaved socket: after each attack it must still get its answers. */
  let bystander: WsClient;
  const raws: RawWebSocket[] = [];
  const sockets: WebSocket[] = [];

  const sendFrameTo = (to: { user: AuthResponse; registrationId: number }, requestId: string, ciphertext: string) => ({
    type: 'send',
    requestId,
    message: { to: to.user.username, messages: [{ deviceId: 1, registrationId: to.registrationId, type: EnvelopeType.Signal, ciphertext }] },
  });
  const sendFrame = (requestId: string) => sendFrameTo(carol, requestId, Buffer.from('hello').toString('base64'));
  /** Bob sends to Carol over his socket and gets `sent`: the relay still serves other clients. */
  const bystanderServed = async (requestId: string) => {
    bystander.send(sendFrame(requestId));
    const sent = await waitForFrame<SentFrame>(bystander, (f) => f.type === ServerFrameType.Sent && f.requestId === requestId);
    expect(sent.serverTimestamp).toEqual(expect.any(Number));
  };
  /** Alice's authenticated socket, spoken to frame by frame. */
  const attacker = async () => {
    const raw = await openRawWebSocket(relay.wsUrl, { Authorization: `Bearer ${alice.user.accessToken}` });
    raws.push(raw);
    // The upgrade is done once the relay sent what it has (queue-empty): the socket is fully attached.
    await raw.waitForFrame((frame) => frame.opcode === Opcode.Text && frame.payload.includes('"queue-empty"'));
    return raw;
  };
  const expectClosedWith = async (raw: RawWebSocket, code: number) => {
    expect(await raw.closed()).toEqual({ code, reason: '' });
  };
  const textFrame = (value: unknown, fin = true) => encodeFrame({ opcode: Opcode.Text, payload: JSON.stringify(value), fin });

  /** An account of its own for a test that holds sockets (one socket per device, or the older one is replaced). */
  const freshAccount = () => registerUser(relay, uniqueUsername('tenant'));
  const freshKeyedAccount = async () => {
    const { user, keys } = await registerKeyedUser(relay, 'victim');
    return { user, registrationId: keys.registrationId };
  };
  /** Opens `count` sockets from `address`, each of an account of its own, and keeps them open. */
  const holdSockets = async (count: number, headers: () => Record<string, string>) => {
    for (let i = 0; i < count; i++) sockets.push((await connectWs(relay.wsUrl, (await freshAccount()).accessToken, { headers: headers() })).socket);
  };
  /** The status of an upgrade: 101, or the refusal's. An accepted socket is closed again at once unless `keep`. */
  const upgradeStatus = async (headers: Record<string, string>, keep = false) => {
    const result = await attemptUpgrade(relay.wsUrl, headers);
    if (!result.accepted) return result.status;
    if (keep) raws.push(result.socket);
    else result.socket.destroy();
    return 101;
  };
  const expectRefusal = (result: Awaited<ReturnType<typeof attemptUpgrade>>, status: number, code: ErrorCode) => {
    expect(result.accepted).toBe(false);
    if (result.accepted) return;
    expect(result.status).toBe(status);
    expect((JSON.parse(result.body) as ErrorBody).code).toBe(code);
  };
  /** Links a new device to `primary`'s account (the relay never opens the provisioning message, so any bytes do). */
  const linkDeviceAttempt = async (primary: AuthResponse): Promise<HttpResult<AuthResponse>> => {
    const slot = await httpJson<ProvisioningSlotResponse>(relay, 'POST', '/v1/provisioning');
    expect(slot.status).toBe(201);
    const approved = await httpJson(relay, 'PUT', `/v1/provisioning/${slot.body.id}`, {
      token: primary.accessToken,
      body: { message: Buffer.from('sealed provisioning message').toString('base64') },
    });
    if (approved.status !== 204) return approved;
    return httpJson<AuthResponse>(relay, 'POST', '/v1/devices/link', { body: { provisioningId: slot.body.id, secret: slot.body.secret } });
  };
  const linkDevice = async (primary: AuthResponse) => {
    const linked = await linkDeviceAttempt(primary);
    expect(linked.status).toBe(201);
    return linked.body;
  };

  beforeAll(async () => {
    relay = await startTestRelay({
      HTTP_HEADERS_TIMEOUT_MS: String(HTTP_TIMEOUT_MS),
      // Longer than the headers timeout, so that a request body delayed by a busy CI machine is not cut.
      HTTP_REQUEST_TIMEOUT_MS: String(5 * HTTP_TIMEOUT_MS),
      HTTP_CONNECTIONS_CHECK_INTERVAL_MS: '50',
      WS_MAX_CONNECTIONS_PER_IP: String(CAP),
      TRUST_PROXY: '1',
      MAX_DEVICES_PER_ACCOUNT: String(MAX_DEVICES),
    });
    const [a, b, c] = await Promise.all(['alice', 'bob', 'carol'].map((prefix) => registerKeyedUser(relay, prefix)));
    [alice, bob, carol] = [a!, b!, c!].map(({ user, keys }) => ({ user, registrationId: keys.registrationId }));
    bystander = await connectWs(relay.wsUrl, bob.user.accessToken);
  });

  afterAll(async () => {
    for (const raw of raws) raw.destroy();
    for (const socket of sockets) socket.terminate();
    bystander?.socket.terminate();
    await relay?.close();
  });

  describe('frames', () => {
    it('a client sends one text frame over maxPayload: the socket is closed with 1009 and other clients are served', async () => {
      const raw = await attacker();
      // The header alone announces the size; the relay need not read the payload to refuse it.
      raw.write(encodeFrame({ opcode: Opcode.Text, payload: Buffer.alloc(1024, 0x20), declaredLength: MAX_WS_FRAME_BYTES + 1 }));
      await expectClosedWith(raw, CloseCode.MessageTooBig);
      await bystanderServed('after-oversize');
    });

    it('a client fragments one message into frames that together exceed maxPayload: the socket is closed with 1009', async () => {
      const raw = await attacker();
      const half = Buffer.alloc(MAX_WS_FRAME_BYTES / 2 + 1, 0x20);
      raw.write(encodeFrame({ opcode: Opcode.Text, payload: half, fin: false }), encodeFrame({ opcode: Opcode.Continuation, payload: half }));
      await expectClosedWith(raw, CloseCode.MessageTooBig);
      await bystanderServed('after-fragmented-oversize');
    });

    it('a client sends a text frame of invalid UTF-8: the socket is closed with 1007', async () => {
      const raw = await attacker();
      // 0xC0 0xAF: an overlong encoding of '/', forbidden by RFC 3629.
      raw.write(encodeFrame({ opcode: Opcode.Text, payload: Buffer.from([0x7b, 0xc0, 0xaf, 0x7d]) }));
      await expectClosedWith(raw, INVALID_PAYLOAD);
      await bystanderServed('after-invalid-utf8');
    });

    it('a client splits a text message so that its fragments end in invalid UTF-8: the socket is closed with 1007', async () => {
      const raw = await attacker();
      // The first fragment ends in the lead byte of a 2-byte character (0xC3); the next does not continue it (0x28 is '(').
      raw.write(
        encodeFrame({ opcode: Opcode.Text, payload: Buffer.concat([Buffer.from('{"type":"x","requestId":"'), Buffer.from([0xc3])]), fin: false }),
        encodeFrame({ opcode: Opcode.Continuation, payload: Buffer.concat([Buffer.from([0x28]), Buffer.from('"}')]) }),
      );
      await expectClosedWith(raw, INVALID_PAYLOAD);
      await bystanderServed('after-split-invalid-utf8');
    });

    it('a client splits a valid multi-byte character across two fragments: the reassembled frame is read and answered', async () => {
      const raw = await attacker();
      const whole = Buffer.from(JSON.stringify({ type: 'no-such-frame', requestId: 'r-\u00e9\u{1f600}' }), 'utf8');
      const cut = whole.indexOf(0xf0) + 2; // inside the 4-byte emoji
      raw.write(encodeFrame({ opcode: Opcode.Text, payload: whole.subarray(0, cut), fin: false }), encodeFrame({ opcode: Opcode.Continuation, payload: whole.subarray(cut) }));
      const answer = await raw.waitForFrame((frame) => frame.opcode === Opcode.Text && frame.payload.includes(ErrorCode.UnknownFrameType));
      expect(JSON.parse(answer.payload.toString('utf8'))).toMatchObject({ type: ServerFrameType.Error, requestId: 'r-\u00e9\u{1f600}', code: ErrorCode.UnknownFrameType });
    });

    it('a client sends a ping with a payload over 125 bytes: the socket is closed with 1002', async () => {
      const raw = await attacker();
      raw.write(encodeFrame({ opcode: Opcode.Ping, payload: Buffer.alloc(126, 0x61) }));
      await expectClosedWith(raw, PROTOCOL_ERROR);
      await bystanderServed('after-big-ping');
    });

    it('a client fragments a control frame (a ping with FIN=0): the socket is closed with 1002', async () => {
      const raw = await attacker();
      raw.write(encodeFrame({ opcode: Opcode.Ping, payload: 'abc', fin: false }));
      await expectClosedWith(raw, PROTOCOL_ERROR);
      await bystanderServed('after-fragmented-ping');
    });

    it('a client sends a continuation frame with no message begun: the socket is closed with 1002', async () => {
      const raw = await attacker();
      raw.write(encodeFrame({ opcode: Opcode.Continuation, payload: '{"type":"ack"}' }));
      await expectClosedWith(raw, PROTOCOL_ERROR);
      await bystanderServed('after-lone-continuation');
    });

    it('a client starts a new text frame while a fragmented message is still open: the socket is closed with 1002', async () => {
      const raw = await attacker();
      raw.write(encodeFrame({ opcode: Opcode.Text, payload: '{"type":', fin: false }), textFrame({ type: 'ack', id: 'x' }));
      await expectClosedWith(raw, PROTOCOL_ERROR);
      await bystanderServed('after-interleaved-data');
    });

    it.each([
      ['RSV1', 0b100],
      ['RSV2', 0b010],
      ['RSV3', 0b001],
    ])('a client sets %s without a negotiated extension: the socket is closed with 1002', async (_name, rsv) => {
      const raw = await attacker();
      raw.write(encodeFrame({ opcode: Opcode.Text, payload: '{"type":"ack","id":"x"}', rsv }));
      await expectClosedWith(raw, PROTOCOL_ERROR);
      await bystanderServed(`after-rsv-${rsv}`);
    });

    it.each([0x3, 0x4, 0x5, 0x6, 0x7, 0xb, 0xc, 0xd, 0xe, 0xf].map((opcode) => [`0x${opcode.toString(16).toUpperCase()}`, opcode] as const))(
      'a client sends a frame of reserved opcode %s: the socket is closed with 1002',
      async (_name, opcode) => {
        const raw = await attacker();
        raw.write(encodeFrame({ opcode, payload: 'x' }));
        await expectClosedWith(raw, PROTOCOL_ERROR);
        await bystanderServed(`after-opcode-${opcode}`);
      },
    );

    it('a client sends an unmasked frame: the socket is closed with 1002', async () => {
      const raw = await attacker();
      raw.write(encodeFrame({ opcode: Opcode.Text, payload: '{"type":"ack","id":"x"}', masked: false }));
      await expectClosedWith(raw, PROTOCOL_ERROR);
      await bystanderServed('after-unmasked');
    });

    it('a client floods pings: each gets its pong with the same payload and a send behind them is answered', async () => {
      const raw = await attacker();
      const pings = Array.from({ length: 500 }, (_, i) => encodeFrame({ opcode: Opcode.Ping, payload: `p${i}` }));
      raw.write(...pings, textFrame(sendFrame('behind-the-flood')));
      await raw.waitForFrame((frame) => frame.opcode === Opcode.Text && frame.payload.includes('"behind-the-flood"'), 15_000);
      await raw.waitForFrame((frame) => frame.opcode === Opcode.Pong && frame.payload.toString() === 'p499', 15_000);
      const pongs = raw.frames.filter((frame) => frame.opcode === Opcode.Pong).map((frame) => frame.payload.toString());
      expect(pongs).toEqual(Array.from({ length: 500 }, (_, i) => `p${i}`));
      await bystanderServed('after-ping-flood');
    });

    it('a client interleaves a ping inside a fragmented send frame: the ping is ponged and the reassembled send is answered', async () => {
      const raw = await attacker();
      const whole = Buffer.from(JSON.stringify(sendFrame('fragmented-send')), 'utf8');
      const third = Math.floor(whole.length / 3);
      raw.write(
        encodeFrame({ opcode: Opcode.Text, payload: whole.subarray(0, third), fin: false }),
        encodeFrame({ opcode: Opcode.Ping, payload: 'mid-message' }),
        encodeFrame({ opcode: Opcode.Continuation, payload: whole.subarray(third, 2 * third), fin: false }),
        encodeFrame({ opcode: Opcode.Continuation, payload: whole.subarray(2 * third) }),
      );
      await raw.waitForFrame((frame) => frame.opcode === Opcode.Pong && frame.payload.toString() === 'mid-message');
      const answer = await raw.waitForFrame((frame) => frame.opcode === Opcode.Text && frame.payload.includes('"fragmented-send"'));
      expect(JSON.parse(answer.payload.toString('utf8'))).toMatchObject({ type: ServerFrameType.Sent, requestId: 'fragmented-send' });
    });
  });

  describe('slow and idle connections', () => {
    it('a client opens a TCP connection and sends nothing: the relay answers 408 and closes it after the headers timeout, and keeps its WebSockets', async () => {
      // Opened first, so that it has lived longer than the headers timeout when that closes the idle connection.
      const socket = await connectWs(relay.wsUrl, (await freshAccount()).accessToken);
      sockets.push(socket.socket);
      const idle = await openTcp(relay.wsUrl);
      await idle.closed(10 * HTTP_TIMEOUT_MS);
      expect(idle.received()).toMatch(/^HTTP\/1\.1 408 /);
      expect(socket.socket.readyState).toBe(WebSocket.OPEN);
      await bystanderServed('after-idle-connection');
    });

    it('a client sends its upgrade request one byte at a time (slowloris): the relay answers 408 and closes it before the headers are complete', async () => {
      const slow = await openTcp(relay.wsUrl);
      const request = Buffer.from(
        `GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${Buffer.alloc(16).toString('base64')}\r\n` +
          `Sec-WebSocket-Version: 13\r\nAuthorization: Bearer ${alice.user.accessToken}\r\n\r\n`,
        'latin1',
      );
      let sent = 0;
      // Every byte comes in time to reset a per-byte idle timer; only a deadline on the whole header section stops this.
      const drip = setInterval(() => {
        if (sent < request.length && !slow.socket.destroyed) slow.socket.write(request.subarray(sent, ++sent));
      }, 50);
      try {
        await slow.closed(10 * HTTP_TIMEOUT_MS);
      } finally {
        clearInterval(drip);
      }
      expect(sent).toBeLessThan(request.length);
      expect(slow.received()).toMatch(/^HTTP\/1\.1 408 /);
      await bystanderServed('after-slowloris');
    });

    it.each([
      ['a client stops reading (its TCP receive buffer fills)', false],
      ['a client stops reading but sends unsolicited pongs to look alive', true],
    ])('%s: the relay terminates it, frees its slot, and its undelivered messages stay queued for the next connection', async (_attack, fakePongs) => {
      const address = newClientAddress();
      const victim = await freshKeyedAccount();
      const stalled = await openRawWebSocket(relay.wsUrl, behindProxy(address, victim.user.accessToken));
      raws.push(stalled);
      await stalled.waitForFrame((frame) => frame.opcode === Opcode.Text && frame.payload.includes('"queue-empty"'));
      // The address's other slots are taken, so an upgrade from it is accepted only once the stalled socket is gone.
      await holdSockets(CAP - 1, () => behindProxy(address));
      expect(await upgradeStatus(behindProxy(address, (await freshAccount()).accessToken))).toBe(429);

      stalled.socket.pause();
      // RFC 6455 section 5.5.3 allows unsolicited pongs; they must not count as answers to the relay's pings.
      const pongs = fakePongs ? setInterval(() => stalled.write(encodeFrame({ opcode: Opcode.Pong, payload: 'alive' })), 100) : undefined;
      try {
        // 3.5 MB, more than a receive buffer that was never read from grows to: the relay's writes back up.
        const count = 40;
        const ciphertext = Buffer.alloc(MAX_CIPHERTEXT_BYTES, 0x5a).toString('base64');
        // Over HTTP: a socket that writes megabytes has its pongs queued behind them, and the test's 500 ms heartbeat is short.
        const sends = Array.from({ length: count }, (_, i) =>
          httpJson(relay, 'POST', '/v1/messages', { token: bob.user.accessToken, body: sendFrameTo(victim, `stalled-${i}`, ciphertext).message }),
        );
        for (const { status } of await Promise.all(sends)) expect(status).toBe(201);

        const probe = await freshAccount();
        await until(async () => (await upgradeStatus(behindProxy(address, probe.accessToken), true)) === 101, 'the stalled socket to be terminated', 20_000);
      } finally {
        clearInterval(pongs);
      }
      // Terminated, not closed: no close frame comes after what was buffered.
      stalled.socket.resume();
      expect((await stalled.closed(10_000)).code).toBeUndefined();
      const next = await connectWs(relay.wsUrl, victim.user.accessToken, { headers: behindProxy(newClientAddress()) });
      sockets.push(next.socket);
      const delivered = new Set<string>();
      await until(() => {
        for (const frame of next.frames) if (frame.type === ServerFrameType.Message) delivered.add((frame as MessageFrame).envelope.id);
        return delivered.size === 40;
      }, 'the 40 queued messages on the next connection');
    });
  });

  describe('connection caps', () => {
    it('a client opens more sockets from one address than WS_MAX_CONNECTIONS_PER_IP: the next upgrade is refused with 429 TOO_MANY_CONNECTIONS before its token is checked, and other addresses are served', async () => {
      const address = newClientAddress();
      await holdSockets(CAP, () => behindProxy(address));
      const withToken = await attemptUpgrade(relay.wsUrl, behindProxy(address, (await freshAccount()).accessToken));
      expectRefusal(withToken, 429, ErrorCode.TooManyConnections);
      // Without a token it would be 401 below the cap: the cap is checked first.
      expectRefusal(await attemptUpgrade(relay.wsUrl, behindProxy(address)), 429, ErrorCode.TooManyConnections);
      expect(await upgradeStatus(behindProxy(newClientAddress(), (await freshAccount()).accessToken))).toBe(101);
      await bystanderServed('after-cap');
    });

    it('a client at the cap closes a socket, drops one without a close frame, and has upgrades refused: closed and dropped sockets free their slots, refused upgrades take none', async () => {
      const address = newClientAddress();
      // Refused for their tokens below the cap: each is counted while it is answered, then released.
      for (let i = 0; i < 2 * CAP; i++) expectRefusal(await attemptUpgrade(relay.wsUrl, behindProxy(address, 'not-a-token')), 401, ErrorCode.InvalidToken);
      const open: RawWebSocket[] = [];
      for (let i = 0; i < CAP; i++) open.push(await openRawWebSocket(relay.wsUrl, behindProxy(address, (await freshAccount()).accessToken)));
      raws.push(...open);
      for (let i = 0; i < 2 * CAP; i++) expect(await upgradeStatus(behindProxy(address, (await freshAccount()).accessToken))).toBe(429);

      // A clean close (section 7.1.2) frees one slot: exactly one more upgrade gets in.
      open[0]!.write(encodeFrame({ opcode: Opcode.Close, payload: Buffer.from([0x03, 0xe8]) }));
      await open[0]!.closed();
      const replacement = await freshAccount();
      await until(async () => (await upgradeStatus(behindProxy(address, replacement.accessToken), true)) === 101, 'a slot freed by the close');
      expect(await upgradeStatus(behindProxy(address, (await freshAccount()).accessToken))).toBe(429);

      // A dropped TCP connection frees one too.
      open[1]!.destroy();
      const another = await freshAccount();
      await until(async () => (await upgradeStatus(behindProxy(address, another.accessToken), true)) === 101, 'a slot freed by the drop');
      expect(await upgradeStatus(behindProxy(address, (await freshAccount()).accessToken))).toBe(429);
    });

    it('a client behind the trusted proxy forges X-Forwarded-For entries: only the address the proxy appended counts, so forging does not lift the cap', async () => {
      const address = newClientAddress();
      let forged = 0;
      await holdSockets(CAP, () => behindProxy(`198.51.100.${++forged}, ${address}`));
      expect(await upgradeStatus(behindProxy(`198.51.100.200, ${address}`, (await freshAccount()).accessToken))).toBe(429);
    });

    it('a client opens many sockets at once with one device token: the relay keeps exactly one open and closes the others with 4409', async () => {
      const account = await freshAccount();
      const upgrades = Array.from({ length: 6 }, async () => {
        const client = await connectWs(relay.wsUrl, account.accessToken, { headers: behindProxy(newClientAddress()) });
        sockets.push(client.socket);
        // Listened for at once: a socket may be replaced before the others have opened.
        return { client, closed: waitForClose(client.socket, 10_000).catch(() => undefined) };
      });
      const opened = await Promise.all(upgrades);
      const clients = opened.map(({ client }) => client);
      await until(() => clients.filter((client) => client.socket.readyState === WebSocket.OPEN).length <= 1, 'all but one socket closed', 10_000);
      const survivors = clients.filter((client) => client.socket.readyState === WebSocket.OPEN);
      expect(survivors).toHaveLength(1);
      const replaced = await Promise.all(opened.filter(({ client }) => client !== survivors[0]).map(({ closed }) => closed));
      expect(replaced.map((close) => close?.code)).toEqual(Array(5).fill(CloseCode.ConnectionReplaced));
      await waitForFrame(survivors[0]!, (f) => f.type === ServerFrameType.QueueEmpty);
    });

    it('a client opens sockets for every device of an account, several each, at once: no more sockets stay open than the account has devices', async () => {
      const primary = await registerUser(relay, uniqueUsername('multi'));
      const devices = [primary, ...(await Promise.all(Array.from({ length: MAX_DEVICES - 1 }, () => linkDevice(primary))))];
      expect(new Set(devices.map((device) => device.deviceId)).size).toBe(MAX_DEVICES);
      // The account is full: the relay refuses another device.
      expect((await linkDeviceAttempt(primary)).body.code).toBe(ErrorCode.TooManyDevices);
      const clients = await Promise.all(
        devices.flatMap((device) => Array.from({ length: SOCKETS_PER_DEVICE }, () => connectWs(relay.wsUrl, device.accessToken, { headers: behindProxy(newClientAddress()) }))),
      );
      sockets.push(...clients.map((client) => client.socket));
      await until(() => clients.filter((client) => client.socket.readyState === WebSocket.OPEN).length <= MAX_DEVICES, 'one socket per device left', 10_000);
      const open = clients.filter((client) => client.socket.readyState === WebSocket.OPEN);
      expect(open).toHaveLength(MAX_DEVICES);
      // One per device: each survivor is a different device's, and each is served.
      expect(new Set(open.map((client) => Math.floor(clients.indexOf(client) / SOCKETS_PER_DEVICE))).size).toBe(MAX_DEVICES);
      for (const client of open) await waitForFrame(client, (f) => f.type === ServerFrameType.QueueEmpty);
    });
  });
});

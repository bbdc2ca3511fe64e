import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type WebSocket from 'ws';
import { EnvelopeType, MAX_CIPHERTEXT_BYTES, ServerFrameType, type AuthResponse, type MessageFrame, type ServerFrame } from '@chat/protocol';
import { DeliveryService } from '../src/gateway/delivery.service.js';
import type { ConnectionStats } from '../src/gateway/device-connection.js';
import { httpJson, registerKeyedUser, startTestRelay, type TestRelay } from './support/test-relay.js';
import { connectWs, waitForFrame, type WsClient } from './support/ws-client.js';

const WINDOW = 4;
/** Messages stored while the reader does not keep up: several windows' worth. */
const BACKLOG = 5 * WINDOW;

const isMessage = (frame: ServerFrame): frame is MessageFrame => frame.type === ServerFrameType.Message;
/** Each message's label is its first bytes; the rest pads it to the largest ciphertext the relay takes. */
const LABEL_BYTES = 8;
const labelOf = (frame: MessageFrame) => Buffer.from(frame.envelope.ciphertext, 'base64').subarray(0, LABEL_BYTES).toString().trim();
const largeCiphertext = (label: string) => {
  const bytes = Buffer.alloc(MAX_CIPHERTEXT_BYTES, 0x5a);
  bytes.write(label.padEnd(LABEL_BYTES));
  return bytes.toString('base64');
};
/**
 * The largest message frame the relay can write for these messages: its
 * JSON (a 64 KiB ciphertext in base64, a UUID, the longest username) and
 * the WebSocket frame header (at most 14 bytes).
 */
const maxFrameBytes = (source: string) =>
  Buffer.byteLength(
    JSON.stringify({
      type: ServerFrameType.Message,
      envelope: { id: randomUUID(), source, sourceDevice: 127, type: EnvelopeType.PreKey, ciphertext: largeCiphertext('x'), serverTimestamp: Date.now() },
    }),
  ) + 14;

describe('delivery backpressure (e2e)', () => {
  let relay: TestRelay;
  let delivery: DeliveryService;
  const open: WebSocket[] = [];
  const registrationIds = new Map<string, number>();

  beforeAll(async () => {
    // A long heartbeat: a reader whose socket is paused cannot answer pings.
    relay = await startTestRelay({ MAX_INFLIGHT_DELIVERIES: String(WINDOW), HEARTBEAT_INTERVAL_MS: '600000' });
    delivery = relay.app.get(DeliveryService);
  });

  afterAll(async () => {
    for (const socket of open) socket.terminate();
    await relay?.close();
  });

  const keyedUser = async (prefix: string) => {
    const { user, keys } = await registerKeyedUser(relay, prefix);
    registrationIds.set(user.username, keys.registrationId);
    return user;
  };
  const deviceRowIdOf = async (user: AuthResponse) =>
    (await relay.sql<{ id: string }>('SELECT id FROM devices WHERE account_id = $1::uuid AND device_id = 1', user.accountId))[0]!.id;
  const queueLength = async (deviceRowId: string) =>
    (await relay.sql<{ n: number }>('SELECT count(*)::int AS n FROM messages WHERE recipient_device_row_id = $1::uuid', deviceRowId))[0]!.n;
  const statsOf = (deviceRowId: string): ConnectionStats => {
    const stats = delivery.stats().find((entry) => entry.deviceRowId === deviceRowId);
    if (!stats) throw new Error('the device has no connection');
    return stats;
  };
  const sendLarge = async (from: AuthResponse, to: AuthResponse, label: string) => {
    const { status } = await httpJson(relay, 'POST', '/v1/messages', {
      token: from.accessToken,
      body: {
        to: to.username,
        messages: [{ deviceId: 1, registrationId: registrationIds.get(to.username), type: EnvelopeType.Signal, ciphertext: largeCiphertext(label) }],
      },
    });
    expect(status).toBe(201);
  };
  const connect = async (user: AuthResponse) => {
    const client = await connectWs(relay.wsUrl, user.accessToken);
    open.push(client.socket);
    await waitForFrame(client, (frame) => frame.type === ServerFrameType.QueueEmpty);
    return client;
  };
  /** Waits (without asserting how long it takes) until the connection has stopped reading with a full window. */
  const windowFilled = async (deviceRowId: string) => {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const stats = statsOf(deviceRowId);
      if (stats.inFlight === WINDOW && !stats.reading) return stats;
      if (Date.now() > deadline) throw new Error(`the window did not fill: ${JSON.stringify(stats)}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  };
  const ackEverything = (client: WsClient) => {
    for (const frame of client.frames.filter(isMessage)) client.send({ type: 'ack', id: frame.envelope.id });
    client.onFrame.add((frame) => {
      if (isMessage(frame)) client.send({ type: 'ack', id: frame.envelope.id });
    });
  };
  const labels = Array.from({ length: BACKLOG }, (_, i) => `m${i}`);

  it('sends a reader that never acks one window of messages while its queue grows, then the rest in order as it acks', async () => {
    const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
    const bobRow = await deviceRowIdOf(bob);
    const bobWs = await connect(bob);
    const bound = WINDOW * maxFrameBytes(alice.username);

    for (const label of labels) {
      await sendLarge(alice, bob, label);
      const stats = statsOf(bobRow);
      expect(stats.inFlight).toBeLessThanOrEqual(WINDOW);
      expect(stats.bufferedAmount).toBeLessThanOrEqual(bound);
    }
    await windowFilled(bobRow);
    expect(await queueLength(bobRow)).toBe(BACKLOG);
    // A round trip on the socket: every frame the relay wrote before its answer has arrived.
    bobWs.send({ type: 'send', requestId: 'sync', message: { to: alice.username, messages: [{ deviceId: 1, registrationId: registrationIds.get(alice.username), type: EnvelopeType.Signal, ciphertext: 'AA==' }] } });
    await waitForFrame(bobWs, (frame) => frame.type === ServerFrameType.Sent);
    expect(bobWs.frames.filter(isMessage).map(labelOf)).toEqual(labels.slice(0, WINDOW));

    ackEverything(bobWs);
    await waitForFrame(bobWs, (frame) => isMessage(frame) && labelOf(frame) === labels.at(-1), 15_000);
    expect(bobWs.frames.filter(isMessage).map(labelOf)).toEqual(labels);
    expect(bobWs.frames.filter((frame) => frame.type === ServerFrameType.QueueEmpty)).toHaveLength(1);
  });

  it('holds at most a window of frames for a reader whose TCP socket stops reading, and delivers everything once it reads again', async () => {
    const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
    const bobRow = await deviceRowIdOf(bob);
    const bobWs = await connect(bob);
    const bound = WINDOW * maxFrameBytes(alice.username);
    bobWs.socket.pause(); // the underlying TCP socket stops reading; the kernel buffers fill, then the relay's

    for (const label of labels) {
      await sendLarge(alice, bob, label);
      const stats = statsOf(bobRow);
      expect(stats.inFlight).toBeLessThanOrEqual(WINDOW);
      expect(stats.bufferedAmount).toBeLessThanOrEqual(bound);
    }
    const filled = await windowFilled(bobRow);
    expect(filled.bufferedAmount).toBeLessThanOrEqual(bound);
    expect(await queueLength(bobRow)).toBe(BACKLOG);
    expect(bobWs.frames.filter(isMessage)).toEqual([]);

    ackEverything(bobWs);
    bobWs.socket.resume();
    await waitForFrame(bobWs, (frame) => isMessage(frame) && labelOf(frame) === labels.at(-1), 15_000);
    expect(bobWs.frames.filter(isMessage).map(labelOf)).toEqual(labels);
    const deadline = Date.now() + 5000;
    while ((await queueLength(bobRow)) > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(await queueLength(bobRow)).toBe(0);
    expect(statsOf(bobRow).inFlight).toBe(0);
  });
});

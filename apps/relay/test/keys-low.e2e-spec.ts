import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type WebSocket from 'ws';
import {
  EnvelopeType,
  PREKEY_LOW_THRESHOLD,
  ServerFrameType,
  type AuthResponse,
  type KeysLowFrame,
  type ServerFrame,
  type SentFrame,
} from '@chat/protocol';
import { DeviceKeys } from './support/libsignal-keys.js';
import { httpJson, registerUser, startTestRelay, uniqueUsername, type TestRelay } from './support/test-relay.js';
import { connectWs, waitForFrame, type WsClient } from './support/ws-client.js';

const T = PREKEY_LOW_THRESHOLD;
const isKeysLow = (frame: ServerFrame): frame is KeysLowFrame => frame.type === ServerFrameType.KeysLow;

describe('keys-low (e2e)', () => {
  let relay: TestRelay;
  let fetcher: AuthResponse;
  const open: WebSocket[] = [];

  beforeAll(async () => {
    relay = await startTestRelay();
    fetcher = (await keyedUser('fetcher', { preKeys: 0 })).user;
  });

  afterAll(async () => {
    for (const socket of open) socket.terminate();
    await relay?.close();
  });

  /** Registration id of each keyed user's device 1, which every device message must name. */
  const registrationIds = new Map<string, number>();
  async function keyedUser(prefix: string, options: ConstructorParameters<typeof DeviceKeys>[0]) {
    const user = await registerUser(relay, uniqueUsername(prefix));
    const keys = new DeviceKeys(options);
    expect((await httpJson(relay, 'PUT', '/v1/keys', { token: user.accessToken, body: keys.uploadRequest() })).status).toBe(204);
    registrationIds.set(user.username, keys.registrationId);
    return { user, keys };
  }
  const toDevice1 = (to: AuthResponse, ciphertext: string) => ({
    deviceId: 1,
    registrationId: registrationIds.get(to.username),
    type: EnvelopeType.Signal,
    ciphertext,
  });
  const connect = async (user: AuthResponse) => {
    const client = await connectWs(relay.wsUrl, user.accessToken);
    open.push(client.socket);
    return client;
  };
  const fetchBundle = async (username: string) => {
    const { status } = await httpJson(relay, 'GET', `/v1/keys/${username}`, { token: fetcher.accessToken });
    expect(status).toBe(200);
  };
  const send = (from: AuthResponse, to: AuthResponse, text: string) =>
    httpJson(relay, 'POST', '/v1/messages', {
      token: from.accessToken,
      body: { to: to.username, messages: [toDevice1(to, Buffer.from(text).toString('base64'))] },
    });
  /** Uploads one more batch of one-time keys of the device's identity, with fresh ids. */
  let nextKeyId = 10_000;
  const topUp = async (user: AuthResponse, keys: DeviceKeys, preKeys: number, kyberPreKeys: number) => {
    const batch = new DeviceKeys({ identity: keys.identity, registrationId: keys.registrationId, preKeys, kyberPreKeys, firstKeyId: nextKeyId });
    nextKeyId += 1000;
    const { preKeys: ec, kyberPreKeys: kyber } = batch.uploadRequest();
    const body = { identityKey: keys.uploadRequest().identityKey, registrationId: keys.registrationId, preKeys: ec, kyberPreKeys: kyber };
    expect((await httpJson(relay, 'PUT', '/v1/keys', { token: user.accessToken, body })).status).toBe(204);
  };
  /**
   * A send over the socket and its `sent` answer. A notice pushed while an
   * earlier HTTP request was handled is written to the socket before that
   * request is answered, so it precedes this `sent`: afterwards `frames`
   * holds every notice so far.
   */
  let requests = 0;
  const sync = async (client: WsClient) => {
    const requestId = `sync-${++requests}`;
    client.send({
      type: 'send',
      requestId,
      message: { to: fetcher.username, messages: [toDevice1(fetcher, 'AA==')] },
    });
    await waitForFrame<SentFrame>(client, (frame) => frame.type === ServerFrameType.Sent && frame.requestId === requestId);
  };
  const keysLowFrames = (client: WsClient) => client.frames.filter(isKeysLow);

  it('follows queue-empty with keys-low when the connecting device holds fewer one-time prekeys than the threshold', async () => {
    const { user } = await keyedUser('low', { preKeys: 5, kyberPreKeys: T + 5 });
    for (const text of ['one', 'two']) expect((await send(fetcher, user, text)).status).toBe(201);
    const client = await connect(user);
    await waitForFrame(client, isKeysLow);
    expect(client.frames.map((frame) => frame.type)).toEqual([
      ServerFrameType.Message,
      ServerFrameType.Message,
      ServerFrameType.QueueEmpty,
      ServerFrameType.KeysLow,
    ]);
    expect(client.frames[3]).toEqual({ type: ServerFrameType.KeysLow, preKeys: 5, kyberPreKeys: T + 5, threshold: T });
  });

  it('sends no keys-low on connect when both counts are at the threshold', async () => {
    const { user } = await keyedUser('full', { preKeys: T, kyberPreKeys: T });
    const client = await connect(user);
    await waitForFrame(client, (frame) => frame.type === ServerFrameType.QueueEmpty);
    await sync(client);
    expect(client.frames.map((frame) => frame.type)).toEqual([ServerFrameType.QueueEmpty, ServerFrameType.Sent]);
  });

  it('tells a connected device once when a bundle claim takes a count below the threshold, not on every fetch while low', async () => {
    const { user } = await keyedUser('crossing', { preKeys: T + 1, kyberPreKeys: T + 1 });
    const client = await connect(user);
    await waitForFrame(client, (frame) => frame.type === ServerFrameType.QueueEmpty);

    await fetchBundle(user.username); // T + 1 -> T: not below
    await sync(client);
    expect(keysLowFrames(client)).toEqual([]);

    await fetchBundle(user.username); // T -> T - 1: the crossing
    await sync(client);
    expect(keysLowFrames(client)).toEqual([{ type: ServerFrameType.KeysLow, preKeys: T - 1, kyberPreKeys: T - 1, threshold: T }]);

    for (let i = 0; i < 3; i++) await fetchBundle(user.username);
    await sync(client);
    expect(keysLowFrames(client)).toHaveLength(1);
  });

  it('tells the device again only after an upload has filled both counts to the threshold', async () => {
    const { user, keys } = await keyedUser('refill', { preKeys: T, kyberPreKeys: T });
    const client = await connect(user);
    await waitForFrame(client, (frame) => frame.type === ServerFrameType.QueueEmpty);
    await fetchBundle(user.username); // T - 1 each: told
    await sync(client);
    expect(keysLowFrames(client)).toHaveLength(1);

    await topUp(user, keys, 5, 0); // EC T + 4, Kyber still T - 1: still low
    await fetchBundle(user.username); // EC T + 3, Kyber T - 2
    await sync(client);
    expect(keysLowFrames(client)).toHaveLength(1);

    await topUp(user, keys, 0, 4); // EC T + 3, Kyber T + 2: the low period is over
    for (let i = 0; i < 2; i++) await fetchBundle(user.username); // T + 1, T
    await sync(client);
    expect(keysLowFrames(client)).toHaveLength(1);
    await fetchBundle(user.username); // EC T, Kyber T - 1: a new crossing
    await sync(client);
    expect(keysLowFrames(client)).toEqual([
      expect.objectContaining({ type: ServerFrameType.KeysLow }),
      { type: ServerFrameType.KeysLow, preKeys: T, kyberPreKeys: T - 1, threshold: T },
    ]);
  });

  it('tells the device exactly once when concurrent fetches cross the threshold together', async () => {
    const { user } = await keyedUser('burst', { preKeys: T + 3, kyberPreKeys: T + 3 });
    const client = await connect(user);
    await waitForFrame(client, (frame) => frame.type === ServerFrameType.QueueEmpty);
    await Promise.all(Array.from({ length: 10 }, () => fetchBundle(user.username)));
    await sync(client);
    const told = keysLowFrames(client);
    expect(told).toHaveLength(1);
    expect(told[0]!.preKeys).toBeLessThan(T);
    expect(told[0]!.preKeys).toBeGreaterThanOrEqual(T - 7);
    const count = await httpJson(relay, 'GET', '/v1/keys', { token: user.accessToken });
    expect(count.body).toMatchObject({ preKeys: T - 7, kyberPreKeys: T - 7, refill: true });
  });

  it('tells a device that crossed while it was offline when it connects', async () => {
    const { user } = await keyedUser('offline', { preKeys: T, kyberPreKeys: T });
    await fetchBundle(user.username);
    const client = await connect(user);
    expect(await waitForFrame(client, isKeysLow)).toEqual({ type: ServerFrameType.KeysLow, preKeys: T - 1, kyberPreKeys: T - 1, threshold: T });
  });
});

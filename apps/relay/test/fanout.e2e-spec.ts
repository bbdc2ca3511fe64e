import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type WebSocket from 'ws';
import {
  EnvelopeType,
  ErrorCode,
  ServerFrameType,
  type AuthResponse,
  type MessageFrame,
  type SentFrame,
  type ServerFrame,
} from '@chat/protocol';
import { httpJson, registerKeyedUser, registerUser, startTestRelay, type TestRelay, uniqueUsername } from './support/test-relay.js';
import { connectWs, waitForFrame, type WsClient } from './support/ws-client.js';

const isMessage = (frame: ServerFrame): frame is MessageFrame => frame.type === ServerFrameType.Message;
const textOf = (frame: MessageFrame) => Buffer.from(frame.envelope.ciphertext, 'base64').toString();

/** A user and the registration ids of its devices with keys, by device id. */
interface User {
  auth: AuthResponse;
  username: string;
  accountId: string;
  registrationIds: Map<number, number>;
}

describe('fan-out, 409/410, idempotency and ephemeral sends (e2e)', () => {
  let relay: TestRelay;
  const open: WebSocket[] = [];

  afterAll(async () => {
    for (const socket of open) socket.terminate();
    await relay?.close();
  });

  beforeAll(async () => {
    relay = await startTestRelay();
  });

  const keyedUser = async (prefix: string): Promise<User> => {
    const { user: auth, keys } = await registerKeyedUser(relay, prefix);
    return { auth, username: auth.username, accountId: auth.accountId, registrationIds: new Map([[1, keys.registrationId]]) };
  };
  /**
   * Another device of the account with keys, written straight to the
   * database: sends only need it to exist with a registration id and keys.
   */
  const addDevice = async (user: User, deviceId: number, registrationId = 1000 + deviceId) => {
    await relay.sql(
      `INSERT INTO devices (id, account_id, device_id, registration_id, signed_prekey_id, signed_prekey, signed_prekey_signature,
                            kyber_last_resort_id, kyber_last_resort_key, kyber_last_resort_signature)
       VALUES (gen_random_uuid(), $1::uuid, $2, $3, 1, decode('05', 'hex'), decode('00', 'hex'), 2, decode('08', 'hex'), decode('00', 'hex'))`,
      user.accountId,
      deviceId,
      registrationId,
    );
    user.registrationIds.set(deviceId, registrationId);
  };
  const tombstone = async (user: User, deviceId: number, registrationId: number) => {
    await relay.sql('INSERT INTO unlinked_devices (account_id, device_id, registration_id) VALUES ($1::uuid, $2, $3)', user.accountId, deviceId, registrationId);
  };
  const deviceMessage = (user: User, deviceId: number, text: string, registrationId = user.registrationIds.get(deviceId) ?? 1) => ({
    deviceId,
    registrationId,
    type: EnvelopeType.Signal,
    ciphertext: Buffer.from(text).toString('base64'),
  });
  /** One device message for each of the user's keyed devices except `except`. */
  const allDevices = (user: User, text: string, except?: number) =>
    [...user.registrationIds.keys()].filter((deviceId) => deviceId !== except).map((deviceId) => deviceMessage(user, deviceId, text));
  const send = (from: User, body: unknown) => httpJson(relay, 'POST', '/v1/messages', { token: from.auth.accessToken, body });
  /** Stored messages per recipient `username:deviceId`, with their text. */
  const inbox = async (...users: User[]) => {
    const rows = await relay.sql<{ username: string; device_id: number; ciphertext: Uint8Array; server_timestamp: Date; sender_device_id: number }>(
      `SELECT a.username, d.device_id, m.ciphertext, m.server_timestamp, m.sender_device_id
         FROM messages m JOIN devices d ON d.id = m.recipient_device_row_id JOIN accounts a ON a.id = d.account_id
        WHERE a.id = ANY($1::uuid[]) ORDER BY m.seq`,
      users.map((user) => user.accountId),
    );
    return rows.map((row) => ({
      to: `${row.username}:${row.device_id}`,
      text: Buffer.from(row.ciphertext).toString(),
      serverTimestamp: row.server_timestamp.getTime(),
      sourceDevice: row.sender_device_id,
    }));
  };
  const connect = async (user: User) => {
    const client = await connectWs(relay.wsUrl, user.auth.accessToken);
    open.push(client.socket);
    await waitForFrame(client, (frame) => frame.type === ServerFrameType.QueueEmpty);
    return client;
  };
  let requests = 0;
  const sendFrame = async (client: WsClient, message: unknown) => {
    const requestId = `r${++requests}`;
    client.send({ type: 'send', requestId, message });
    return waitForFrame<SentFrame>(client, (frame) => (frame.type === ServerFrameType.Sent || frame.type === ServerFrameType.Error) && 'requestId' in frame && frame.requestId === requestId);
  };

  describe('fan-out and sync copies', () => {
    it("stores one copy per recipient device and one per other device of the sender's account, all with the one serverTimestamp", async () => {
      const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
      await addDevice(alice, 2);
      await addDevice(alice, 3);
      await addDevice(bob, 2);
      const sent = await send(alice, { to: bob.username, messages: allDevices(bob, 'hi bob'), sync: allDevices(alice, 'sync: hi bob', 1) });
      expect(sent.status).toBe(201);
      const stored = await inbox(alice, bob);
      expect(stored.map(({ to, text }) => [to, text]).sort()).toEqual(
        [
          [`${bob.username}:1`, 'hi bob'],
          [`${bob.username}:2`, 'hi bob'],
          [`${alice.username}:2`, 'sync: hi bob'],
          [`${alice.username}:3`, 'sync: hi bob'],
        ].sort(),
      );
      expect(stored.every((row) => row.serverTimestamp === sent.body.serverTimestamp && row.sourceDevice === 1)).toBe(true);
    });

    it('stores no sync copies when sync is absent', async () => {
      const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
      await addDevice(alice, 2);
      expect((await send(alice, { to: bob.username, messages: allDevices(bob, 'no sync') })).status).toBe(201);
      expect((await inbox(alice, bob)).map((row) => row.to)).toEqual([`${bob.username}:1`]);
    });

    it("refuses sync on a send to the sender's own account with VALIDATION_FAILED; messages addresses the other devices there", async () => {
      const alice = await keyedUser('alice');
      await addDevice(alice, 2);
      const refused = await send(alice, { to: alice.username, messages: allDevices(alice, 'x', 1), sync: [] });
      expect([refused.status, refused.body.code]).toEqual([400, ErrorCode.ValidationFailed]);
      expect(refused.body.details).toEqual([expect.stringMatching(/^sync: /)]);
      expect((await send(alice, { to: alice.username, messages: allDevices(alice, 'note to self', 1) })).status).toBe(201);
      expect((await inbox(alice)).map(({ to, text }) => [to, text])).toEqual([[`${alice.username}:2`, 'note to self']]);
    });
  });

  describe('409 MISMATCHED_DEVICES', () => {
    it('names the missing and extra devices of the recipient', async () => {
      const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
      await addDevice(bob, 2);
      const { status, body } = await send(alice, { to: bob.username, messages: [deviceMessage(bob, 1, 'x'), deviceMessage(bob, 5, 'x', 55)] });
      expect(status).toBe(409);
      expect(body).toEqual({
        code: ErrorCode.MismatchedDevices,
        message: expect.any(String),
        details: ['missing: 2', 'extra: 5'],
        mismatched: [{ username: bob.username, missing: [2], extra: [5] }],
      });
      expect(await inbox(bob)).toEqual([]);
    });

    it("names both accounts, recipient first, when sync also misses a device and addresses the sender's own", async () => {
      const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
      await addDevice(alice, 2);
      await addDevice(alice, 3);
      const { status, body } = await send(alice, {
        to: bob.username,
        messages: [deviceMessage(bob, 1, 'x'), deviceMessage(bob, 2, 'x', 22)],
        sync: [deviceMessage(alice, 1, 'x'), deviceMessage(alice, 2, 'x')],
      });
      expect(status).toBe(409);
      expect(body).toEqual({
        code: ErrorCode.MismatchedDevices,
        message: expect.any(String),
        details: ['extra: 2', 'sync missing: 3', 'sync extra: 1'],
        mismatched: [
          { username: bob.username, missing: [], extra: [2] },
          { username: alice.username, missing: [3], extra: [1] },
        ],
      });
      expect(await inbox(alice, bob)).toEqual([]);
    });

    it('counts a device without keys as extra, and an empty sync as missing every other keyed device', async () => {
      const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
      await addDevice(alice, 2);
      await relay.sql('INSERT INTO devices (id, account_id, device_id) VALUES (gen_random_uuid(), $1::uuid, 3)', bob.accountId); // linked, no keys yet
      const { body } = await send(alice, { to: bob.username, messages: [deviceMessage(bob, 1, 'x'), deviceMessage(bob, 3, 'x', 33)], sync: [] });
      expect(body.mismatched).toEqual([
        { username: bob.username, missing: [], extra: [3] },
        { username: alice.username, missing: [2], extra: [] },
      ]);
    });
  });

  describe('410 STALE_DEVICES', () => {
    it('names devices addressed with another registration id and unlinked ones, per account', async () => {
      const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
      await addDevice(alice, 2);
      await tombstone(alice, 4, 444);
      await addDevice(bob, 2);
      await tombstone(bob, 3, 333);
      const { status, body } = await send(alice, {
        to: bob.username,
        messages: [deviceMessage(bob, 1, 'x'), deviceMessage(bob, 2, 'x', 9), deviceMessage(bob, 3, 'x', 333)],
        sync: [deviceMessage(alice, 2, 'x'), deviceMessage(alice, 4, 'x', 444)],
      });
      expect(status).toBe(410);
      expect(body).toEqual({
        code: ErrorCode.StaleDevices,
        message: expect.any(String),
        details: ['stale: 2,3', 'sync stale: 4'],
        stale: [
          { username: bob.username, devices: [2, 3] },
          { username: alice.username, devices: [4] },
        ],
      });
      expect(await inbox(alice, bob)).toEqual([]);
    });

    it('answers 409, not 410, while a device is also missing or extra', async () => {
      const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
      await addDevice(bob, 2);
      const { status, body } = await send(alice, { to: bob.username, messages: [deviceMessage(bob, 1, 'x', 7)] });
      expect(status).toBe(409);
      expect(body).toMatchObject({ code: ErrorCode.MismatchedDevices, mismatched: [{ username: bob.username, missing: [2], extra: [] }] });
      expect(body.stale).toBeUndefined();
    });

    it('refuses a stale send over the socket with an error frame carrying the same fields', async () => {
      const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
      const client = await connect(alice);
      const answer = await sendFrame(client, { to: bob.username, messages: [deviceMessage(bob, 1, 'x', (bob.registrationIds.get(1)! % 16000) + 1)] });
      expect(answer).toEqual({
        type: ServerFrameType.Error,
        requestId: expect.any(String),
        code: ErrorCode.StaleDevices,
        message: expect.any(String),
        details: ['stale: 1'],
        stale: [{ username: bob.username, devices: [1] }],
      });
    });
  });

  describe('partial sends (session repair)', () => {
    it('stores a send to some of the devices only, and still refuses extra and stale ones', async () => {
      const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
      await addDevice(bob, 2);
      await addDevice(bob, 3);
      await tombstone(bob, 4, 444);
      const sent = await send(alice, { to: bob.username, partial: true, messages: [deviceMessage(bob, 2, 'resend')] });
      expect(sent.status).toBe(201);
      expect((await inbox(bob)).map(({ to, text }) => [to, text])).toEqual([[`${bob.username}:2`, 'resend']]);

      const extra = await send(alice, { to: bob.username, partial: true, messages: [deviceMessage(bob, 2, 'x'), deviceMessage(bob, 9, 'x', 99)] });
      expect(extra.status).toBe(409);
      expect(extra.body.mismatched).toEqual([{ username: bob.username, missing: [], extra: [9] }]);
      const stale = await send(alice, { to: bob.username, partial: true, messages: [deviceMessage(bob, 4, 'x', 444)] });
      expect(stale.status).toBe(410);
      expect(stale.body.stale).toEqual([{ username: bob.username, devices: [4] }]);
      expect(await inbox(bob)).toHaveLength(1);
    });

    it('refuses sync on a partial send with VALIDATION_FAILED', async () => {
      const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
      await addDevice(alice, 2);
      const { status, body } = await send(alice, { to: bob.username, partial: true, messages: [deviceMessage(bob, 1, 'x')], sync: [deviceMessage(alice, 2, 'x')] });
      expect(status).toBe(400);
      expect(body.code).toBe(ErrorCode.ValidationFailed);
      expect(await inbox(alice, bob)).toEqual([]);
    });
  });

  describe('idempotent sends', () => {
    it('stores a repeated id once and answers it with the first serverTimestamp', async () => {
      const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
      const id = randomUUID();
      const first = await send(alice, { id, to: bob.username, messages: allDevices(bob, 'once') });
      const again = await send(alice, { id, to: bob.username, messages: allDevices(bob, 'once') });
      expect([first.status, again.status]).toEqual([201, 201]);
      expect(again.body.serverTimestamp).toBe(first.body.serverTimestamp);
      expect((await inbox(bob)).map((row) => row.text)).toEqual(['once']);

      const other = await send(alice, { id: randomUUID(), to: bob.username, messages: allDevices(bob, 'twice') });
      expect(other.status).toBe(201);
      expect((await inbox(bob)).map((row) => row.text)).toEqual(['once', 'twice']);
    });

    it('stores exactly one copy when identical sends race', async () => {
      const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
      await addDevice(bob, 2);
      const id = randomUUID();
      const body = { id, to: bob.username, messages: allDevices(bob, 'raced') };
      const answers = await Promise.all(Array.from({ length: 8 }, () => send(alice, body)));
      expect(answers.map((answer) => answer.status)).toEqual(Array(8).fill(201));
      expect(new Set(answers.map((answer) => answer.body.serverTimestamp)).size).toBe(1);
      expect((await inbox(bob)).map((row) => row.to).sort()).toEqual([`${bob.username}:1`, `${bob.username}:2`]);
      const [row] = await relay.sql<{ n: number }>('SELECT count(*)::int AS n FROM sent_requests WHERE request_id = $1::uuid', id);
      expect(row!.n).toBe(1);
    });

    it('keeps ids per sender device: the same id from another sender is another send', async () => {
      const [alice, carol, bob] = [await keyedUser('alice'), await keyedUser('carol'), await keyedUser('bob')];
      const id = randomUUID();
      expect((await send(alice, { id, to: bob.username, messages: allDevices(bob, 'from alice') })).status).toBe(201);
      expect((await send(carol, { id, to: bob.username, messages: allDevices(bob, 'from carol') })).status).toBe(201);
      expect((await inbox(bob)).map((row) => row.text)).toEqual(['from alice', 'from carol']);
    });

    it('answers a repeated id over the socket with the same serverTimestamp and stores one copy', async () => {
      const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
      const client = await connect(alice);
      const message = { id: randomUUID(), to: bob.username, messages: allDevices(bob, 'ws once') };
      const first = await sendFrame(client, message);
      const again = await sendFrame(client, message);
      expect(first.type).toBe(ServerFrameType.Sent);
      expect(again).toEqual({ ...first, requestId: again.requestId });
      expect((await inbox(bob)).map((row) => row.text)).toEqual(['ws once']);
    });

    it('refuses an id that is not a UUID with VALIDATION_FAILED', async () => {
      const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
      const { status, body } = await send(alice, { id: 'retry-1', to: bob.username, messages: allDevices(bob, 'x') });
      expect([status, body.code]).toEqual([400, ErrorCode.ValidationFailed]);
    });
  });

  describe('ephemeral sends', () => {
    it('hands the message to a connected device as an ephemeral envelope and stores nothing', async () => {
      const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
      const bobWs = await connect(bob);
      const sent = await send(alice, { to: bob.username, messages: allDevices(bob, 'typing'), ephemeral: true });
      expect(sent.status).toBe(201);
      const frame = await waitForFrame<MessageFrame>(bobWs, (f) => isMessage(f) && textOf(f) === 'typing');
      expect(frame.envelope).toEqual({
        id: expect.stringMatching(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/),
        source: alice.username,
        sourceDevice: 1,
        sourceAccountId: alice.accountId,
        type: EnvelopeType.Signal,
        ciphertext: Buffer.from('typing').toString('base64'),
        serverTimestamp: sent.body.serverTimestamp,
        ephemeral: true,
      });
      expect(await inbox(bob)).toEqual([]);
      // Its ack is a no-op: the socket goes on working.
      bobWs.send({ type: 'ack', id: frame.envelope.id });
      expect((await sendFrame(bobWs, { to: alice.username, messages: allDevices(alice, 'still here') })).type).toBe(ServerFrameType.Sent);
    });

    it('never reaches a device that connects after it was sent', async () => {
      const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
      expect((await send(alice, { to: bob.username, messages: allDevices(bob, 'typing'), ephemeral: true })).status).toBe(201);
      const bobWs = await connect(bob);
      expect((await send(alice, { to: bob.username, messages: allDevices(bob, 'a real message') })).status).toBe(201);
      await waitForFrame(bobWs, (f) => isMessage(f) && textOf(f) === 'a real message');
      expect(bobWs.frames.filter(isMessage).map(textOf)).toEqual(['a real message']);
    });

    it('is checked like any send: a mismatch is refused', async () => {
      const [alice, bob] = [await keyedUser('alice'), await keyedUser('bob')];
      await addDevice(bob, 2);
      const { status, body } = await send(alice, { to: bob.username, messages: [deviceMessage(bob, 1, 'x')], ephemeral: true });
      expect([status, body.code]).toEqual([409, ErrorCode.MismatchedDevices]);
    });
  });

  it('keeps UNKNOWN_RECIPIENT for an unknown user and one without keyed devices', async () => {
    const alice = await keyedUser('alice');
    const keyless = await registerUser(relay, uniqueUsername('keyless'));
    for (const to of [uniqueUsername('ghost'), keyless.username]) {
      const { status, body } = await send(alice, { to, messages: [{ deviceId: 1, registrationId: 1, type: EnvelopeType.Signal, ciphertext: 'AA==' }] });
      expect([status, body.code]).toEqual([404, ErrorCode.UnknownRecipient]);
    }
  });
});

/**
 * The authorization matrix: account A, holding nothing but its own valid
 * token (and its own password), goes for account B's messages, keys,
 * devices, backup, password, account and identity, on every HTTP route of
 * the relay and with every client frame type of the WebSocket. B has a
 * linked second device, keys on both, a backup, an access key and queued
 * messages. Each row asserts the refusal's status and code, and that B's
 * whole stored state (`accountState`, read with SQL) is what it was, or
 * changed only as the row says.
 *
 * The matrix is checked against the relay itself: the last test fails when
 * the OpenAPI document lists a route, or the protocol a client frame type,
 * that no row here covers.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { SenderCertificate } from '@signalapp/libsignal-client';
import WebSocket from 'ws';
import {
  ClientFrameType,
  EnvelopeType,
  ErrorCode,
  ServerFrameType,
  UNIDENTIFIED_ACCESS_KEY_HEADER,
  type AuthResponse,
  type ErrorFrame,
  type ListMessagesResponse,
  type MessageFrame,
  type ProvisioningSlotResponse,
} from '@chat/protocol';
import { DeviceKeys } from '../support/libsignal-keys.js';
import { DEFAULT_TEST_PASSWORD, httpJson, registerKeyedUser, registerUser, startTestRelay, uniqueUsername, type TestRelay } from '../support/test-relay.js';
import { connectWs, waitForFrame } from '../support/ws-client.js';
import { accountState, linkKeyedDevice, type AccountState, type KeyedDevice } from './support/authz-accounts.js';

/** Routes (`METHOD /path` as the OpenAPI document spells them, `GET /v1/ws`, `WS <frame type>`) to the titles of their rows. */
const matrix = new Map<string, string[]>();

/** A row of the matrix: an `it` that names the routes it attacks. */
function row(routes: string[], title: string, test: () => Promise<void>): void {
  for (const route of routes) matrix.set(route, [...(matrix.get(route) ?? []), title]);
  it(title, test);
}

const b64 = (text: string) => Buffer.from(text).toString('base64');
/** A's own password; B's is the harness default. */
const A_PASSWORD = 'the password of A, the attacker';

describe('adversarial: authorization', () => {
  let relay: TestRelay;
  /** The attacker: one device, its own keys. */
  let a: KeyedDevice;
  /** The victim's primary device and its linked second device. */
  let b1: KeyedDevice;
  let b2: KeyedDevice;
  /** A bystander that sends to both. */
  let c: KeyedDevice;
  const bAccessKey = randomBytes(16);
  const open: WebSocket[] = [];

  beforeAll(async () => {
    relay = await startTestRelay();
    const [attacker, victim, bystander] = await Promise.all([
      registerUser(relay, uniqueUsername('authza'), A_PASSWORD),
      registerKeyedUser(relay, 'authzb', new DeviceKeys({ preKeys: 5, kyberPreKeys: 5 })),
      registerKeyedUser(relay, 'authzc'),
    ]);
    a = { auth: attacker, keys: new DeviceKeys({ preKeys: 1, kyberPreKeys: 1 }) };
    expect((await httpJson(relay, 'PUT', '/v1/keys', { token: a.auth.accessToken, body: a.keys.uploadRequest() })).status).toBe(204);
    b1 = { auth: victim.user, keys: victim.keys };
    c = { auth: bystander.user, keys: bystander.keys };
    b2 = await linkKeyedDevice(relay, b1.auth, b1.keys.identity);
    expect(b2.auth.deviceId).toBe(2);
    const backup = await httpJson(relay, 'PUT', '/v1/backup', { token: b1.auth.accessToken, body: { blob: b64('the backup of B') } });
    const access = await httpJson(relay, 'PUT', '/v1/account/unidentified-access', {
      token: b1.auth.accessToken,
      body: { accessKey: bAccessKey.toString('base64'), unrestricted: false },
    });
    expect([backup.status, access.status]).toEqual([204, 204]);
  });

  afterAll(async () => {
    for (const socket of open) socket.terminate();
    await relay?.close();
  });

  const stateOfB = (): Promise<AccountState> => accountState(relay, b1.auth.accountId);
  /** Runs the attack and asserts that B's stored state is exactly what it was. */
  const leavesBUnchanged = async (attack: () => Promise<void>) => {
    const before = await stateOfB();
    expect(before.inbox.length + before.oneTimePreKeys.length).toBeGreaterThan(0);
    await attack();
    expect(await stateOfB()).toEqual(before);
  };
  const refusal = (answer: { status: number; body: { code?: string } | undefined }) => [answer.status, answer.body?.code];
  const connect = async (device: KeyedDevice) => {
    const client = await connectWs(relay.wsUrl, device.auth.accessToken);
    open.push(client.socket);
    await waitForFrame(client, (frame) => frame.type === ServerFrameType.QueueEmpty);
    return client;
  };
  const deviceMessage = (to: KeyedDevice, text: string) => ({
    deviceId: to.auth.deviceId,
    registrationId: to.keys.registrationId,
    type: EnvelopeType.Signal,
    ciphertext: b64(text),
  });
  /** The id of the message queued for `device` whose ciphertext is `text`. */
  const queuedId = async (device: KeyedDevice, text: string): Promise<string | undefined> => {
    const [found] = await relay.sql<{ id: string }>(
      `SELECT m.id FROM messages m JOIN devices d ON d.id = m.recipient_device_row_id
        WHERE d.account_id = $1::uuid AND d.device_id = $2 AND m.ciphertext = decode($3, 'base64')`,
      device.auth.accountId,
      device.auth.deviceId,
      b64(text),
    );
    return found?.id;
  };
  /** C sends one message to both of B's devices; their ids. */
  const queueForB = async (text: string) => {
    const sent = await httpJson(relay, 'POST', '/v1/messages', {
      token: c.auth.accessToken,
      body: { to: b1.auth.username, messages: [deviceMessage(b1, `${text} to 1`), deviceMessage(b2, `${text} to 2`)] },
    });
    expect(sent.status).toBe(201);
    return { toB1: (await queuedId(b1, `${text} to 1`))!, toB2: (await queuedId(b2, `${text} to 2`))! };
  };
  const queueForA = async (text: string) => {
    const sent = await httpJson(relay, 'POST', '/v1/messages', {
      token: c.auth.accessToken,
      body: { to: a.auth.username, messages: [deviceMessage(a, text)] },
    });
    expect(sent.status).toBe(201);
    return (await queuedId(a, text))!;
  };
  const stillQueued = async (id: string) => (await relay.sql('SELECT 1 FROM messages WHERE id = $1::uuid', id)).length === 1;
  const until = async (condition: () => Promise<boolean>, what: string) => {
    const deadline = Date.now() + 5000;
    while (!(await condition())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  };
  /** Fields a request might use to name another account, device or sender. */
  const namingB = () => [
    { accountId: b1.auth.accountId },
    { username: b1.auth.username },
    { deviceId: b2.auth.deviceId },
  ];
  const senderFieldsOfB = () => [
    { source: b1.auth.username },
    { sourceDevice: b2.auth.deviceId },
    { sourceAccountId: b1.auth.accountId },
    { sender: b1.auth.username },
    { from: b1.auth.username },
  ];

  describe('messages', () => {
    row(
      ['GET /v1/messages'],
      "A lists messages, also with a query naming B's account, username or device: A's page holds none of B's messages, and a naming query is VALIDATION_FAILED",
      async () => {
        const { toB1, toB2 } = await queueForB('list');
        await leavesBUnchanged(async () => {
          const page = await httpJson<ListMessagesResponse>(relay, 'GET', '/v1/messages', { token: a.auth.accessToken });
          expect(page.status).toBe(200);
          const ids = page.body.messages.map((envelope) => envelope.id);
          expect(ids).not.toContain(toB1);
          expect(ids).not.toContain(toB2);
          for (const query of [`accountId=${b1.auth.accountId}`, `username=${b1.auth.username}`, 'deviceId=2', `device=${b2.auth.deviceId}`]) {
            expect(refusal(await httpJson(relay, 'GET', `/v1/messages?${query}`, { token: a.auth.accessToken }))).toEqual([400, ErrorCode.ValidationFailed]);
          }
        });
        const own = await httpJson<ListMessagesResponse>(relay, 'GET', '/v1/messages', { token: b1.auth.accessToken });
        expect(own.body.messages.map((envelope) => envelope.id)).toContain(toB1);
      },
    );

    row(
      ['GET /v1/ws'],
      "A's socket is open while B has queued messages and new ones arrive for B: A's socket is handed none of them",
      async () => {
        const { toB1, toB2 } = await queueForB('socket queued');
        const client = await connect(a);
        const live = await queueForB('socket live');
        // A message to A sent after B's: once A has it, B's had their chance to leak.
        const sentinel = await queueForA('sentinel');
        await waitForFrame<MessageFrame>(client, (frame) => frame.type === ServerFrameType.Message && frame.envelope.id === sentinel);
        const seen = client.frames.flatMap((frame) => (frame.type === ServerFrameType.Message ? [frame.envelope.id] : []));
        expect(seen).toContain(sentinel);
        for (const id of [toB1, toB2, live.toB1, live.toB2]) expect(seen).not.toContain(id);
        client.socket.close();
      },
    );

    row(
      ['DELETE /v1/messages/{id}'],
      "A, and B's own second device, delete over HTTP a message queued for B's first device: 404 MESSAGE_NOT_FOUND, and it stays stored for B's first device",
      async () => {
        const { toB1 } = await queueForB('delete');
        await leavesBUnchanged(async () => {
          for (const attacker of [a, b2]) {
            const answer = await httpJson(relay, 'DELETE', `/v1/messages/${toB1}`, { token: attacker.auth.accessToken });
            expect(refusal(answer)).toEqual([404, ErrorCode.MessageNotFound]);
          }
        });
        // The id was a real one: its own device deletes it.
        expect((await httpJson(relay, 'DELETE', `/v1/messages/${toB1}`, { token: b1.auth.accessToken })).status).toBe(204);
        expect(await stillQueued(toB1)).toBe(false);
      },
    );

    row(
      [`WS ${ClientFrameType.Ack}`],
      "A, and B's own second device, send an ack frame with the id of a message queued for B's first device: nothing is deleted, and B's first device is still handed the message",
      async () => {
        const { toB1, toB2 } = await queueForB('ack');
        const forA = await queueForA('own of A');
        const before = await stateOfB();
        const attackerSocket = await connect(a);
        const secondDevice = await connect(b2);
        await waitForFrame<MessageFrame>(secondDevice, (frame) => frame.type === ServerFrameType.Message && frame.envelope.id === toB2);
        // Each socket acks B's first device's message, then one of its own: once the own one is gone, the socket's frames were read.
        for (const [client, own] of [
          [attackerSocket, forA],
          [secondDevice, toB2],
        ] as const) {
          client.send({ type: ClientFrameType.Ack, id: toB1 });
          client.send({ type: ClientFrameType.Ack, id: own });
          await until(async () => !(await stillQueued(own)), 'the own ack');
        }
        const after = await stateOfB();
        expect(after).toEqual({ ...before, inbox: before.inbox.filter((message) => message.id !== toB2) });
        expect(attackerSocket.frames.filter((frame) => frame.type === ServerFrameType.Error)).toEqual([]);

        const owner = await connect(b1);
        await waitForFrame<MessageFrame>(owner, (frame) => frame.type === ServerFrameType.Message && frame.envelope.id === toB1);
        owner.send({ type: ClientFrameType.Ack, id: toB1 });
        await until(async () => !(await stillQueued(toB1)), "the owner's ack");
        for (const client of [attackerSocket, secondDevice, owner]) client.socket.close();
      },
    );

    row(
      ['POST /v1/messages'],
      'A sends with a sender field naming B (source, sourceDevice, sourceAccountId, sender or from, in the body or in a device message): VALIDATION_FAILED and nothing stored; an accepted send is stored as sent by A from the token',
      async () => {
        const message = (text: string) => ({ to: b1.auth.username, messages: [deviceMessage(b1, `${text} to 1`), deviceMessage(b2, `${text} to 2`)] });
        await leavesBUnchanged(async () => {
          for (const field of senderFieldsOfB()) {
            const topLevel = await httpJson(relay, 'POST', '/v1/messages', { token: a.auth.accessToken, body: { ...message('forged'), ...field } });
            expect(refusal(topLevel)).toEqual([400, ErrorCode.ValidationFailed]);
            const inner = message('forged');
            const perDevice = await httpJson(relay, 'POST', '/v1/messages', {
              token: a.auth.accessToken,
              body: { ...inner, messages: [{ ...inner.messages[0], ...field }, inner.messages[1]] },
            });
            expect(refusal(perDevice)).toEqual([400, ErrorCode.ValidationFailed]);
          }
        });
        expect((await httpJson(relay, 'POST', '/v1/messages', { token: a.auth.accessToken, body: message('genuine') })).status).toBe(201);
        const stored = await relay.sql('SELECT sender_account_id, sender_username, sender_device_id FROM messages WHERE id = $1::uuid', await queuedId(b1, 'genuine to 1'));
        expect(stored).toEqual([{ sender_account_id: a.auth.accountId, sender_username: a.auth.username, sender_device_id: a.auth.deviceId }]);
      },
    );

    row(
      ['POST /v1/messages'],
      "A addresses a sync copy to device 2, a device id only B has: 409 MISMATCHED_DEVICES, and nothing reaches B's second device",
      async () => {
        await leavesBUnchanged(async () => {
          const answer = await httpJson(relay, 'POST', '/v1/messages', {
            token: a.auth.accessToken,
            body: { to: c.auth.username, messages: [deviceMessage(c, 'to C')], sync: [deviceMessage(b2, 'a sync copy into B')] },
          });
          expect(refusal(answer)).toEqual([409, ErrorCode.MismatchedDevices]);
        });
      },
    );

    row(
      [`WS ${ClientFrameType.Send}`],
      "A's send frame carries a sender field naming B, on the frame or in its message: an error frame VALIDATION_FAILED with its requestId, nothing stored; an accepted frame is stored as sent by A",
      async () => {
        const client = await connect(a);
        const message = (text: string) => ({ to: b1.auth.username, messages: [deviceMessage(b1, `${text} to 1`), deviceMessage(b2, `${text} to 2`)] });
        await leavesBUnchanged(async () => {
          let n = 0;
          for (const field of senderFieldsOfB()) {
            for (const frame of [
              { type: ClientFrameType.Send, requestId: `frame-${++n}`, message: message('forged'), ...field },
              { type: ClientFrameType.Send, requestId: `frame-${++n}`, message: { ...message('forged'), ...field } },
            ]) {
              client.send(frame);
              const answer = await waitForFrame<ErrorFrame>(client, (f) => f.type === ServerFrameType.Error && f.requestId === frame.requestId);
              expect(answer.code).toBe(ErrorCode.ValidationFailed);
            }
          }
        });
        client.send({ type: ClientFrameType.Send, requestId: 'genuine', message: message('genuine frame') });
        await waitForFrame(client, (f) => f.type === ServerFrameType.Sent && f.requestId === 'genuine');
        const stored = await relay.sql('SELECT sender_account_id, sender_username, sender_device_id FROM messages WHERE id = $1::uuid', await queuedId(b2, 'genuine frame to 2'));
        expect(stored).toEqual([{ sender_account_id: a.auth.accountId, sender_username: a.auth.username, sender_device_id: a.auth.deviceId }]);
        client.socket.close();
      },
    );

    row(
      ['POST /v1/messages/sealed'],
      "a sealed send to B, with B's access key, carries a sender field naming B: VALIDATION_FAILED, nothing stored",
      async () => {
        await leavesBUnchanged(async () => {
          for (const field of senderFieldsOfB()) {
            const answer = await httpJson(relay, 'POST', '/v1/messages/sealed', {
              headers: { [UNIDENTIFIED_ACCESS_KEY_HEADER]: bAccessKey.toString('base64') },
              body: {
                to: b1.auth.username,
                messages: [b1, b2].map((device) => ({ deviceId: device.auth.deviceId, registrationId: device.keys.registrationId, ciphertext: b64('sealed') })),
                ...field,
              },
            });
            expect(refusal(answer)).toEqual([400, ErrorCode.ValidationFailed]);
          }
        });
      },
    );

    row(
      ['POST /v1/messages/multi-recipient'],
      "A's authenticated multi-recipient send carries a sender field naming B, or B's access key beside A's token: VALIDATION_FAILED, nothing stored",
      async () => {
        await leavesBUnchanged(async () => {
          for (const field of senderFieldsOfB()) {
            const answer = await httpJson(relay, 'POST', '/v1/messages/multi-recipient', {
              token: a.auth.accessToken,
              body: { payload: randomBytes(64).toString('base64'), ...field },
            });
            expect(refusal(answer)).toEqual([400, ErrorCode.ValidationFailed]);
          }
          const withKey = await httpJson(relay, 'POST', '/v1/messages/multi-recipient', {
            token: a.auth.accessToken,
            headers: { [UNIDENTIFIED_ACCESS_KEY_HEADER]: bAccessKey.toString('base64') },
            body: { payload: randomBytes(64).toString('base64') },
          });
          expect(refusal(withKey)).toEqual([400, ErrorCode.ValidationFailed]);
        });
      },
    );
  });

  describe('keys', () => {
    row(
      ['PUT /v1/keys'],
      "A uploads keys with a field naming B's account, username or device: VALIDATION_FAILED, and B's stored keys are unchanged",
      async () => {
        const upload = new DeviceKeys({ identity: a.keys.identity, registrationId: a.keys.registrationId, preKeys: 2, firstKeyId: 500 }).uploadRequest();
        await leavesBUnchanged(async () => {
          for (const field of namingB()) {
            const answer = await httpJson(relay, 'PUT', '/v1/keys', { token: a.auth.accessToken, body: { ...upload, ...field, replaceOneTimePreKeys: true } });
            expect(refusal(answer)).toEqual([400, ErrorCode.ValidationFailed]);
          }
          // The same upload without the field is A's own, and touches A only.
          expect((await httpJson(relay, 'PUT', '/v1/keys', { token: a.auth.accessToken, body: upload })).status).toBe(204);
        });
      },
    );

    row(
      ['PUT /v1/keys'],
      "B's second device (or a thief of its token) uploads keys: only device 2's keys change, device 1's stay as they were",
      async () => {
        const before = await stateOfB();
        const upload = new DeviceKeys({ identity: b1.keys.identity, registrationId: b2.keys.registrationId, preKeys: 2, firstKeyId: 900 }).uploadRequest();
        expect((await httpJson(relay, 'PUT', '/v1/keys', { token: b2.auth.accessToken, body: { ...upload, replaceOneTimePreKeys: true } })).status).toBe(204);
        const after = await stateOfB();
        const ofDevice1 = (state: AccountState) => ({
          device: state.devices.find((device) => device.device_id === 1),
          preKeys: state.oneTimePreKeys.filter((key) => key.device_id === 1),
          kyberPreKeys: state.kyberPreKeys.filter((key) => key.device_id === 1),
        });
        expect(ofDevice1(after)).toEqual(ofDevice1(before));
        expect(after.oneTimePreKeys.filter((key) => key.device_id === 2).map((key) => key.key_id)).toEqual([900, 901]);
      },
    );

    row(
      ['GET /v1/keys'],
      "A asks for its prekey counts with B's account, username and device in the query: the answer is A's own counts",
      async () => {
        await leavesBUnchanged(async () => {
          const query = `?accountId=${b1.auth.accountId}&username=${b1.auth.username}&deviceId=2`;
          const answer = await httpJson(relay, 'GET', `/v1/keys${query}`, { token: a.auth.accessToken });
          const [counts] = await relay.sql<{ pre_keys: number; kyber_pre_keys: number }>(
            `SELECT (SELECT count(*)::int FROM one_time_prekeys k JOIN devices d ON d.id = k.device_row_id WHERE d.account_id = $1::uuid) AS pre_keys,
                    (SELECT count(*)::int FROM kyber_prekeys k JOIN devices d ON d.id = k.device_row_id WHERE d.account_id = $1::uuid) AS kyber_pre_keys`,
            a.auth.accountId,
          );
          expect(answer.status).toBe(200);
          expect({ preKeys: answer.body.preKeys, kyberPreKeys: answer.body.kyberPreKeys }).toEqual({ preKeys: counts!.pre_keys, kyberPreKeys: counts!.kyber_pre_keys });
        });
      },
    );

    row(
      ['GET /v1/keys/{username}'],
      "A fetches B's prekey bundle: public keys only (no private key, password hash or access key), and the one-time prekeys it hands out are the only change to B",
      async () => {
        const before = await stateOfB();
        const answer = await httpJson(relay, 'GET', `/v1/keys/${b1.auth.username}`, { token: a.auth.accessToken });
        expect(answer.status).toBe(200);
        expect(Object.keys(answer.body).sort()).toEqual(['accountId', 'devices', 'identityKey', 'username']);
        for (const device of answer.body.devices as object[]) {
          expect(Object.keys(device).sort()).toEqual(['deviceId', 'kyberPreKey', 'preKey', 'registrationId', 'signedPreKey']);
        }
        const text = JSON.stringify(answer.body);
        for (const secret of [
          Buffer.from(b1.keys.identity.privateKey.serialize()).toString('base64'),
          Buffer.from(b1.keys.signedPreKey.privateKey().serialize()).toString('base64'),
          bAccessKey.toString('base64'),
          String(before.account?.password_hash),
        ]) {
          expect(text).not.toContain(secret);
        }
        const after = await stateOfB();
        expect({ ...after, oneTimePreKeys: [], kyberPreKeys: [] }).toEqual({ ...before, oneTimePreKeys: [], kyberPreKeys: [] });
        const handedOut = (answer.body.devices as Array<{ deviceId: number; preKey: { keyId: number } | null }>).map((device) => [device.deviceId, device.preKey?.keyId]);
        expect(handedOut.every(([, keyId]) => keyId !== undefined)).toBe(true);
        const wasHandedOut = (key: Record<string, unknown>) => handedOut.some(([deviceId, keyId]) => deviceId === key.device_id && keyId === key.key_id);
        expect(after.oneTimePreKeys).toEqual(before.oneTimePreKeys.filter((key) => !wasHandedOut(key)));
      },
    );
  });

  describe('accounts and credentials', () => {
    row(
      ['POST /v1/auth/login'],
      "A signs in as B's second device with A's password, and as device 2 of A's own account (only B has one): INVALID_CREDENTIALS, and B gets no new refresh token",
      async () => {
        await leavesBUnchanged(async () => {
          for (const body of [
            { username: b1.auth.username, password: A_PASSWORD, deviceId: 2 },
            { username: b1.auth.username, password: A_PASSWORD },
            { username: a.auth.username, password: A_PASSWORD, deviceId: 2 },
          ]) {
            expect(refusal(await httpJson(relay, 'POST', '/v1/auth/login', { body }))).toEqual([401, ErrorCode.InvalidCredentials]);
          }
        });
      },
    );

    row(
      ['POST /v1/auth/register'],
      "A registers B's username in upper case: USERNAME_TAKEN, and B's account row and password are untouched",
      async () => {
        await leavesBUnchanged(async () => {
          const answer = await httpJson(relay, 'POST', '/v1/auth/register', { body: { username: b1.auth.username.toUpperCase(), password: A_PASSWORD } });
          expect(refusal(answer)).toEqual([409, ErrorCode.UsernameTaken]);
        });
      },
    );

    row(
      ['POST /v1/auth/refresh'],
      "A redeems its refresh token with fields naming B's account or device: VALIDATION_FAILED; redeemed plainly it yields a pair for A's own device only",
      async () => {
        const login = await httpJson<AuthResponse>(relay, 'POST', '/v1/auth/login', { body: { username: a.auth.username, password: A_PASSWORD } });
        await leavesBUnchanged(async () => {
          for (const field of namingB()) {
            const answer = await httpJson(relay, 'POST', '/v1/auth/refresh', { body: { refreshToken: login.body.refreshToken, ...field } });
            expect(refusal(answer)).toEqual([400, ErrorCode.ValidationFailed]);
          }
          const pair = await httpJson<AuthResponse>(relay, 'POST', '/v1/auth/refresh', { body: { refreshToken: login.body.refreshToken } });
          expect(pair.status).toBe(200);
          const me = await httpJson(relay, 'GET', '/v1/auth/me', { token: pair.body.accessToken });
          expect([me.body.accountId, me.body.deviceId]).toEqual([a.auth.accountId, a.auth.deviceId]);
        });
      },
    );

    row(
      ['POST /v1/auth/password'],
      "A changes a password giving B's password as the current one, or with a field naming B: INVALID_CREDENTIALS or VALIDATION_FAILED, and B's password hash and tokens are unchanged",
      async () => {
        await leavesBUnchanged(async () => {
          const withBsPassword = await httpJson(relay, 'POST', '/v1/auth/password', {
            token: a.auth.accessToken,
            body: { currentPassword: DEFAULT_TEST_PASSWORD, newPassword: 'a password A wants for B' },
          });
          expect(refusal(withBsPassword)).toEqual([401, ErrorCode.InvalidCredentials]);
          for (const field of namingB()) {
            const answer = await httpJson(relay, 'POST', '/v1/auth/password', {
              token: a.auth.accessToken,
              body: { currentPassword: A_PASSWORD, newPassword: 'a password A wants for B', ...field },
            });
            expect(refusal(answer)).toEqual([400, ErrorCode.ValidationFailed]);
          }
        });
        expect((await httpJson(relay, 'GET', '/v1/auth/me', { token: b1.auth.accessToken })).status).toBe(200);
      },
    );

    row(['GET /v1/auth/me'], "A asks who it is with B's account id and device in the query: the answer names A's account and device", async () => {
      const answer = await httpJson(relay, 'GET', `/v1/auth/me?accountId=${b1.auth.accountId}&deviceId=2&username=${b1.auth.username}`, { token: a.auth.accessToken });
      expect(answer.status).toBe(200);
      expect(answer.body).toEqual({ accountId: a.auth.accountId, username: a.auth.username, deviceId: a.auth.deviceId, expiresAt: expect.any(Number) });
    });

    row(
      ['DELETE /v1/account'],
      "A deletes an account giving B's password, or with a field naming B: INVALID_CREDENTIALS or VALIDATION_FAILED, and B's account is whole",
      async () => {
        await leavesBUnchanged(async () => {
          const withBsPassword = await httpJson(relay, 'DELETE', '/v1/account', { token: a.auth.accessToken, body: { password: DEFAULT_TEST_PASSWORD } });
          expect(refusal(withBsPassword)).toEqual([401, ErrorCode.InvalidCredentials]);
          for (const field of namingB()) {
            const answer = await httpJson(relay, 'DELETE', '/v1/account', { token: a.auth.accessToken, body: { password: A_PASSWORD, ...field } });
            expect(refusal(answer)).toEqual([400, ErrorCode.ValidationFailed]);
          }
        });
      },
    );

    row(
      ['PUT /v1/account/unidentified-access'],
      "A sets an access key with a field naming B's account: VALIDATION_FAILED; set plainly it changes A's access key, never B's",
      async () => {
        const key = randomBytes(16);
        await leavesBUnchanged(async () => {
          for (const field of namingB()) {
            const answer = await httpJson(relay, 'PUT', '/v1/account/unidentified-access', {
              token: a.auth.accessToken,
              body: { accessKey: key.toString('base64'), unrestricted: true, ...field },
            });
            expect(refusal(answer)).toEqual([400, ErrorCode.ValidationFailed]);
          }
          const own = await httpJson(relay, 'PUT', '/v1/account/unidentified-access', { token: a.auth.accessToken, body: { accessKey: key.toString('base64'), unrestricted: true } });
          expect(own.status).toBe(204);
        });
        const [row] = await relay.sql<{ key: string }>(`SELECT encode(unidentified_access_key, 'hex') AS key FROM accounts WHERE id = $1::uuid`, a.auth.accountId);
        expect(row?.key).toBe(key.toString('hex'));
      },
    );

    row(
      ['GET /v1/accounts/{accountId}'],
      "A looks up B's account id: the answer is B's account id and username only (no keys, access key, devices or password hash)",
      async () => {
        await leavesBUnchanged(async () => {
          const answer = await httpJson(relay, 'GET', `/v1/accounts/${b1.auth.accountId}`, { token: a.auth.accessToken });
          expect(answer.status).toBe(200);
          expect(answer.body).toEqual({ accountId: b1.auth.accountId, username: b1.auth.username });
        });
      },
    );

    row(
      ['GET /v1/certificate/delivery'],
      "A asks for a sender certificate with B's account and device in the query: the certificate names A's account and device, never B's",
      async () => {
        const answer = await httpJson(relay, 'GET', `/v1/certificate/delivery?accountId=${b1.auth.accountId}&deviceId=2`, { token: a.auth.accessToken });
        expect(answer.status).toBe(200);
        const certificate = SenderCertificate.deserialize(new Uint8Array(Buffer.from(answer.body.certificate as string, 'base64')));
        expect([certificate.senderUuid(), certificate.senderDeviceId()]).toEqual([a.auth.accountId, a.auth.deviceId]);
        expect(certificate.key().serialize()).toEqual(a.keys.identity.publicKey.serialize());
      },
    );

    row(
      ['GET /v1/certificate/trust-root', 'GET /health/live', 'GET /health/ready', 'GET /metrics'],
      "an anonymous caller reads the unauthenticated endpoints (trust root, health, metrics): none names B's username or account id",
      async () => {
        for (const path of ['/v1/certificate/trust-root', '/health/live', '/health/ready', '/metrics']) {
          const response = await fetch(`${relay.baseUrl}${path}`);
          const text = await response.text();
          // The trust root is served by a development relay only (404 here, where the certificate is configured).
          expect([path, [200, 404].includes(response.status)]).toEqual([path, true]);
          expect(text).not.toContain(b1.auth.username);
          expect(text).not.toContain(b1.auth.accountId);
        }
      },
    );
  });

  describe('devices and linking', () => {
    /** A slot B's next device opened and B's first device approved: B's. */
    const approvedSlotOfB = async () => {
      const slot = await httpJson<ProvisioningSlotResponse>(relay, 'POST', '/v1/provisioning');
      const approval = await httpJson(relay, 'PUT', `/v1/provisioning/${slot.body.id}`, { token: b1.auth.accessToken, body: { message: b64('sealed for B') } });
      expect([slot.status, approval.status]).toEqual([201, 204]);
      return slot.body;
    };

    row(
      ['PUT /v1/provisioning/{id}'],
      "A approves a slot B already approved, and approves its own slot with a field naming B: PROVISIONING_NOT_FOUND and VALIDATION_FAILED; B's slot keeps B's account and message",
      async () => {
        const slotOfB = await approvedSlotOfB();
        const own = await httpJson<ProvisioningSlotResponse>(relay, 'POST', '/v1/provisioning');
        await leavesBUnchanged(async () => {
          const again = await httpJson(relay, 'PUT', `/v1/provisioning/${slotOfB.id}`, { token: a.auth.accessToken, body: { message: b64('sealed by A') } });
          expect(refusal(again)).toEqual([404, ErrorCode.ProvisioningNotFound]);
          for (const field of namingB()) {
            const answer = await httpJson(relay, 'PUT', `/v1/provisioning/${own.body.id}`, { token: a.auth.accessToken, body: { message: b64('sealed by A'), ...field } });
            expect(refusal(answer)).toEqual([400, ErrorCode.ValidationFailed]);
          }
        });
        const [slot] = await relay.sql(`SELECT account_id, encode(message, 'base64') AS message FROM provisioning_slots WHERE id = $1::uuid`, slotOfB.id);
        expect(slot).toEqual({ account_id: b1.auth.accountId, message: b64('sealed for B') });
      },
    );

    row(
      ['POST /v1/provisioning', 'POST /v1/provisioning/{id}/receive'],
      "A opens a slot of its own and reads B's approved slot with that slot's secret: A's slot belongs to no account, and B's read is PROVISIONING_NOT_FOUND with no message",
      async () => {
        const slotOfB = await approvedSlotOfB();
        await leavesBUnchanged(async () => {
          const own = await httpJson<ProvisioningSlotResponse>(relay, 'POST', '/v1/provisioning');
          expect(own.status).toBe(201);
          expect(await relay.sql('SELECT account_id, message FROM provisioning_slots WHERE id = $1::uuid', own.body.id)).toEqual([{ account_id: null, message: null }]);
          const answer = await httpJson(relay, 'POST', `/v1/provisioning/${slotOfB.id}/receive`, { body: { secret: own.body.secret } });
          expect(refusal(answer)).toEqual([404, ErrorCode.ProvisioningNotFound]);
          expect(JSON.stringify(answer.body)).not.toContain(b64('sealed for B'));
        });
      },
    );

    row(
      ['POST /v1/devices/link'],
      "A links a device through B's approved slot with another slot's secret, or with fields naming B's account: PROVISIONING_NOT_FOUND or VALIDATION_FAILED, and B gains no device",
      async () => {
        const slotOfB = await approvedSlotOfB();
        const own = await httpJson<ProvisioningSlotResponse>(relay, 'POST', '/v1/provisioning');
        await leavesBUnchanged(async () => {
          const wrongSecret = await httpJson(relay, 'POST', '/v1/devices/link', { body: { provisioningId: slotOfB.id, secret: own.body.secret } });
          expect(refusal(wrongSecret)).toEqual([404, ErrorCode.ProvisioningNotFound]);
          for (const field of namingB()) {
            const answer = await httpJson(relay, 'POST', '/v1/devices/link', { body: { provisioningId: own.body.id, secret: own.body.secret, ...field } });
            expect(refusal(answer)).toEqual([400, ErrorCode.ValidationFailed]);
          }
        });
      },
    );

    row(['GET /v1/devices'], "A lists devices: only A's own device, never B's", async () => {
      const answer = await httpJson(relay, 'GET', `/v1/devices?accountId=${b1.auth.accountId}`, { token: a.auth.accessToken });
      expect(answer.status).toBe(200);
      expect(answer.body.devices.map((device: { deviceId: number }) => device.deviceId)).toEqual([1]);
    });

    row(
      ['DELETE /v1/devices/{deviceId}'],
      "A unlinks device 2, a device id only B has: DEVICE_NOT_FOUND, and B's second device keeps its keys, queue and working token",
      async () => {
        await leavesBUnchanged(async () => {
          const answer = await httpJson(relay, 'DELETE', `/v1/devices/${b2.auth.deviceId}`, { token: a.auth.accessToken });
          expect(refusal(answer)).toEqual([404, ErrorCode.DeviceNotFound]);
        });
        expect((await httpJson(relay, 'GET', '/v1/messages', { token: b2.auth.accessToken })).status).toBe(200);
      },
    );
  });

  describe('backup', () => {
    row(
      ['PUT /v1/backup', 'GET /v1/backup', 'DELETE /v1/backup'],
      "A reads, overwrites and deletes a backup while B has one, also with fields naming B: A reads BACKUP_NOT_FOUND or its own, a naming upload is VALIDATION_FAILED, and B's backup is unchanged",
      async () => {
        await leavesBUnchanged(async () => {
          const nothing = await httpJson(relay, 'GET', '/v1/backup', { token: a.auth.accessToken });
          expect(refusal(nothing)).toEqual([404, ErrorCode.BackupNotFound]);
          for (const field of namingB()) {
            const answer = await httpJson(relay, 'PUT', '/v1/backup', { token: a.auth.accessToken, body: { blob: b64('overwritten by A'), ...field } });
            expect(refusal(answer)).toEqual([400, ErrorCode.ValidationFailed]);
          }
          expect((await httpJson(relay, 'PUT', '/v1/backup', { token: a.auth.accessToken, body: { blob: b64('the backup of A') } })).status).toBe(204);
          const own = await httpJson(relay, 'GET', `/v1/backup?accountId=${b1.auth.accountId}`, { token: a.auth.accessToken });
          expect(own.body.blob).toBe(b64('the backup of A'));
          expect((await httpJson(relay, 'DELETE', `/v1/backup?accountId=${b1.auth.accountId}`, { token: a.auth.accessToken })).status).toBe(204);
          expect(refusal(await httpJson(relay, 'GET', '/v1/backup', { token: a.auth.accessToken }))).toEqual([404, ErrorCode.BackupNotFound]);
        });
        const ofB = await httpJson(relay, 'GET', '/v1/backup', { token: b2.auth.accessToken });
        expect(ofB.body.blob).toBe(b64('the backup of B'));
      },
    );
  });

  it('every route of the OpenAPI document, the WebSocket upgrade and every client frame type has a row of this matrix: a route added without one fails here', async () => {
    const document = (await httpJson<{ paths: Record<string, Record<string, unknown>> }>(relay, 'GET', '/v1/openapi.json')).body;
    const documented = Object.entries(document.paths).flatMap(([path, item]) => Object.keys(item).map((method) => `${method.toUpperCase()} ${path}`));
    expect(documented.length).toBeGreaterThanOrEqual(30);
    const expected = [...documented, 'GET /v1/ws', ...Object.values(ClientFrameType).map((type) => `WS ${type}`)].sort();
    expect([...matrix.keys()].sort()).toEqual(expected);
  });
});


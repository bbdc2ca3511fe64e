import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import type WebSocket from 'ws';
import {
  CloseCode,
  EnvelopeType,
  ErrorCode,
  ServerFrameType,
  USERNAME_COOLING_OFF_DAYS,
  type AuthResponse,
  type ListMessagesResponse,
  type PreKeyBundleResponse,
} from '@chat/protocol';
import { AuthModule } from '../src/auth/auth.module.js';
import { Clock } from '../src/common/clock.js';
import { DeviceKeys } from './support/libsignal-keys.js';
import { DEFAULT_TEST_PASSWORD, httpJson, registerKeyedUser, registerUser, startTestRelay, type TestRelay, uniqueUsername } from './support/test-relay.js';
import { connectWs, refusedUpgrade, waitForClose, waitForFrame } from './support/ws-client.js';

const NEW_PASSWORD = 'a brand new passphrase';

describe('account lifecycle (e2e)', () => {
  let relay: TestRelay;
  const open: WebSocket[] = [];

  beforeAll(async () => {
    relay = await startTestRelay();
  });

  afterAll(async () => {
    for (const socket of open) socket.terminate();
    await relay?.close();
  });

  const me = (token: string) => httpJson(relay, 'GET', '/v1/auth/me', { token });
  const refresh = (refreshToken: string) => httpJson<AuthResponse>(relay, 'POST', '/v1/auth/refresh', { body: { refreshToken } });
  const login = (username: string, password: string) => httpJson<AuthResponse>(relay, 'POST', '/v1/auth/login', { body: { username, password } });
  const changePassword = (token: string, body: unknown) => httpJson<AuthResponse>(relay, 'POST', '/v1/auth/password', { token, body });
  const connect = async (token: string) => {
    const client = await connectWs(relay.wsUrl, token);
    open.push(client.socket);
    await waitForFrame(client, (frame) => frame.type === ServerFrameType.QueueEmpty);
    return client;
  };

  describe('POST /v1/auth/password', () => {
    it('refuses a wrong current password with INVALID_CREDENTIALS and keeps the old password and tokens', async () => {
      const user = await registerUser(relay, uniqueUsername('pw'));
      const refused = await changePassword(user.accessToken, { currentPassword: 'not my password', newPassword: NEW_PASSWORD });
      expect([refused.status, refused.body.code]).toEqual([401, ErrorCode.InvalidCredentials]);
      expect((await me(user.accessToken)).status).toBe(200);
      expect((await login(user.username, DEFAULT_TEST_PASSWORD)).status).toBe(200);
      expect((await login(user.username, NEW_PASSWORD)).body.code).toBe(ErrorCode.InvalidCredentials);
    });

    it('answers with a new pair; every earlier access token is CREDENTIALS_CHANGED, every earlier refresh token refused, open sockets closed with 4403', async () => {
      const registered = await registerUser(relay, uniqueUsername('pw'));
      const loggedIn = (await login(registered.username, DEFAULT_TEST_PASSWORD)).body;
      const socket = await connect(loggedIn.accessToken);
      const closed = waitForClose(socket.socket);

      const changed = await changePassword(registered.accessToken, { currentPassword: DEFAULT_TEST_PASSWORD, newPassword: NEW_PASSWORD });
      expect(changed.status).toBe(200);
      expect(changed.body).toEqual({
        accountId: registered.accountId,
        username: registered.username,
        deviceId: 1,
        accessToken: expect.any(String),
        expiresIn: 900,
        refreshToken: expect.stringMatching(/^[A-Za-z0-9_-]{43}$/),
      });
      expect(await closed).toEqual({ code: CloseCode.CredentialsChanged, reason: ErrorCode.CredentialsChanged });

      for (const old of [registered, loggedIn]) {
        const refusedMe = await me(old.accessToken);
        expect([refusedMe.status, refusedMe.body.code]).toEqual([401, ErrorCode.CredentialsChanged]);
        const refusedKeys = await httpJson(relay, 'GET', '/v1/keys', { token: old.accessToken });
        expect([refusedKeys.status, refusedKeys.body.code]).toEqual([401, ErrorCode.CredentialsChanged]);
        const upgrade = await refusedUpgrade(relay.wsUrl, { authorization: `Bearer ${old.accessToken}` });
        expect(upgrade).toMatchObject({ status: 401, body: { code: ErrorCode.CredentialsChanged } });
        const refreshed = await refresh(old.refreshToken);
        expect([refreshed.status, refreshed.body.code]).toEqual([401, ErrorCode.InvalidRefreshToken]);
      }

      expect(await me(changed.body.accessToken)).toMatchObject({ status: 200, body: { accountId: registered.accountId } });
      await connect(changed.body.accessToken);
      expect((await refresh(changed.body.refreshToken)).status).toBe(200);
      expect((await login(registered.username, DEFAULT_TEST_PASSWORD)).body.code).toBe(ErrorCode.InvalidCredentials);
      expect((await login(registered.username, NEW_PASSWORD)).status).toBe(200);
    });

    it('refuses a too short new password with VALIDATION_FAILED, and a request without a token', async () => {
      const user = await registerUser(relay, uniqueUsername('pw'));
      const short = await changePassword(user.accessToken, { currentPassword: DEFAULT_TEST_PASSWORD, newPassword: 'short' });
      expect([short.status, short.body.code]).toEqual([400, ErrorCode.ValidationFailed]);
      expect(short.body.details).toEqual([expect.stringMatching(/^newPassword: /)]);
      const anonymous = await httpJson(relay, 'POST', '/v1/auth/password', { body: { currentPassword: DEFAULT_TEST_PASSWORD, newPassword: NEW_PASSWORD } });
      expect([anonymous.status, anonymous.body.code]).toEqual([401, ErrorCode.AuthenticationRequired]);
      expect((await login(user.username, DEFAULT_TEST_PASSWORD)).status).toBe(200);
    });
  });

  describe('DELETE /v1/account', () => {
    const DAY_MS = 24 * 60 * 60 * 1000;
    const deleteAccount = (user: AuthResponse, password: string) =>
      httpJson(relay, 'DELETE', '/v1/account', { token: user.accessToken, body: { password } });
    const register = (username: string) =>
      httpJson<AuthResponse>(relay, 'POST', '/v1/auth/register', { body: { username, password: DEFAULT_TEST_PASSWORD } });
    const fetchBundle = (username: string, by: AuthResponse) =>
      httpJson<PreKeyBundleResponse>(relay, 'GET', `/v1/keys/${username}`, { token: by.accessToken });
    /** Registration id of each keyed user's device 1, which every device message must name. */
    const registrationIds = new Map<string, number>();
    const send = (from: AuthResponse, to: string, text: string) =>
      httpJson(relay, 'POST', '/v1/messages', {
        token: from.accessToken,
        body: {
          to,
          messages: [{ deviceId: 1, registrationId: registrationIds.get(to) ?? 1, type: EnvelopeType.Signal, ciphertext: Buffer.from(text).toString('base64') }],
        },
      });
    const keyedUser = async (prefix: string, keys = new DeviceKeys({ preKeys: 3, kyberPreKeys: 2 })) => {
      const keyed = await registerKeyedUser(relay, prefix, keys);
      registrationIds.set(keyed.user.username, keys.registrationId);
      return keyed;
    };
    /** Rows the relay holds for the account, per table. */
    const rowsOf = async (accountId: string) => {
      const [counts] = await relay.sql<Record<string, number>>(
        `SELECT (SELECT count(*)::int FROM accounts WHERE id = $1::uuid) AS accounts,
                (SELECT count(*)::int FROM devices WHERE account_id = $1::uuid) AS devices,
                (SELECT count(*)::int FROM one_time_prekeys k JOIN devices d ON d.id = k.device_row_id WHERE d.account_id = $1::uuid) AS one_time_prekeys,
                (SELECT count(*)::int FROM kyber_prekeys k JOIN devices d ON d.id = k.device_row_id WHERE d.account_id = $1::uuid) AS kyber_prekeys,
                (SELECT count(*)::int FROM messages m JOIN devices d ON d.id = m.recipient_device_row_id WHERE d.account_id = $1::uuid) AS inbox,
                (SELECT count(*)::int FROM refresh_tokens WHERE account_id = $1::uuid) AS refresh_tokens,
                (SELECT count(*)::int FROM backups WHERE account_id = $1::uuid) AS backups`,
        accountId,
      );
      return counts;
    };

    it('refuses a wrong password with INVALID_CREDENTIALS and deletes nothing', async () => {
      const { user } = await keyedUser('stay');
      const before = await rowsOf(user.accountId);
      const refused = await deleteAccount(user, 'not my password');
      expect([refused.status, refused.body.code]).toEqual([401, ErrorCode.InvalidCredentials]);
      expect(await rowsOf(user.accountId)).toEqual(before);
      expect((await me(user.accessToken)).status).toBe(200);
    });

    it("deletes the account with its keys, devices, inbox, refresh tokens and backup, closes its sockets with 4403, ends its tokens, and keeps what it sent deliverable", async () => {
      const { user: leaver } = await keyedUser('leaver');
      const { user: bob } = await keyedUser('bob');
      expect((await send(bob, leaver.username, 'to the leaver')).status).toBe(201);
      expect((await send(leaver, bob.username, 'from the leaver')).status).toBe(201);
      expect((await httpJson(relay, 'PUT', '/v1/backup', { token: leaver.accessToken, body: { blob: 'AAAA' } })).status).toBe(204);
      expect(await rowsOf(leaver.accountId)).toEqual({
        accounts: 1,
        devices: 1,
        one_time_prekeys: 3,
        kyber_prekeys: 2,
        inbox: 1,
        refresh_tokens: 1,
        backups: 1,
      });
      const socket = await connect(leaver.accessToken);
      const closed = waitForClose(socket.socket);

      const deleted = await deleteAccount(leaver, DEFAULT_TEST_PASSWORD);
      expect(deleted).toMatchObject({ status: 204, body: undefined });
      expect(await closed).toEqual({ code: CloseCode.CredentialsChanged, reason: ErrorCode.CredentialsChanged });
      expect(await rowsOf(leaver.accountId)).toEqual({
        accounts: 0,
        devices: 0,
        one_time_prekeys: 0,
        kyber_prekeys: 0,
        inbox: 0,
        refresh_tokens: 0,
        backups: 0,
      });

      const refusedMe = await me(leaver.accessToken);
      expect([refusedMe.status, refusedMe.body.code]).toEqual([401, ErrorCode.InvalidToken]);
      expect(await refusedUpgrade(relay.wsUrl, { authorization: `Bearer ${leaver.accessToken}` })).toMatchObject({
        status: 401,
        body: { code: ErrorCode.InvalidToken },
      });
      expect((await refresh(leaver.refreshToken)).body.code).toBe(ErrorCode.InvalidRefreshToken);
      expect((await login(leaver.username, DEFAULT_TEST_PASSWORD)).body.code).toBe(ErrorCode.InvalidCredentials);
      expect((await fetchBundle(leaver.username, bob)).body.code).toBe(ErrorCode.UnknownRecipient);
      expect((await send(bob, leaver.username, 'too late')).body.code).toBe(ErrorCode.UnknownRecipient);

      const bobsQueue = await httpJson<ListMessagesResponse>(relay, 'GET', '/v1/messages', { token: bob.accessToken });
      expect(bobsQueue.body.messages).toEqual([
        expect.objectContaining({ source: leaver.username, sourceDevice: 1, ciphertext: Buffer.from('from the leaver').toString('base64') }),
      ]);
    });

    it('keeps the username taken, exactly as a taken one reads, for the cooling-off period; then a new registration serves its new identity key', async () => {
      const { user: leaver, keys: oldKeys } = await keyedUser('reborn');
      const { user: bob } = await keyedUser('bob');
      const { user: holder } = await keyedUser('holder');
      expect((await fetchBundle(leaver.username, bob)).body.identityKey).toBe(oldKeys.uploadRequest().identityKey);
      expect((await deleteAccount(leaver, DEFAULT_TEST_PASSWORD)).status).toBe(204);

      const taken = await register(holder.username);
      const retired = await register(leaver.username);
      expect([retired.status, retired.body]).toEqual([taken.status, taken.body]);
      expect(retired.body.code).toBe(ErrorCode.UsernameTaken);

      const clock = relay.app.select(AuthModule).get(Clock, { strict: true });
      const later = new Date(Date.now() + USERNAME_COOLING_OFF_DAYS * DAY_MS + 60_000);
      const timeTravel = jest.spyOn(clock, 'now').mockReturnValue(later);
      try {
        const reborn = await register(leaver.username);
        expect(reborn.status).toBe(201);
        expect(reborn.body.accountId).not.toBe(leaver.accountId);
        const newKeys = new DeviceKeys({ preKeys: 1, kyberPreKeys: 1 });
        expect((await httpJson(relay, 'PUT', '/v1/keys', { token: reborn.body.accessToken, body: newKeys.uploadRequest() })).status).toBe(204);

        const bundle = await fetchBundle(leaver.username, bob);
        expect(bundle.status).toBe(200);
        expect(bundle.body.identityKey).toBe(newKeys.uploadRequest().identityKey);
        expect(bundle.body.identityKey).not.toBe(oldKeys.uploadRequest().identityKey);
      } finally {
        timeTravel.mockRestore();
      }
    });
  });
});

import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type WebSocket from 'ws';
import { CloseCode, ErrorCode, ServerFrameType, type AuthResponse } from '@chat/protocol';
import { DEFAULT_TEST_PASSWORD, httpJson, registerUser, startTestRelay, uniqueUsername, type TestRelay } from './support/test-relay.js';
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
});

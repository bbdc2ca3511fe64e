import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { ProtocolAddress, SessionRecord } from '@signalapp/libsignal-client';
import { ErrorCode } from '@chat/protocol';
import {
  ChatEvent,
  ConnectionState,
  SecureChatClient,
  SecureChatError,
  SecureChatErrorCode,
  type SecureChatClientOptions,
  type SecureChatStores,
} from '@chat/signal-sdk';
import { MessageCollector, createMemoryStores } from '@chat/signal-sdk/testing';
import { startRewritingProxy, type RewritingProxy } from './support/rewriting-proxy.js';
import { DEFAULT_TEST_PASSWORD, httpJson, startTestRelay, uniqueUsername, type TestRelay } from './support/test-relay.js';
import { failure, until } from './support/wait.js';

// The SDK's side of password changes, account deletion and bundle fetch
// limits, on the real relay: it closes an account's sockets with 4403 before
// it answers a password change, refuses tokens of an earlier password with
// CREDENTIALS_CHANGED, and answers too many bundle fetches with RATE_LIMITED.

const NEW_PASSWORD = 'an entirely new passphrase';

function harness(relayUrl: () => string) {
  const clients: SecureChatClient[] = [];
  const newClient = (options: Partial<SecureChatClientOptions> = {}, stores: SecureChatStores = createMemoryStores()) => {
    const client = SecureChatClient.create({ relayUrl: relayUrl(), stores, backOff: { initialDelayMs: 20, maxDelayMs: 100 }, ...options });
    clients.push(client);
    const seen = { errors: [] as SecureChatError[], states: [] as ConnectionState[] };
    client.on(ChatEvent.Error, (error) => void seen.errors.push(error));
    client.on(ChatEvent.ConnectionState, (state) => void seen.states.push(state));
    return { client, stores, seen, inbox: new MessageCollector(client) };
  };
  const registered = async (prefix: string, options: Partial<SecureChatClientOptions> = {}) => {
    const party = newClient(options);
    const username = uniqueUsername(prefix);
    await party.client.register(username, DEFAULT_TEST_PASSWORD);
    return { ...party, username };
  };
  const closeAll = async () => {
    for (const client of clients) await client.close();
  };
  return { newClient, registered, closeAll };
}

describe('SDK account life cycle on the real relay', () => {
  let relay: TestRelay;
  const { newClient, registered, closeAll } = harness(() => relay.baseUrl);

  beforeAll(async () => {
    relay = await startTestRelay();
  });

  afterAll(async () => {
    await closeAll();
    await relay?.close();
  });

  it('changePassword: this client goes on, reconnected on its new tokens; the old password and refresh token are refused', async () => {
    const alice = await registered('alice');
    const bob = await registered('bob');
    await alice.client.connect();
    const oldRefreshToken = (await alice.stores.metadata.getRefreshToken())!;

    await alice.client.changePassword(DEFAULT_TEST_PASSWORD, NEW_PASSWORD);
    await until(() => alice.client.connectionState === ConnectionState.Connected);
    await bob.client.send(alice.username, 'after the password change');
    expect((await alice.inbox.next()).text).toBe('after the password change');
    expect(alice.seen.errors).toEqual([]);

    const refresh = await httpJson(relay, 'POST', '/v1/auth/refresh', { body: { refreshToken: oldRefreshToken } });
    expect([refresh.status, refresh.body.code]).toEqual([401, ErrorCode.InvalidRefreshToken]);
    const login = await httpJson(relay, 'POST', '/v1/auth/login', { body: { username: alice.username, password: DEFAULT_TEST_PASSWORD } });
    expect(login.body.code).toBe(ErrorCode.InvalidCredentials);
    // A restart resumes with the refresh token the change handed out.
    await alice.client.close();
    const restarted = newClient({}, alice.stores);
    await restarted.client.resume();
    expect(restarted.client.username).toBe(alice.username);
  });

  it('a password changed elsewhere closes this client with 4403: it stops, says CredentialsChanged, and a login with the new password works', async () => {
    const alice = await registered('alice');
    await alice.client.connect();
    // Someone else with the password (another app, the account's owner on the web) changes it.
    const other = await httpJson(relay, 'POST', '/v1/auth/login', { body: { username: alice.username, password: DEFAULT_TEST_PASSWORD } });
    const changed = await httpJson(relay, 'POST', '/v1/auth/password', {
      token: other.body.accessToken as string,
      body: { currentPassword: DEFAULT_TEST_PASSWORD, newPassword: NEW_PASSWORD },
    });
    expect(changed.status).toBe(200);

    await until(() => alice.seen.errors.length > 0);
    expect(alice.seen.errors.map((e) => e.code)).toEqual([SecureChatErrorCode.CredentialsChanged]);
    expect(alice.client.connectionState).toBe(ConnectionState.Disconnected);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(alice.seen.states).not.toContain(ConnectionState.Reconnecting);
    await expect(alice.stores.metadata.getRefreshToken()).resolves.toBeNull();

    await alice.client.login(alice.username, NEW_PASSWORD);
    await alice.client.connect();
    expect(alice.client.connectionState).toBe(ConnectionState.Connected);
  });

  it('deleteAccount: the account is gone at the relay, the client is closed for good and its refresh token cleared', async () => {
    const alice = await registered('alice');
    const bob = await registered('bob');
    await alice.client.connect();
    expect((await failure(alice.client.deleteAccount('not the password'))).relayCode).toBe(ErrorCode.InvalidCredentials);

    await alice.client.deleteAccount(DEFAULT_TEST_PASSWORD);
    expect(alice.client.connectionState).toBe(ConnectionState.Disconnected);
    await expect(alice.stores.metadata.getRefreshToken()).resolves.toBeNull();
    expect((await failure(alice.client.send(bob.username, 'x'))).code).toBe(SecureChatErrorCode.InvalidState);
    expect((await failure(bob.client.send(alice.username, 'anyone there?'))).relayCode).toBe(ErrorCode.UnknownRecipient);
    const login = await httpJson(relay, 'POST', '/v1/auth/login', { body: { username: alice.username, password: DEFAULT_TEST_PASSWORD } });
    expect(login.body.code).toBe(ErrorCode.InvalidCredentials);
    expect(alice.seen.errors).toEqual([]);
  });
});

describe('SDK and the bundle fetch limit on the real relay', () => {
  let relay: TestRelay;
  let proxy: RewritingProxy;
  const { registered, closeAll } = harness(() => proxy.baseUrl);

  beforeAll(async () => {
    relay = await startTestRelay({ BUNDLE_FETCHES_PER_PAIR: '2', BUNDLE_FETCH_PAIR_WINDOW_SECONDS: '3600' });
    proxy = await startRewritingProxy(relay, () => undefined);
  });

  afterAll(async () => {
    await closeAll();
    await proxy?.close();
    await relay?.close();
  });

  it('surfaces RATE_LIMITED with retryAfter, and does not ask the relay for that bundle again before it has passed', async () => {
    const alice = await registered('alice');
    const bob = await registered('bob');
    const fetchesOfBob = () => proxy.requests.filter((r) => r.method === 'GET' && r.path === `/v1/keys/${bob.username}`).length;
    const forgetBob = () => alice.stores.session.saveSession(ProtocolAddress.new(bob.username, 1), SessionRecord.deserialize(new Uint8Array(0)));

    await alice.client.send(bob.username, 'first');
    await forgetBob();
    await alice.client.send(bob.username, 'second');
    await forgetBob();
    const limited = await failure(alice.client.send(bob.username, 'third'));
    expect(limited).toMatchObject({ code: SecureChatErrorCode.RelayRejected, relayCode: ErrorCode.RateLimited, status: 429 });
    expect(limited.retryAfter).toBeGreaterThan(0);
    expect(limited.retryAfter).toBeLessThanOrEqual(3600);
    expect(fetchesOfBob()).toBe(3);

    for (let i = 0; i < 5; i++) {
      const again = await failure(alice.client.send(bob.username, `retry ${i}`));
      expect(again).toMatchObject({ relayCode: ErrorCode.RateLimited });
      expect(again.retryAfter).toBeLessThanOrEqual(limited.retryAfter!);
    }
    expect(fetchesOfBob()).toBe(3);
  });
});

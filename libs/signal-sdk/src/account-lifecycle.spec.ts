import { describe, expect, it } from '@jest/globals';
import { CloseCode, ErrorCode } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from './errors.js';
import { ChatEvent, ConnectionState } from './events.js';
import { SecureChatClient, type SecureChatClientOptions } from './secure-chat-client.js';
import { createMemoryStores } from './stores/memory-stores.js';
import type { SecureChatStores } from './stores/stores.js';
import { FakeRelay } from './test-support/fake-relay.js';
import { MessageCollector } from './testing/wait-for.js';
import { failure, until } from './test-support/spec-helpers.js';

const PASSWORD = 'correct horse battery';
const NEW_PASSWORD = 'a much longer new passphrase';

function client(relay: FakeRelay, options: Partial<SecureChatClientOptions> = {}, stores: SecureChatStores = createMemoryStores()) {
  const made = SecureChatClient.create({
    relayUrl: 'http://127.0.0.1:1',
    transport: relay.transport(),
    stores,
    backOff: { initialDelayMs: 5, maxDelayMs: 20 },
    ...options,
  });
  const seen = { errors: [] as SecureChatError[], states: [] as ConnectionState[] };
  made.on(ChatEvent.Error, (error) => void seen.errors.push(error));
  made.on(ChatEvent.ConnectionState, (state) => void seen.states.push(state));
  return { client: made, stores, seen };
}

describe('changePassword', () => {
  it.each([
    ['before', undefined],
    ['after', 20],
  ])('keeps this client going on new tokens (saved for resume), reconnecting when the relay closes its socket %s answering; old tokens stop working', async (_when, closeDelay) => {
    const relay = new FakeRelay();
    relay.credentialCloseDelayMs = closeDelay;
    const stores = createMemoryStores();
    const alice = client(relay, {}, stores);
    await alice.client.register('alice', PASSWORD);
    const oldRefreshToken = (await stores.metadata.getRefreshToken())!;
    const bob = client(relay);
    await bob.client.register('bob', PASSWORD);
    const inbox = new MessageCollector(alice.client);
    await alice.client.connect();

    await alice.client.changePassword(PASSWORD, NEW_PASSWORD);
    await new Promise((resolve) => setTimeout(resolve, 40));
    await until(() => alice.client.connectionState === ConnectionState.Connected);
    await bob.client.send('alice', 'after the change');
    expect((await inbox.next()).text).toBe('after the change');
    expect(alice.seen.errors).toEqual([]);

    const newRefreshToken = await stores.metadata.getRefreshToken();
    expect(newRefreshToken).not.toBe(oldRefreshToken);
    await expect(relay.transport().refresh(oldRefreshToken)).rejects.toMatchObject({ relayCode: ErrorCode.InvalidRefreshToken });
    await expect(relay.transport().login({ username: 'alice', password: PASSWORD })).rejects.toMatchObject({
      relayCode: ErrorCode.InvalidCredentials,
    });
    await alice.client.close();
    const restarted = client(relay, {}, stores);
    await restarted.client.resume();
    expect(restarted.client.username).toBe('alice');
  });

  it('retries, on the new token, a request sent with the old one while its own password change was on its way', async () => {
    const relay = new FakeRelay();
    relay.changePasswordAnswerDelayMs = 50;
    const alice = client(relay);
    await alice.client.register('alice', PASSWORD);
    const bob = client(relay);
    await bob.client.register('bob', PASSWORD);
    const inbox = new MessageCollector(bob.client);
    await bob.client.connect();

    const changing = alice.client.changePassword(PASSWORD, NEW_PASSWORD);
    // The change has taken effect at the relay, its answer is still on the way.
    await new Promise((resolve) => setTimeout(resolve, 10));
    const sending = alice.client.send('bob', 'sent during the change');
    await changing;
    await expect(sending).resolves.toMatchObject({ devices: [1] });
    expect((await inbox.next()).text).toBe('sent during the change');
    expect(alice.seen.errors).toEqual([]);
    expect(relay.bundleFetches).toEqual([{ by: 'alice', of: 'bob' }]);
  });

  it('refuses a wrong current password (nothing changes) and a new password shorter than 8 characters (nothing sent)', async () => {
    const relay = new FakeRelay();
    const alice = client(relay);
    await alice.client.register('alice', PASSWORD);
    expect((await failure(alice.client.changePassword('not the password', NEW_PASSWORD))).relayCode).toBe(ErrorCode.InvalidCredentials);
    expect((await failure(alice.client.changePassword(PASSWORD, 'short'))).code).toBe(SecureChatErrorCode.InvalidArgument);
    await expect(relay.transport().login({ username: 'alice', password: PASSWORD })).resolves.toMatchObject({ username: 'alice' });
  });

  it('another install of the account, changed elsewhere: its socket closes with 4403, it stops reconnecting and reports CredentialsChanged; login works again', async () => {
    const relay = new FakeRelay();
    const stores = createMemoryStores();
    const here = client(relay, {}, stores);
    await here.client.register('alice', PASSWORD);
    await here.client.connect();
    const elsewhere = client(relay, {}, stores);
    await elsewhere.client.resume();

    await elsewhere.client.changePassword(PASSWORD, NEW_PASSWORD);
    await until(() => here.seen.errors.length === 1);
    expect(here.seen.errors[0]).toMatchObject({ code: SecureChatErrorCode.CredentialsChanged });
    expect(here.client.connectionState).toBe(ConnectionState.Disconnected);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(here.seen.states.at(-1)).toBe(ConnectionState.Disconnected);
    expect(here.seen.states).not.toContain(ConnectionState.Reconnecting);
    // Its tokens are gone: a call needing them says so.
    expect((await failure(here.client.send('alice', 'x'))).code).toBe(SecureChatErrorCode.InvalidState);

    await here.client.login('alice', NEW_PASSWORD);
    await here.client.connect();
    expect(here.client.connectionState).toBe(ConnectionState.Connected);
    await here.client.close();
  });

  it('a request with a token that predates a password change fails with CredentialsChanged and stops the client', async () => {
    const relay = new FakeRelay();
    const alice = client(relay);
    await alice.client.register('alice', PASSWORD);
    await relay.transport().changePassword('token:alice:0', { currentPassword: PASSWORD, newPassword: NEW_PASSWORD });
    const error = await failure(alice.client.send('bob', 'x'));
    expect(error).toMatchObject({ code: SecureChatErrorCode.CredentialsChanged, relayCode: ErrorCode.CredentialsChanged });
    expect((await failure(alice.client.connect())).code).toBe(SecureChatErrorCode.InvalidState);
    await expect(alice.stores.metadata.getRefreshToken()).resolves.toBeNull();
  });

  it('a 4403 close of an open socket is not retried even without a password change of its own', async () => {
    const relay = new FakeRelay();
    const alice = client(relay);
    await alice.client.register('alice', PASSWORD);
    await alice.client.connect();
    relay.closeSocketOf('alice', CloseCode.CredentialsChanged, ErrorCode.CredentialsChanged);
    await until(() => alice.seen.errors.length === 1);
    expect(alice.seen.errors[0]?.code).toBe(SecureChatErrorCode.CredentialsChanged);
    expect(alice.client.connectionState).toBe(ConnectionState.Disconnected);
  });
});

describe('deleteAccount', () => {
  it('deletes the account, closes the client for good and clears the stored refresh token', async () => {
    const relay = new FakeRelay();
    const stores = createMemoryStores();
    const alice = client(relay, {}, stores);
    await alice.client.register('alice', PASSWORD);
    await alice.client.connect();

    expect((await failure(alice.client.deleteAccount('wrong password'))).relayCode).toBe(ErrorCode.InvalidCredentials);
    expect(relay.accounts.has('alice')).toBe(true);

    await alice.client.deleteAccount(PASSWORD);
    expect(relay.accounts.has('alice')).toBe(false);
    expect(alice.client.connectionState).toBe(ConnectionState.Disconnected);
    expect(alice.client.username).toBeNull();
    expect(alice.seen.errors).toEqual([]);
    await expect(stores.metadata.getRefreshToken()).resolves.toBeNull();
    for (const call of [alice.client.send('bob', 'x'), alice.client.connect(), alice.client.login('alice', PASSWORD), alice.client.resume()]) {
      expect((await failure(call)).code).toBe(SecureChatErrorCode.InvalidState);
    }
  });
});

describe('bundle fetch rate limits', () => {
  it('surfaces RATE_LIMITED with retryAfter, and does not ask the relay again for that user until it has passed', async () => {
    const relay = new FakeRelay();
    const clock = { now: 1_800_000_000_000 };
    const alice = client(relay, { now: () => clock.now });
    await alice.client.register('alice', PASSWORD);
    const bob = client(relay);
    await bob.client.register('bob', PASSWORD);
    const carol = client(relay);
    await carol.client.register('carol', PASSWORD);

    relay.bundleRateLimit = { retryAfter: 30 };
    const refused = await failure(alice.client.send('bob', 'x'));
    expect(refused).toMatchObject({ code: SecureChatErrorCode.RelayRejected, relayCode: ErrorCode.RateLimited, retryAfter: 30 });
    relay.bundleRateLimit = undefined;

    const fetchesBefore = relay.bundleFetches.length;
    clock.now += 10_000;
    const again = await failure(alice.client.send('bob', 'x'));
    expect(again).toMatchObject({ relayCode: ErrorCode.RateLimited, retryAfter: 20 });
    expect(relay.bundleFetches.length).toBe(fetchesBefore);
    // Another user is not held back.
    await alice.client.send('carol', 'hi carol');
    expect(relay.bundleFetches.at(-1)).toEqual({ by: 'alice', of: 'carol' });

    clock.now += 20_000;
    await alice.client.send('bob', 'now it goes');
    expect(relay.bundleFetches.at(-1)).toEqual({ by: 'alice', of: 'bob' });
  });
});

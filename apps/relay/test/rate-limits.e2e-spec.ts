import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { ClientFrameType, EnvelopeType, ErrorCode, ServerFrameType, type AuthResponse, type ErrorFrame, type ServerFrame } from '@chat/protocol';
import { DeviceKeys } from './support/libsignal-keys.js';
import { DEFAULT_TEST_PASSWORD, httpJson, type HttpResult, registerKeyedUser, registerUser, type RelayEnvOverrides, startTestRelay, type TestRelay, uniqueUsername } from './support/test-relay.js';
import { connectWs, waitForFrame, type WsClient } from './support/ws-client.js';

/**
 * Every rate limit of docs/protocol.md ("Rate limits") but the bundle-fetch
 * and provisioning ones (bundle-rate-limit and devices specs), each hit with
 * tight limits. Counters live in Redis when REDIS_URL is set (a fresh key
 * prefix per relay), in memory otherwise; the last suite shows that two
 * relays on one Redis share a budget.
 */

/** The refusal as the wire carries it: 429, the code, and the same whole seconds in the header and the body. */
function expectRateLimited(answer: HttpResult, windowSeconds: number): void {
  expect([answer.status, answer.body.code]).toEqual([429, ErrorCode.RateLimited]);
  const retryAfter = answer.body.retryAfter!;
  expect(Number.isInteger(retryAfter)).toBe(true);
  expect(retryAfter).toBeGreaterThanOrEqual(1);
  expect(retryAfter).toBeLessThanOrEqual(windowSeconds);
  expect(answer.headers.get('retry-after')).toBe(String(retryAfter));
}

const WINDOW = 600;
const window = (...names: Array<keyof RelayEnvOverrides>): RelayEnvOverrides =>
  Object.fromEntries(names.map((name) => [name, String(WINDOW)]));

describe('rate limits of accounts and tokens (e2e)', () => {
  let relay: TestRelay;

  beforeAll(async () => {
    relay = await startTestRelay({
      REGISTRATIONS_PER_IP: '3',
      LOGINS_PER_USERNAME: '2',
      LOGINS_PER_IP: '4',
      REFRESHES_PER_IP: '2',
      PASSWORD_CHECKS_PER_ACCOUNT: '2',
      ...window('REGISTRATION_WINDOW_SECONDS', 'LOGIN_USERNAME_WINDOW_SECONDS', 'LOGIN_IP_WINDOW_SECONDS', 'REFRESH_WINDOW_SECONDS', 'PASSWORD_CHECK_WINDOW_SECONDS'),
    });
  });

  afterAll(async () => {
    await relay?.close();
  });

  const accountsNamed = async (username: string) =>
    (await relay.sql<{ n: number }>('SELECT count(*)::int AS n FROM accounts WHERE lower(username) = lower($1)', username))[0]!.n;
  const login = (username: string, password = DEFAULT_TEST_PASSWORD) =>
    httpJson<AuthResponse>(relay, 'POST', '/v1/auth/login', { body: { username, password } });

  let users: AuthResponse[] = [];

  it('refuses a client IP its 4th registration with 429 RATE_LIMITED and Retry-After, creating no account', async () => {
    users = [await registerUser(relay, uniqueUsername('a')), await registerUser(relay, uniqueUsername('b')), await registerUser(relay, uniqueUsername('c'))];
    const username = uniqueUsername('d');
    expectRateLimited(await httpJson(relay, 'POST', '/v1/auth/register', { body: { username, password: DEFAULT_TEST_PASSWORD } }), WINDOW);
    expect(await accountsNamed(username)).toBe(0);
  });

  it('counts every sign-in attempt of a username, failed ones too, and refuses the next even with the right password', async () => {
    const [a, b] = users;
    expect((await login(a!.username, 'a wrong password of the owner')).body.code).toBe(ErrorCode.InvalidCredentials);
    expect((await login(a!.username.toUpperCase())).status).toBe(200);
    // Third attempt at the same username (in any case): refused, although the password is right.
    expectRateLimited(await login(a!.username), WINDOW);
    // Another username from the same IP is still let in: the IP has spent 3 of its 4.
    expect((await login(b!.username)).status).toBe(200);
  });

  it('refuses a client IP sign-ins over its own limit, whatever the username', async () => {
    // The IP's 4 are spent (the refused attempt above counted too); a fresh username is refused.
    expectRateLimited(await login(users[2]!.username), WINDOW);
  });

  it('refuses a client IP its 3rd token refresh', async () => {
    const [a, b, c] = users;
    expect((await httpJson(relay, 'POST', '/v1/auth/refresh', { body: { refreshToken: a!.refreshToken } })).status).toBe(200);
    expect((await httpJson(relay, 'POST', '/v1/auth/refresh', { body: { refreshToken: b!.refreshToken } })).status).toBe(200);
    const refused = await httpJson(relay, 'POST', '/v1/auth/refresh', { body: { refreshToken: c!.refreshToken } });
    expectRateLimited(refused, WINDOW);
  });

  it('counts password changes and account deletions of one account together, and refuses the 3rd without deleting', async () => {
    const c = users[2]!;
    const wrong = 'not the current password at all';
    const change = await httpJson(relay, 'POST', '/v1/auth/password', {
      token: c.accessToken,
      body: { currentPassword: wrong, newPassword: 'a brand new password 123' },
    });
    expect(change.body.code).toBe(ErrorCode.InvalidCredentials);
    const deletion = await httpJson(relay, 'DELETE', '/v1/account', { token: c.accessToken, body: { password: wrong } });
    expect(deletion.body.code).toBe(ErrorCode.InvalidCredentials);
    expectRateLimited(await httpJson(relay, 'DELETE', '/v1/account', { token: c.accessToken, body: { password: DEFAULT_TEST_PASSWORD } }), WINDOW);
    expect(await accountsNamed(c.username)).toBe(1);
    // Per account: another account's password check goes through.
    const b = users[1]!;
    const other = await httpJson(relay, 'POST', '/v1/auth/password', { token: b.accessToken, body: { currentPassword: wrong, newPassword: 'another new password 1' } });
    expect(other.body.code).toBe(ErrorCode.InvalidCredentials);
  });
});

describe('rate limits of sends (e2e)', () => {
  let relay: TestRelay;
  const registrationIds = new Map<string, number>();
  const ciphertext = Buffer.from('opaque to the relay').toString('base64');

  beforeAll(async () => {
    relay = await startTestRelay({
      SENDS_PER_DEVICE: '4',
      SENDS_PER_PAIR: '2',
      SEALED_SENDS_PER_IP: '2',
      ...window('SEND_DEVICE_WINDOW_SECONDS', 'SEND_PAIR_WINDOW_SECONDS', 'SEALED_SEND_WINDOW_SECONDS'),
    });
  });

  afterAll(async () => {
    await relay?.close();
  });

  const keyedUser = async (prefix: string) => {
    const { user, keys } = await registerKeyedUser(relay, prefix);
    registrationIds.set(user.username, keys.registrationId);
    return user;
  };
  const messageTo = (to: AuthResponse) => ({
    to: to.username,
    messages: [{ deviceId: 1, registrationId: registrationIds.get(to.username), type: EnvelopeType.Signal, ciphertext }],
  });
  const send = (from: AuthResponse, to: AuthResponse) => httpJson(relay, 'POST', '/v1/messages', { token: from.accessToken, body: messageTo(to) });
  const queued = async (to: AuthResponse) =>
    (await relay.sql<{ n: number }>('SELECT count(*)::int AS n FROM messages m JOIN devices d ON d.id = m.recipient_device_row_id WHERE d.account_id = $1', to.accountId))[0]!.n;

  it('refuses a sender its 3rd send to one recipient (per pair), stores nothing, and lets it write to others', async () => {
    const [alice, bob, carol] = [await keyedUser('alice'), await keyedUser('bob'), await keyedUser('carol')];
    expect((await send(alice, bob)).status).toBe(201);
    expect((await send(alice, bob)).status).toBe(201);
    expectRateLimited(await send(alice, { ...bob, username: bob.username.toUpperCase() }), WINDOW);
    expect(await queued(bob)).toBe(2);
    // Other pairs are not affected: another recipient, and another sender to bob.
    expect((await send(alice, carol)).status).toBe(201);
    expect((await send(carol, bob)).status).toBe(201);
  });

  it('counts HTTP sends and WebSocket send frames of one device together; a refused frame is an error frame with retryAfter', async () => {
    const [dave, r1, r2, r3] = [await keyedUser('dave'), await keyedUser('r1'), await keyedUser('r2'), await keyedUser('r3')];
    expect((await send(dave, r1)).status).toBe(201);
    expect((await send(dave, r2)).status).toBe(201);
    const ws: WsClient = await connectWs(relay.wsUrl, dave.accessToken);
    try {
      const frame = (requestId: string, to: AuthResponse) => ({ type: ClientFrameType.Send, requestId, message: messageTo(to) });
      const answerTo = (requestId: string) => waitForFrame(ws, (f: ServerFrame) => 'requestId' in f && f.requestId === requestId);
      ws.send(frame('third', r3));
      expect((await answerTo('third')).type).toBe(ServerFrameType.Sent);
      ws.send(frame('fourth', r3));
      expect((await answerTo('fourth')).type).toBe(ServerFrameType.Sent);
      // Pair limit over the socket: a third to r3.
      ws.send(frame('pair', r3));
      // The device's 5th send (the refused one counted too): refused whatever the recipient.
      ws.send(frame('device', r1));
      for (const requestId of ['pair', 'device']) {
        const refused = (await answerTo(requestId)) as ErrorFrame;
        expect(refused).toMatchObject({ type: ServerFrameType.Error, requestId, code: ErrorCode.RateLimited });
        expect(refused.retryAfter).toBeGreaterThanOrEqual(1);
        expect(refused.retryAfter).toBeLessThanOrEqual(WINDOW);
      }
      expectRateLimited(await send(dave, r2), WINDOW);
      expect([await queued(r1), await queued(r2), await queued(r3)]).toEqual([1, 1, 2]);
    } finally {
      ws.socket.close();
    }
  });

  it('limits sealed sends per client IP only: the 3rd from one IP is refused before the body is looked at', async () => {
    const erin = await keyedUser('erin');
    const sealed = () =>
      httpJson(relay, 'POST', '/v1/messages/sealed', {
        headers: { 'unidentified-access-key': randomBytes(16).toString('base64') },
        body: { to: erin.username, messages: [{ deviceId: 1, registrationId: registrationIds.get(erin.username), ciphertext }] },
      });
    // Wrong access keys: refused by the relay, but counted.
    for (let i = 0; i < 2; i++) expect((await sealed()).status).not.toBe(429);
    expectRateLimited(await sealed(), WINDOW);
    expectRateLimited(await httpJson(relay, 'POST', '/v1/messages/multi-recipient', { body: {} }), WINDOW);
    expect(await queued(erin)).toBe(0);
  });
});

describe('inbound byte budgets (e2e)', () => {
  let relay: TestRelay;
  let light: AuthResponse;
  let heavy: AuthResponse;
  const IP_BYTES = 4000;
  const ACCOUNT_BYTES = 20000;

  beforeAll(async () => {
    relay = await startTestRelay({
      INBOUND_BYTES_PER_IP: String(IP_BYTES),
      INBOUND_BYTES_PER_ACCOUNT: String(ACCOUNT_BYTES),
      ...window('INBOUND_BYTES_IP_WINDOW_SECONDS', 'INBOUND_BYTES_ACCOUNT_WINDOW_SECONDS'),
    });
    // About 100 bytes each of the IP's budget.
    light = await registerUser(relay, uniqueUsername('light'));
    heavy = await registerUser(relay, uniqueUsername('heavy'));
  });

  afterAll(async () => {
    await relay?.close();
  });

  it('counts the bodies sent to unauthenticated endpoints per client IP, invalid ones too, and refuses past the budget', async () => {
    const padding = 'x'.repeat(IP_BYTES - 600);
    const invalid = await httpJson(relay, 'POST', '/v1/auth/login', { body: { username: light.username, password: DEFAULT_TEST_PASSWORD, padding } });
    expect(invalid.body.code).toBe(ErrorCode.ValidationFailed);
    // The next body of 400 bytes and more does not fit in what is left.
    const refused = await httpJson(relay, 'POST', '/v1/auth/login', { body: { username: light.username, password: 'p'.repeat(400) } });
    expectRateLimited(refused, WINDOW);
    // Authenticated requests count against their account instead.
    expect((await httpJson(relay, 'PUT', '/v1/keys', { token: light.accessToken, body: new DeviceKeys().uploadRequest() })).status).toBe(204);
  });

  it("counts an account's request bodies and WebSocket frames together, and refuses both past the budget", async () => {
    const junk = (bytes: number) => ({ junk: 'j'.repeat(bytes) });
    const invalidUpload = await httpJson(relay, 'PUT', '/v1/keys', { token: heavy.accessToken, body: junk(ACCOUNT_BYTES - 5000) });
    expect(invalidUpload.body.code).toBe(ErrorCode.ValidationFailed);
    const ws = await connectWs(relay.wsUrl, heavy.accessToken);
    try {
      const answerTo = (requestId: string) => waitForFrame<ErrorFrame>(ws, (f: ServerFrame) => 'requestId' in f && f.requestId === requestId);
      ws.send({ type: ClientFrameType.Send, requestId: 'fits', message: junk(3000) });
      expect((await answerTo('fits')).code).toBe(ErrorCode.ValidationFailed);
      ws.send({ type: ClientFrameType.Send, requestId: 'over', message: junk(3000) });
      const refused = await answerTo('over');
      expect(refused).toMatchObject({ type: ServerFrameType.Error, code: ErrorCode.RateLimited });
      expect(refused.retryAfter).toBeGreaterThanOrEqual(1);
      expect(refused.retryAfter).toBeLessThanOrEqual(WINDOW);
    } finally {
      ws.socket.close();
    }
    expectRateLimited(await httpJson(relay, 'PUT', '/v1/keys', { token: heavy.accessToken, body: new DeviceKeys().uploadRequest() }), WINDOW);
    // A request without a body spends nothing, and another account has its own budget.
    expect((await httpJson(relay, 'GET', '/v1/keys', { token: heavy.accessToken })).status).toBe(200);
    expect((await httpJson(relay, 'GET', '/v1/keys', { token: light.accessToken })).status).toBe(200);
  });
});

const describeWithRedis = process.env.REDIS_URL ? describe : describe.skip;

describeWithRedis('rate limits shared by two relays on one Redis (e2e)', () => {
  let first: TestRelay;
  let second: TestRelay;

  beforeAll(async () => {
    // One key prefix for both relays, fresh for this run so that parallel runs do not share counters.
    const shared: RelayEnvOverrides = {
      RATE_LIMIT_KEY_PREFIX: `relay-test-shared-${randomBytes(6).toString('hex')}`,
      REGISTRATIONS_PER_IP: '2',
      ...window('REGISTRATION_WINDOW_SECONDS'),
    };
    first = await startTestRelay(shared);
    second = await startTestRelay(shared);
  });

  afterAll(async () => {
    await first?.close();
    await second?.close();
  });

  it("refuses on one relay a registration that the other relay's registrations used up", async () => {
    await registerUser(first, uniqueUsername('one'));
    await registerUser(second, uniqueUsername('two'));
    expectRateLimited(await httpJson(first, 'POST', '/v1/auth/register', { body: { username: uniqueUsername('three'), password: DEFAULT_TEST_PASSWORD } }), WINDOW);
    expectRateLimited(await httpJson(second, 'POST', '/v1/auth/register', { body: { username: uniqueUsername('four'), password: DEFAULT_TEST_PASSWORD } }), WINDOW);
  });
});

describe('client addresses behind a reverse proxy (TRUST_PROXY) (e2e)', () => {
  const relays: TestRelay[] = [];

  afterAll(async () => {
    for (const relay of relays) await relay.close();
  });

  const registerFrom = (relay: TestRelay, forwardedFor: string) =>
    httpJson(relay, 'POST', '/v1/auth/register', {
      body: { username: uniqueUsername('fwd'), password: DEFAULT_TEST_PASSWORD },
      headers: { 'X-Forwarded-For': forwardedFor },
    });

  it('counts per forwarded client address when the proxy (here loopback) is trusted', async () => {
    const relay = await startTestRelay({ REGISTRATIONS_PER_IP: '1', REGISTRATION_WINDOW_SECONDS: String(WINDOW), TRUST_PROXY: 'loopback' });
    relays.push(relay);
    expect((await registerFrom(relay, '203.0.113.7')).status).toBe(201);
    expectRateLimited(await registerFrom(relay, '203.0.113.7'), WINDOW);
    // Another client behind the same proxy has a budget of its own.
    expect((await registerFrom(relay, '198.51.100.23')).status).toBe(201);
  });

  it('ignores X-Forwarded-For without TRUST_PROXY: every request counts against the TCP peer', async () => {
    const relay = await startTestRelay({ REGISTRATIONS_PER_IP: '1', REGISTRATION_WINDOW_SECONDS: String(WINDOW) });
    relays.push(relay);
    expect((await registerFrom(relay, '203.0.113.7')).status).toBe(201);
    expectRateLimited(await registerFrom(relay, '198.51.100.23'), WINDOW);
  });
});

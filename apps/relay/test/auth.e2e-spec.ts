import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { JwtService } from '@nestjs/jwt';
import { ErrorCode, MAX_HTTP_BODY_BYTES, type AuthResponse } from '@chat/protocol';
import { httpJson, registerUser, startTestRelay, TEST_JWT_SECRET, uniqueUsername, type TestRelay } from './support/test-relay.js';

describe('auth over HTTP', () => {
  let relay: TestRelay;

  beforeAll(async () => {
    relay = await startTestRelay();
  });

  afterAll(async () => {
    await relay?.close();
  });

  it('registers (201), logs in (200) and refreshes (200) with access tokens for device 1', async () => {
    const username = uniqueUsername('reg');
    const registered = await httpJson<AuthResponse>(relay, 'POST', '/v1/auth/register', {
      body: { username, password: 'a long password' },
    });
    expect(registered.status).toBe(201);
    expect(registered.body).toEqual({
      accountId: expect.stringMatching(/^[0-9a-f-]{36}$/),
      username,
      deviceId: 1,
      accessToken: expect.any(String),
      expiresIn: 900,
      refreshToken: expect.stringMatching(/^[A-Za-z0-9_-]{43}$/),
    });

    const login = await httpJson<AuthResponse>(relay, 'POST', '/v1/auth/login', { body: { username, password: 'a long password' } });
    expect(login.status).toBe(200);
    expect(login.body.accountId).toBe(registered.body.accountId);

    const refreshed = await httpJson<AuthResponse>(relay, 'POST', '/v1/auth/refresh', {
      body: { refreshToken: login.body.refreshToken },
    });
    expect(refreshed.status).toBe(200);
    const me = await httpJson(relay, 'GET', '/v1/auth/me', { token: refreshed.body.accessToken });
    expect(me.body).toMatchObject({ accountId: registered.body.accountId, username, deviceId: 1 });
  });

  it('accepts a refresh token only once', async () => {
    const auth = await registerUser(relay, uniqueUsername('once'));
    const first = await httpJson(relay, 'POST', '/v1/auth/refresh', { body: { refreshToken: auth.refreshToken } });
    const second = await httpJson(relay, 'POST', '/v1/auth/refresh', { body: { refreshToken: auth.refreshToken } });
    expect(first.status).toBe(200);
    expect(second.status).toBe(401);
    expect(second.body.code).toBe(ErrorCode.InvalidRefreshToken);
  });

  it('canonicalises usernames and refuses a taken one in any case', async () => {
    const username = uniqueUsername('dup');
    const registered = await registerUser(relay, username.toUpperCase());
    expect(registered.username).toBe(username);
    for (const variant of [username, username.toUpperCase()]) {
      const again = await httpJson(relay, 'POST', '/v1/auth/register', { body: { username: variant, password: 'a long password' } });
      expect(again.status).toBe(409);
      expect(again.body.code).toBe(ErrorCode.UsernameTaken);
    }
    const login = await httpJson(relay, 'POST', '/v1/auth/login', {
      body: { username: username.toUpperCase(), password: 'correct horse battery staple' },
    });
    expect(login.status).toBe(200);
  });

  it('lets exactly one of concurrent registrations of a name succeed', async () => {
    const username = uniqueUsername('race');
    const results = await Promise.all(
      Array.from({ length: 6 }, () => httpJson(relay, 'POST', '/v1/auth/register', { body: { username, password: 'a long password' } })),
    );
    expect(results.filter((result) => result.status === 201)).toHaveLength(1);
    const refused = results.filter((result) => result.status !== 201);
    expect(refused.map((result) => [result.status, result.body.code])).toEqual(
      Array.from({ length: 5 }, () => [409, ErrorCode.UsernameTaken]),
    );
  });

  it('answers a wrong password and an unknown user alike with INVALID_CREDENTIALS', async () => {
    const username = uniqueUsername('cred');
    await registerUser(relay, username);
    const wrong = await httpJson(relay, 'POST', '/v1/auth/login', { body: { username, password: 'not the password' } });
    const unknown = await httpJson(relay, 'POST', '/v1/auth/login', { body: { username: uniqueUsername('ghost'), password: 'whatever1' } });
    expect([wrong.status, wrong.body.code]).toEqual([401, ErrorCode.InvalidCredentials]);
    expect([unknown.status, unknown.body.code]).toEqual([401, ErrorCode.InvalidCredentials]);
    expect(unknown.body.message).toBe(wrong.body.message);
  });

  it.each([
    ['a too short username', { username: 'ab', password: 'a long password' }, 'username'],
    ['a username with a space', { username: 'a b c', password: 'a long password' }, 'username'],
    ['a too long username', { username: 'a'.repeat(33), password: 'a long password' }, 'username'],
    ['a numeric username', { username: 12345, password: 'a long password' }, 'username'],
    ['a too short password', { username: 'valid_name', password: 'short' }, 'password'],
    ['a too long password', { username: 'valid_name', password: 'p'.repeat(257) }, 'password'],
    ['a missing password', { username: 'valid_name' }, 'password'],
    ['an unknown field', { username: 'valid_name', password: 'a long password', admin: true }, 'admin'],
  ])('refuses %s with VALIDATION_FAILED naming the field', async (_name, body, field) => {
    const { status, body: error } = await httpJson(relay, 'POST', '/v1/auth/register', { body });
    expect(status).toBe(400);
    expect(error.code).toBe(ErrorCode.ValidationFailed);
    expect(error.details).toEqual(expect.arrayContaining([expect.stringMatching(new RegExp(`^${field}: `))]));
  });

  it('refuses malformed JSON with MALFORMED_JSON', async () => {
    const { status, body } = await httpJson(relay, 'POST', '/v1/auth/login', { rawBody: '{"username": "alice", ' });
    expect([status, body.code]).toEqual([400, ErrorCode.MalformedJson]);
  });

  it('refuses a body over MAX_HTTP_BODY_BYTES with PAYLOAD_TOO_LARGE', async () => {
    const rawBody = JSON.stringify({ username: 'alice', password: 'x'.repeat(MAX_HTTP_BODY_BYTES) });
    const { status, body } = await httpJson(relay, 'POST', '/v1/auth/login', { rawBody });
    expect([status, body.code]).toEqual([413, ErrorCode.PayloadTooLarge]);
  });

  it('answers an unknown route with NOT_FOUND', async () => {
    const { status, body } = await httpJson(relay, 'GET', '/v1/no-such-thing');
    expect([status, body.code]).toEqual([404, ErrorCode.NotFound]);
  });

  describe('a protected route', () => {
    let auth: AuthResponse;
    const jwt = new JwtService({});
    const claims = () => ({ sub: auth.accountId, dev: 1, usr: auth.username, cv: 0 });
    const valid = { secret: TEST_JWT_SECRET, issuer: 'chat-relay', audience: 'chat-relay', expiresIn: 60 } as const;
    const base64url = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');

    beforeAll(async () => {
      auth = await registerUser(relay, uniqueUsername('guard'));
    });

    it.each<[string, () => string | undefined, ErrorCode]>([
      ['no token', () => undefined, ErrorCode.AuthenticationRequired],
      ['a token signed with another secret', () => jwt.sign(claims(), { ...valid, secret: 'x'.repeat(48) }), ErrorCode.InvalidToken],
      [
        'an expired token',
        () =>
          jwt.sign(
            { ...claims(), exp: Math.floor(Date.now() / 1000) - 5 },
            { secret: TEST_JWT_SECRET, issuer: 'chat-relay', audience: 'chat-relay' },
          ),
        ErrorCode.TokenExpired,
      ],
      [
        'an alg none token',
        () =>
          `${base64url({ alg: 'none', typ: 'JWT' })}.${base64url({ ...claims(), iss: 'chat-relay', aud: 'chat-relay', exp: Math.floor(Date.now() / 1000) + 60 })}.`,
        ErrorCode.InvalidToken,
      ],
      ['a token for another audience', () => jwt.sign(claims(), { ...valid, audience: 'another-service' }), ErrorCode.InvalidToken],
      ['garbage', () => 'garbage', ErrorCode.InvalidToken],
    ])('answers %s with 401 and its code, and keeps serving', async (_name, token, code) => {
      const refused = await httpJson(relay, 'GET', '/v1/auth/me', { token: token() });
      expect([refused.status, refused.body.code]).toEqual([401, code]);
      const served = await httpJson(relay, 'GET', '/v1/auth/me', { token: auth.accessToken });
      expect(served.status).toBe(200);
    });
  });

  it('keeps no password in the clear anywhere in the database', async () => {
    const password = 'plaintext-canary-password-4711';
    await registerUser(relay, uniqueUsername('dump'), password);
    const tables = await relay.sql<{ table_name: string }>(
      `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'`,
    );
    expect(tables.length).toBeGreaterThan(5);
    let dump = '';
    for (const { table_name } of tables) {
      const rows = await relay.sql<{ row: string }>(`SELECT row_to_json(t)::text AS row FROM "${table_name}" t`);
      dump += rows.map((r) => r.row).join('\n');
    }
    expect(dump).toContain('$argon2id$');
    expect(dump).not.toContain(password);
    expect(dump).not.toContain(Buffer.from(password).toString('hex'));
    expect(dump).not.toContain(Buffer.from(password).toString('base64'));
  });
});

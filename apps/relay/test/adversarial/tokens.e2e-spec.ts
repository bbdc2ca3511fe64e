/**
 * The token matrix: an attacker holding no secret, or holding a token that
 * is no longer good, tries to pass as a device at the WebSocket handshake
 * and on HTTP. Every forged token changes exactly one thing of a token the
 * relay would accept; the baseline test shows that such a token, forged
 * here with the relay's secret, is accepted, so each refusal is down to the
 * one thing its row changes.
 *
 * Rows the older specs already have (not repeated at the same place):
 * auth.e2e-spec.ts "a protected route" (HTTP: another secret, expired, alg
 * none, another audience, garbage, no token), gateway.e2e-spec.ts
 * "handshake" (another secret, expired, alg none, no token) and "closes the
 * socket with 4401 when its token expires", auth.e2e-spec.ts "accepts a
 * refresh token only once", account-lifecycle.e2e-spec.ts (earlier access
 * and refresh tokens after a password change). Their alg-none tokens carry
 * no `did` claim, which the relay also refuses, so they do not show that
 * `alg: none` alone is refused; the rows here do.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import WebSocket from 'ws';
import { CloseCode, EnvelopeType, ErrorCode, ServerFrameType, type AuthResponse, type Envelope, type MessageFrame } from '@chat/protocol';
import { DEFAULT_TEST_PASSWORD, httpJson, registerKeyedUser, registerUser, startTestRelay, TEST_JWT_SECRET, uniqueUsername, type TestRelay } from '../support/test-relay.js';
import { connectWs, refusedUpgrade, waitForClose, waitForFrame, type WsClient } from '../support/ws-client.js';
import { linkKeyedDevice } from './support/authz-accounts.js';
import {
  asymmetricToken,
  attackerKeyPair,
  base64url,
  genuineClaims,
  hmacToken,
  nowSeconds,
  signatureOf,
  unsignedToken,
  type Claims,
} from './support/forged-tokens.js';

/** Replays of a failing fast-check run: FAST_CHECK_SEED=<seed> (logged on failure). */
const SEED = Number(process.env.FAST_CHECK_SEED ?? 20261126);

describe('adversarial: tokens', () => {
  let relay: TestRelay;
  /** The device every forged token claims to be. */
  let victim: AuthResponse;
  let claims: Claims;
  /** Where `jku`/`x5u`/`kid` headers point: an attacker's server that counts the requests it gets. */
  let attackerServer: Server;
  let attackerUrl: string;
  let attackerRequests = 0;
  const open: WebSocket[] = [];

  beforeAll(async () => {
    relay = await startTestRelay();
    victim = (await registerKeyedUser(relay, 'tokvictim')).user;
    claims = await genuineClaims(relay, victim);
    const jwks = { keys: [attackerKeyPair('RS256').publicKey.export({ format: 'jwk' })] };
    attackerServer = createServer((_request, response) => {
      attackerRequests++;
      response.setHeader('content-type', 'application/json');
      response.end(JSON.stringify(jwks));
    });
    await new Promise<void>((resolve) => attackerServer.listen(0, '127.0.0.1', resolve));
    attackerUrl = `http://127.0.0.1:${(attackerServer.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    for (const socket of open) socket.terminate();
    await new Promise((resolve) => attackerServer?.close(resolve));
    await relay?.close();
  });

  /** The genuine claims with `changes` applied; a change to `undefined` removes the claim. */
  const claimsWith = (changes: Claims): Claims => {
    const changed: Claims = { ...claims, ...changes };
    for (const [name, value] of Object.entries(changes)) if (value === undefined) delete changed[name];
    return changed;
  };
  const relaySigned = (changes: Claims = {}) => hmacToken(TEST_JWT_SECRET, claimsWith(changes));
  const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
  const me = (token: string, path = '/v1/auth/me') => httpJson(relay, 'GET', path, { token });
  const connect = async (token: string) => {
    const client = await connectWs(relay.wsUrl, token);
    open.push(client.socket);
    return client;
  };

  /** Forged tokens: [the attack, how to forge it, the code it is refused with]. */
  const forgeries: Array<[string, ErrorCode, () => string]> = [
    ['a token that expired a minute ago', ErrorCode.TokenExpired, () => relaySigned({ iat: nowSeconds() - 120, exp: nowSeconds() - 60 })],
    ['a token not valid before an hour from now (nbf)', ErrorCode.InvalidToken, () => relaySigned({ nbf: nowSeconds() + 3600 })],
    ['a token for another audience', ErrorCode.InvalidToken, () => relaySigned({ aud: 'another-service' })],
    ['a token with no audience', ErrorCode.InvalidToken, () => relaySigned({ aud: undefined })],
    ['a token of another issuer', ErrorCode.InvalidToken, () => relaySigned({ iss: 'another-issuer' })],
    ['a token with no issuer', ErrorCode.InvalidToken, () => relaySigned({ iss: undefined })],
    ['a token with no exp', ErrorCode.InvalidToken, () => relaySigned({ exp: undefined })],
    ['a token whose exp is a string', ErrorCode.InvalidToken, () => relaySigned({ exp: String(nowSeconds() + 60) })],
    ['an alg none token with an empty signature part', ErrorCode.InvalidToken, () => unsignedToken(claims)],
    ['an alg none token of two parts', ErrorCode.InvalidToken, () => unsignedToken(claims, null)],
    ['an alg none token carrying the signature of a genuine token', ErrorCode.InvalidToken, () => unsignedToken(claims, signatureOf(relaySigned()))],
    ['an alg NONE (upper case) token carrying a genuine signature', ErrorCode.InvalidToken, () => unsignedToken(claims, signatureOf(relaySigned()), 'NONE')],
    ["an HS384 token signed with the relay's own secret", ErrorCode.InvalidToken, () => hmacToken(TEST_JWT_SECRET, claims, 'HS384')],
    ["an HS512 token signed with the relay's own secret", ErrorCode.InvalidToken, () => hmacToken(TEST_JWT_SECRET, claims, 'HS512')],
    ["an HS256 signature under the relay's secret in a token whose header says RS256", ErrorCode.InvalidToken, () => hmacToken(TEST_JWT_SECRET, claims, 'HS256', { alg: 'RS256' })],
    ['an RS256 token signed with a key pair the attacker generated', ErrorCode.InvalidToken, () => asymmetricToken('RS256', claims)],
    ['a PS256 token signed with a key pair the attacker generated', ErrorCode.InvalidToken, () => asymmetricToken('PS256', claims)],
    ['an ES256 token signed with a key pair the attacker generated', ErrorCode.InvalidToken, () => asymmetricToken('ES256', claims)],
    ['an EdDSA token signed with a key pair the attacker generated', ErrorCode.InvalidToken, () => asymmetricToken('EdDSA', claims)],
    ['an RS256 token carrying its own public key (jwk header)', ErrorCode.InvalidToken, () => {
        const keys = attackerKeyPair('RS256');
        return asymmetricToken('RS256', claims, { jwk: keys.publicKey.export({ format: 'jwk' }) }, keys);
      }],
    ['an RS256 token whose jku header points at a key set the attacker serves', ErrorCode.InvalidToken, () => asymmetricToken('RS256', claims, { jku: `${attackerUrl}/jwks.json` })],
    ['an RS256 token whose x5u header points at a certificate URL the attacker serves', ErrorCode.InvalidToken, () => asymmetricToken('RS256', claims, { x5u: `${attackerUrl}/cert.pem` })],
    ['an HS256 token whose kid points at a key URL, signed with the attacker\'s secret', ErrorCode.InvalidToken, () => hmacToken('attacker-secret-'.repeat(3), claims, 'HS256', { kid: `${attackerUrl}/key` })],
    ['an HS256 token whose kid is a path to /dev/null, signed with an empty secret', ErrorCode.InvalidToken, () => hmacToken('', claims, 'HS256', { kid: '../../../../../../dev/null' })],
    ['an HS256 token signed with another secret', ErrorCode.InvalidToken, () => hmacToken('another-secret-of-48-characters-0123456789abcdef', claims)],
    ["claims of the wrong type under the relay's secret: dev as a string", ErrorCode.InvalidToken, () => relaySigned({ dev: String(victim.deviceId) })],
    ["claims of the wrong type under the relay's secret: dev 0", ErrorCode.InvalidToken, () => relaySigned({ dev: 0 })],
    ["claims of the wrong type under the relay's secret: dev 1.5", ErrorCode.InvalidToken, () => relaySigned({ dev: 1.5 })],
    ["claims of the wrong type under the relay's secret: sub not a UUID", ErrorCode.InvalidToken, () => relaySigned({ sub: victim.username })],
    ["claims of the wrong type under the relay's secret: no sub", ErrorCode.InvalidToken, () => relaySigned({ sub: undefined })],
    ["claims of the wrong type under the relay's secret: did not a UUID", ErrorCode.InvalidToken, () => relaySigned({ did: '1' })],
    ["claims of the wrong type under the relay's secret: no did", ErrorCode.InvalidToken, () => relaySigned({ did: undefined })],
    ["claims of the wrong type under the relay's secret: cv as a string", ErrorCode.InvalidToken, () => relaySigned({ cv: '0' })],
    ["claims of the wrong type under the relay's secret: no usr", ErrorCode.InvalidToken, () => relaySigned({ usr: undefined })],
    ['garbage', ErrorCode.InvalidToken, () => 'garbage'],
    ['three empty parts', ErrorCode.InvalidToken, () => '..'],
    ['a header that is not JSON', ErrorCode.InvalidToken, () => `${base64url('not json')}.${base64url(claims)}.${signatureOf(relaySigned())}`],
    ['a token of 6 KB', ErrorCode.InvalidToken, () => `${relaySigned()}${'A'.repeat(6000)}`],
  ];

  it("the forger's baseline, HS256 under the relay's secret with every claim right: accepted on HTTP and at the handshake, so each refusal below is the one thing its row changes", async () => {
    const token = relaySigned();
    const served = await me(token);
    expect([served.status, served.body.accountId, served.body.deviceId]).toEqual([200, victim.accountId, victim.deviceId]);
    const client = await connect(token);
    await waitForFrame(client, (frame) => frame.type === ServerFrameType.QueueEmpty);
    client.socket.close();
  });

  describe('at the WebSocket handshake', () => {
    it.each(forgeries)('%s: the upgrade is refused with HTTP 401 and %s', async (_attack, code, forge) => {
      const refusal = await refusedUpgrade(relay.wsUrl, bearer(forge()));
      expect(refusal.status).toBe(401);
      expect(refusal.body).toEqual({ code, message: expect.any(String) });
    });
  });

  describe('on HTTP', () => {
    it.each(forgeries)('%s: GET /v1/auth/me answers 401 and %s', async (_attack, code, forge) => {
      const refused = await me(forge());
      expect([refused.status, refused.body.code]).toEqual([401, code]);
    });

    it('a forged token (alg none, and HS256 under another secret) on every bearer route of the OpenAPI document: each answers 401 INVALID_TOKEN before doing anything', async () => {
      const document = (await httpJson<{ paths: Record<string, Record<string, { security?: unknown[] }>> }>(relay, 'GET', '/v1/openapi.json')).body;
      const bearerRoutes = Object.entries(document.paths).flatMap(([path, item]) =>
        Object.entries(item)
          .filter(([, operation]) => (operation.security ?? []).length > 0)
          .map(([method, _operation]) => [method.toUpperCase(), path] as const),
      );
      expect(bearerRoutes.length).toBeGreaterThanOrEqual(15);
      const before = await relay.sql<{ n: number }>('SELECT (SELECT count(*) FROM messages)::int + (SELECT count(*) FROM backups)::int + (SELECT count(*) FROM one_time_prekeys)::int AS n');
      for (const [method, template] of bearerRoutes) {
        const path = template
          .replace('{username}', victim.username)
          .replace('{accountId}', victim.accountId)
          .replace('{deviceId}', '2')
          .replace('{id}', '00000000-0000-4000-8000-000000000000');
        for (const token of [unsignedToken(claims), hmacToken('another-secret-of-48-characters-0123456789abcdef', claims)]) {
          const refused = await httpJson(relay, method, path, { token, body: method === 'GET' || method === 'DELETE' ? undefined : {} });
          expect({ route: `${method} ${template}`, status: refused.status, code: refused.body?.code }).toEqual({
            route: `${method} ${template}`,
            status: 401,
            code: ErrorCode.InvalidToken,
          });
        }
      }
      const after = await relay.sql<{ n: number }>('SELECT (SELECT count(*) FROM messages)::int + (SELECT count(*) FROM backups)::int + (SELECT count(*) FROM one_time_prekeys)::int AS n');
      expect(after).toEqual(before);
    });

    it(`a genuine token with one base64url character changed anywhere (fast-check, seed ${SEED}): 401 INVALID_TOKEN every time`, async () => {
      const genuine = relaySigned();
      const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
      const positions = [...genuine].flatMap((char, index) => (char === '.' ? [] : [index]));
      await fc.assert(
        fc.asyncProperty(fc.constantFrom(...positions), fc.integer({ min: 1, max: alphabet.length - 1 }), async (position, shift) => {
          const replacement = alphabet[(alphabet.indexOf(genuine[position]!) + shift) % alphabet.length]!;
          const mutated = `${genuine.slice(0, position)}${replacement}${genuine.slice(position + 1)}`;
          const refused = await me(mutated);
          expect([refused.status, refused.body.code]).toEqual([401, ErrorCode.InvalidToken]);
        }),
        { seed: SEED, numRuns: 40 },
      );
    });
  });

  it('tokens whose jku, x5u or kid point at the attacker: the relay never fetches from there', async () => {
    const pointing = forgeries.filter(([attack]) => /jku|x5u|kid points at a key URL/.test(attack));
    expect(pointing).toHaveLength(3);
    for (const [, , forge] of pointing) {
      expect((await me(forge())).status).toBe(401);
      expect((await refusedUpgrade(relay.wsUrl, bearer(forge()))).status).toBe(401);
    }
    // The server is reachable (so a fetch would have been counted), and nothing reached it before this one.
    expect(attackerRequests).toBe(0);
    expect((await fetch(`${attackerUrl}/jwks.json`)).status).toBe(200);
    expect(attackerRequests).toBe(1);
  });

  describe('a genuine token in a place the relay does not read it from', () => {
    const placements: Array<[string, (token: string) => { path: string; headers: Record<string, string> }]> = [
      ['the access_token query parameter', (token) => ({ path: `?access_token=${token}`, headers: {} })],
      ['the token query parameter', (token) => ({ path: `?token=${token}`, headers: {} })],
      ['the Sec-WebSocket-Protocol header', (token) => ({ path: '', headers: { 'sec-websocket-protocol': `bearer, ${token}` } })],
      ['a cookie', (token) => ({ path: '', headers: { cookie: `access_token=${token}; token=${token}` } })],
      ['the Authorization header without a scheme', (token) => ({ path: '', headers: { authorization: token } })],
      ['the Authorization header under the Token scheme', (token) => ({ path: '', headers: { authorization: `Token ${token}` } })],
      ['the Authorization header under the Basic scheme', (token) => ({ path: '', headers: { authorization: `Basic ${Buffer.from(`${victim.username}:${token}`).toString('base64')}` } })],
    ];

    it.each(placements)('a token in %s: the upgrade and GET /v1/auth/me are refused with 401 AUTHENTICATION_REQUIRED', async (_place, place) => {
      const { path, headers } = place(relaySigned());
      const refusal = await refusedUpgrade(`${relay.wsUrl}${path}`, headers);
      expect([refusal.status, (refusal.body as { code: string }).code]).toEqual([401, ErrorCode.AuthenticationRequired]);
      const { 'sec-websocket-protocol': _protocol, ...httpHeaders } = headers;
      const refused = await httpJson(relay, 'GET', `/v1/auth/me${path}`, { headers: httpHeaders });
      expect([refused.status, refused.body.code]).toEqual([401, ErrorCode.AuthenticationRequired]);
    });
  });

  describe('a token whose grant has been taken back', () => {
    const revocations: Array<[string, () => Promise<string>, ErrorCode]> = [
      [
        'a token of an account deleted since',
        async () => {
          const doomed = await registerUser(relay, uniqueUsername('tokdel'));
          const deleted = await httpJson(relay, 'DELETE', '/v1/account', { token: doomed.accessToken, body: { password: DEFAULT_TEST_PASSWORD } });
          expect(deleted.status).toBe(204);
          return doomed.accessToken;
        },
        ErrorCode.InvalidToken,
      ],
      [
        'a token of a device unlinked since',
        async () => {
          const { user, keys } = await registerKeyedUser(relay, 'tokunl');
          const linked = await linkKeyedDevice(relay, user, keys.identity);
          const unlinked = await httpJson(relay, 'DELETE', `/v1/devices/${linked.auth.deviceId}`, { token: user.accessToken });
          expect(unlinked.status).toBe(204);
          return linked.auth.accessToken;
        },
        ErrorCode.DeviceUnlinked,
      ],
      [
        "a token from before the account's password change",
        async () => {
          const user = await registerUser(relay, uniqueUsername('tokpwd'));
          const changed = await httpJson(relay, 'POST', '/v1/auth/password', {
            token: user.accessToken,
            body: { currentPassword: DEFAULT_TEST_PASSWORD, newPassword: 'a new password of the owner' },
          });
          expect(changed.status).toBe(200);
          return user.accessToken;
        },
        ErrorCode.CredentialsChanged,
      ],
    ];

    it.each(revocations.map(([attack, revoked, code]) => [attack, code, revoked] as const))('%s: the upgrade and GET /v1/messages are refused with 401 and %s', async (_attack, code, revoked) => {
      const token = await revoked();
      const refusal = await refusedUpgrade(relay.wsUrl, bearer(token));
      expect([refusal.status, (refusal.body as { code: string }).code]).toEqual([401, code]);
      const refused = await me(token, '/v1/messages');
      expect([refused.status, refused.body.code]).toEqual([401, code]);
    });
  });

  it('a socket kept open past its token\'s expiry: closed with 4401, and messages sent to its device meanwhile and after stay queued until it reconnects with a fresh token', async () => {
    const { user: owner } = await registerKeyedUser(relay, 'tokexp');
    const { user: sender } = await registerKeyedUser(relay, 'toksnd');
    const [ownerKeys] = await relay.sql<{ registration_id: number }>(
      'SELECT registration_id FROM devices WHERE account_id = $1::uuid AND device_id = 1',
      owner.accountId,
    );
    const send = async (text: string) => {
      const sent = await httpJson(relay, 'POST', '/v1/messages', {
        token: sender.accessToken,
        body: { to: owner.username, messages: [{ deviceId: 1, registrationId: ownerKeys!.registration_id, type: EnvelopeType.Signal, ciphertext: Buffer.from(text).toString('base64') }] },
      });
      expect(sent.status).toBe(201);
    };
    const textOf = (envelope: Envelope) => Buffer.from(envelope.ciphertext, 'base64').toString();

    const shortLived = hmacToken(TEST_JWT_SECRET, { ...(await genuineClaims(relay, owner)), exp: nowSeconds() + 2 });
    const client: WsClient = await connect(shortLived);
    await waitForFrame(client, (frame) => frame.type === ServerFrameType.QueueEmpty);
    await send('while open');
    // Delivered, and not acked: it must stay queued.
    await waitForFrame<MessageFrame>(client, (frame) => frame.type === ServerFrameType.Message && textOf(frame.envelope) === 'while open');
    expect(await waitForClose(client.socket, 5000)).toEqual({ code: CloseCode.TokenExpired, reason: ErrorCode.TokenExpired });
    await send('after the close');

    expect((await me(shortLived, '/v1/messages')).body.code).toBe(ErrorCode.TokenExpired);
    const queued = await relay.sql<{ n: number }>(
      'SELECT count(*)::int AS n FROM messages m JOIN devices d ON d.id = m.recipient_device_row_id WHERE d.account_id = $1::uuid',
      owner.accountId,
    );
    expect(queued).toEqual([{ n: 2 }]);

    const fresh = await httpJson<AuthResponse>(relay, 'POST', '/v1/auth/login', { body: { username: owner.username, password: DEFAULT_TEST_PASSWORD } });
    const again = await connect(fresh.body.accessToken);
    await waitForFrame(again, (frame) => frame.type === ServerFrameType.QueueEmpty);
    const texts = again.frames.flatMap((frame) => (frame.type === ServerFrameType.Message ? [textOf(frame.envelope)] : []));
    expect(texts).toEqual(['while open', 'after the close']);
  });

  describe('refresh tokens', () => {
    it('a stolen refresh token redeemed by the thief and the owner at the same moment (5 at once): exactly one redemption gets a pair, the others are INVALID_REFRESH_TOKEN', async () => {
      const owner = await registerUser(relay, uniqueUsername('tokrace'));
      const answers = await Promise.all(
        Array.from({ length: 5 }, () => httpJson(relay, 'POST', '/v1/auth/refresh', { body: { refreshToken: owner.refreshToken } })),
      );
      expect(answers.map((answer) => answer.status).sort()).toEqual([200, 401, 401, 401, 401]);
      for (const answer of answers.filter((a) => a.status === 401)) expect(answer.body.code).toBe(ErrorCode.InvalidRefreshToken);
    });

    it('refresh tokens of a device unlinked since, of an account deleted since, and from before a password change: each is INVALID_REFRESH_TOKEN', async () => {
      const { user, keys } = await registerKeyedUser(relay, 'tokrfu');
      const linked = await linkKeyedDevice(relay, user, keys.identity);
      expect((await httpJson(relay, 'DELETE', `/v1/devices/${linked.auth.deviceId}`, { token: user.accessToken })).status).toBe(204);

      const doomed = await registerUser(relay, uniqueUsername('tokrfd'));
      expect((await httpJson(relay, 'DELETE', '/v1/account', { token: doomed.accessToken, body: { password: DEFAULT_TEST_PASSWORD } })).status).toBe(204);

      const changer = await registerUser(relay, uniqueUsername('tokrfp'));
      const changed = await httpJson(relay, 'POST', '/v1/auth/password', {
        token: changer.accessToken,
        body: { currentPassword: DEFAULT_TEST_PASSWORD, newPassword: 'a new password of the owner' },
      });
      expect(changed.status).toBe(200);

      for (const refreshToken of [linked.auth.refreshToken, doomed.refreshToken, changer.refreshToken]) {
        const refused = await httpJson(relay, 'POST', '/v1/auth/refresh', { body: { refreshToken } });
        expect([refused.status, refused.body.code]).toEqual([401, ErrorCode.InvalidRefreshToken]);
      }
    });

    it('an access token presented as a refresh token, and a refresh token as an access token: 400 VALIDATION_FAILED (not the shape of a refresh token) and 401 INVALID_TOKEN', async () => {
      const owner = await registerUser(relay, uniqueUsername('tokswap'));
      const asRefresh = await httpJson(relay, 'POST', '/v1/auth/refresh', { body: { refreshToken: owner.accessToken } });
      expect([asRefresh.status, asRefresh.body.code]).toEqual([400, ErrorCode.ValidationFailed]);
      const asAccess = await me(owner.refreshToken);
      expect([asAccess.status, asAccess.body.code]).toEqual([401, ErrorCode.InvalidToken]);
      const refusal = await refusedUpgrade(relay.wsUrl, bearer(owner.refreshToken));
      expect([refusal.status, (refusal.body as { code: string }).code]).toEqual([401, ErrorCode.InvalidToken]);
      // Neither attempt used the refresh token up.
      expect((await httpJson(relay, 'POST', '/v1/auth/refresh', { body: { refreshToken: owner.refreshToken } })).status).toBe(200);
    });
  });
});


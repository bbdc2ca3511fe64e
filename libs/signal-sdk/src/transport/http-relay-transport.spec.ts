import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { ErrorCode } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { HttpRelayTransport } from './http-relay-transport.js';
import { RetryAfterMemory } from './retry-after.js';
import { failure } from '../test-support/spec-helpers.js';

/** What the stand-in server saw of each request. */
interface Seen {
  method: string;
  url: string;
  authorization?: string;
  body: unknown;
}

let server: Server;
let baseUrl: string;
const seen: Seen[] = [];
/** The next answer: status, JSON body, headers. */
let answer: { status: number; body?: unknown; headers?: Record<string, string> } = { status: 204 };

beforeAll(async () => {
  server = createServer((request: IncomingMessage, response: ServerResponse) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      seen.push({ method: request.method!, url: request.url!, authorization: request.headers.authorization, body: text ? JSON.parse(text) : undefined });
      response.writeHead(answer.status, { 'content-type': 'application/json', ...answer.headers });
      response.end(answer.body === undefined ? '' : JSON.stringify(answer.body));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
});

describe('HttpRelayTransport', () => {
  it('surfaces RATE_LIMITED with the retryAfter of the body, else of the Retry-After header', async () => {
    const transport = new HttpRelayTransport(baseUrl);
    answer = { status: 429, body: { code: ErrorCode.RateLimited, message: 'slow down', retryAfter: 42 }, headers: { 'retry-after': '7' } };
    const fromBody = await failure(transport.getPreKeyBundle('token', 'bob'));
    expect(fromBody).toMatchObject({ code: SecureChatErrorCode.RelayRejected, relayCode: ErrorCode.RateLimited, status: 429, retryAfter: 42 });

    answer = { status: 429, body: { code: ErrorCode.RateLimited, message: 'slow down' }, headers: { 'retry-after': '7' } };
    expect((await failure(transport.getPreKeyBundle('token', 'bob'))).retryAfter).toBe(7);

    answer = { status: 429, body: { code: ErrorCode.RateLimited, message: 'slow down' }, headers: { 'retry-after': 'Wed, 21 Oct 2015 07:28:00 GMT' } };
    expect((await failure(transport.getPreKeyBundle('token', 'bob'))).retryAfter).toBeUndefined();
  });

  it('changes the password with POST /v1/auth/password and deletes the account with DELETE /v1/account, bodies as the protocol says', async () => {
    const transport = new HttpRelayTransport(baseUrl);
    const auth = { accountId: 'a', username: 'alice', deviceId: 1, accessToken: 'new', expiresIn: 900, refreshToken: 'r' };
    answer = { status: 200, body: auth };
    seen.length = 0;
    await expect(transport.changePassword('old-token', { currentPassword: 'current one', newPassword: 'the new one' })).resolves.toEqual(auth);
    answer = { status: 204 };
    await transport.deleteAccount('new', { password: 'the new one' });
    expect(seen).toEqual([
      { method: 'POST', url: '/v1/auth/password', authorization: 'Bearer old-token', body: { currentPassword: 'current one', newPassword: 'the new one' } },
      { method: 'DELETE', url: '/v1/account', authorization: 'Bearer new', body: { password: 'the new one' } },
    ]);
  });
});

describe('RetryAfterMemory', () => {
  it('refuses locally, with the seconds left, until the time the relay named has passed; per key', () => {
    const clock = { now: 1_000_000 };
    const memory = new RetryAfterMemory(() => clock.now);
    memory.remember('bob', new SecureChatError(SecureChatErrorCode.RelayRejected, 'x', { relayCode: ErrorCode.RateLimited, retryAfter: 5 }));
    memory.remember('carol', new SecureChatError(SecureChatErrorCode.RelayRejected, 'x', { relayCode: ErrorCode.UnknownRecipient }));
    expect(() => memory.assertReady('carol')).not.toThrow();
    clock.now += 1_500;
    expect(() => memory.assertReady('bob')).toThrow(expect.objectContaining({ relayCode: ErrorCode.RateLimited, retryAfter: 4 }));
    clock.now += 3_500;
    expect(() => memory.assertReady('bob')).not.toThrow();
  });

  it('holds back a default 60 s when the relay named no time', () => {
    const clock = { now: 0 };
    const memory = new RetryAfterMemory(() => clock.now);
    memory.remember('bob', new SecureChatError(SecureChatErrorCode.RelayRejected, 'x', { relayCode: ErrorCode.RateLimited }));
    clock.now += 59_999;
    expect(() => memory.assertReady('bob')).toThrow(expect.objectContaining({ retryAfter: 1 }));
    clock.now += 1;
    expect(() => memory.assertReady('bob')).not.toThrow();
  });
});

import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { ChatEvent, SecureChatClient, generateRecoverySecret, type BackupKdfParams, type IncomingMessage } from '@chat/signal-sdk';
import { createMemoryStores } from '@chat/signal-sdk/testing';
import WebSocket from 'ws';
import { DEFAULT_TEST_PASSWORD, startTestRelay, uniqueUsername, type TestRelay } from './support/test-relay.js';
import { until } from './support/wait.js';

// Issue 7, acceptance 3 (logs): a whole conversation (register, keys, sends
// both ways, a sealed send, a backup) through SDK clients, with the relay
// logging at debug. Every secret that crossed the wire (recorded at the
// SDK's fetch and WebSocket: tokens, password, key material, access keys,
// ciphertexts, the backup) is absent from the log, which is JSON lines, and every
// request line carries a request id.

const TEST_KDF: BackupKdfParams = { logN: 10, r: 8, p: 1 };

/** What a log line can hold without naming anything: base64, base64url and JWT runs of 20 characters or more are what secrets look like. */
const SECRET_LIKE = /^[A-Za-z0-9+/=_.-]{20,}$/;

describe('relay logs', () => {
  let relay: TestRelay;
  let log = '';
  const restores: Array<() => void> = [];
  const clients: SecureChatClient[] = [];
  /** Every secret-looking value the SDK sent or got over HTTP, with where it was. */
  const secrets = new Map<string, string>();

  const collect = (value: unknown, where: string): void => {
    if (typeof value === 'string') {
      if (SECRET_LIKE.test(value) && !secrets.has(value)) secrets.set(value, where);
    } else if (Array.isArray(value)) value.forEach((inner) => collect(inner, where));
    else if (value && typeof value === 'object') for (const [key, inner] of Object.entries(value)) collect(inner, `${where}.${key}`);
  };
  const collectJson = (text: string, where: string) => {
    try {
      collect(JSON.parse(text), where);
    } catch {
      // Not JSON (an empty answer).
    }
  };

  beforeAll(async () => {
    for (const stream of [process.stdout, process.stderr]) {
      const write = stream.write.bind(stream) as (chunk: string | Uint8Array, ...rest: unknown[]) => boolean;
      const original = stream.write;
      restores.push(() => {
        stream.write = original;
      });
      stream.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
        log += typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString();
        return write(chunk, ...rest);
      }) as NodeJS.WriteStream['write'];
    }
    // The SDK's HTTP transport uses the global fetch: record what it sends and what it gets.
    const originalFetch = globalThis.fetch;
    restores.push(() => {
      globalThis.fetch = originalFetch;
    });
    globalThis.fetch = async (input, init) => {
      const where = `${init?.method ?? 'GET'} ${String(input)}`;
      const headers = new Headers(init?.headers);
      for (const [name, value] of headers) {
        if (name === 'authorization') collect(value.replace(/^Bearer /, ''), `${where} authorization`);
        else if (name !== 'content-type') collect(value, `${where} ${name}`);
      }
      if (typeof init?.body === 'string') collectJson(init.body, `${where} request`);
      const response = await originalFetch(input, init);
      collectJson(await response.clone().text(), `${where} answer`);
      return response;
    };
    // Authenticated sends and acks go over the SDK's WebSocket (the ws package): record its frames too.
    const originalSend = WebSocket.prototype.send;
    restores.push(() => {
      WebSocket.prototype.send = originalSend;
    });
    WebSocket.prototype.send = function (this: WebSocket, data: unknown, ...rest: unknown[]) {
      if (typeof data === 'string') collectJson(data, 'ws send');
      return (originalSend as (...args: unknown[]) => void).call(this, data, ...rest);
    } as WebSocket['send'];
    relay = await startTestRelay({ LOG_LEVEL: 'debug' });
  });

  afterAll(async () => {
    for (const client of clients) await client.close();
    await relay?.close();
    for (const restore of restores.reverse()) restore();
  });

  function install(): { client: SecureChatClient; seen: IncomingMessage[] } {
    const client = SecureChatClient.create({
      relayUrl: relay.baseUrl,
      stores: createMemoryStores(),
      trustRoot: relay.trustRoot,
      backupKdf: TEST_KDF,
    });
    clients.push(client);
    const seen: IncomingMessage[] = [];
    client.on(ChatEvent.Message, (message) => void seen.push(message));
    return { client, seen };
  }

  it('holds no token, password, key, access key, ciphertext or backup of a conversation, and a request id on every request line', async () => {
    const logFrom = log.length;
    const alice = install();
    const bob = install();
    const password = `${DEFAULT_TEST_PASSWORD} ${uniqueUsername('pw')}`;
    await alice.client.register(uniqueUsername('alice'), password);
    await bob.client.register(uniqueUsername('bob'), password);
    await Promise.all([alice.client.connect(), bob.client.connect()]);

    // Authenticated first messages carry the profile keys; after them the SDK sends sealed.
    await alice.client.send(bob.client.username!, 'hello bob');
    await until(() => bob.seen.length === 1, 'bob to get the first message');
    await bob.client.send(alice.client.username!, 'hello alice');
    await until(() => alice.seen.length === 1, 'alice to get the reply');
    await alice.client.send(bob.client.username!, 'now sealed');
    await until(() => bob.seen.length === 2, 'bob to get the sealed message');
    await alice.client.createBackup(generateRecoverySecret());

    const conversation = log.slice(logFrom);
    const sealedSends = [...secrets.values()].filter((where) => where.includes('/v1/messages/sealed request'));
    // The recording saw what the test claims: tokens, keys, ciphertexts of both kinds of send, the backup.
    expect([...secrets.values()].some((where) => where.endsWith('answer.accessToken'))).toBe(true);
    expect([...secrets.values()].some((where) => where.endsWith('answer.refreshToken'))).toBe(true);
    expect([...secrets.values()].some((where) => /PUT \S+\/v1\/keys request/.test(where))).toBe(true);
    expect([...secrets.values()].some((where) => where.includes('unidentified-access request.accessKey'))).toBe(true);
    expect([...secrets.values()].some((where) => where.includes('ws send.message.messages.ciphertext'))).toBe(true);
    expect(sealedSends.length).toBeGreaterThan(0);
    expect([...secrets.values()].some((where) => /\/v1\/backup request/.test(where))).toBe(true);

    const leaked = [...secrets].filter(([secret]) => conversation.includes(secret)).map(([, where]) => where);
    expect(leaked).toEqual([]);
    expect(conversation).not.toContain(password);

    // JSON lines; every request line (one per HTTP request) carries its request id.
    const lines = conversation
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as { requestId?: string; req?: { id?: string }; msg?: string });
    const requestLines = lines.filter((line) => line.req !== undefined);
    expect(requestLines.length).toBeGreaterThan(10);
    for (const line of requestLines) {
      expect(line.requestId).toEqual(expect.any(String));
      expect(line.req?.id).toBe(line.requestId);
    }
    // Route patterns, not paths: the key fetch names no user.
    expect(requestLines.some((line) => line.msg === 'GET /v1/keys/:username 200')).toBe(true);
    expect(conversation).not.toContain(`/v1/keys/${bob.client.username}`);
  });
});

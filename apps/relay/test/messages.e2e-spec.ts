import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import {
  EnvelopeType,
  ErrorCode,
  MAX_CIPHERTEXT_BYTES,
  type AuthResponse,
  type ListMessagesResponse,
} from '@chat/protocol';
import { httpJson, registerKeyedUser, registerUser, startTestRelay, type TestRelay, uniqueUsername } from './support/test-relay.js';

const ciphertext = (text: string) => Buffer.from(text).toString('base64');

describe('messages (e2e)', () => {
  let relay: TestRelay;
  let alice: AuthResponse;
  let bob: AuthResponse;

  /** Registration id of each keyed user's device 1, which every device message must name. */
  const registrationIds = new Map<string, number>();
  const keyedUser = async (prefix: string) => {
    const { user, keys } = await registerKeyedUser(relay, prefix);
    registrationIds.set(user.username, keys.registrationId);
    return user;
  };
  const send = (from: AuthResponse, body: unknown) => httpJson(relay, 'POST', '/v1/messages', { token: from.accessToken, body });
  const list = (user: AuthResponse, query = '') =>
    httpJson<ListMessagesResponse>(relay, 'GET', `/v1/messages${query}`, { token: user.accessToken });
  const ack = (user: AuthResponse, id: string) => httpJson(relay, 'DELETE', `/v1/messages/${id}`, { token: user.accessToken });
  const toBob = (text: string) => ({
    to: bob.username,
    messages: [{ deviceId: 1, registrationId: registrationIds.get(bob.username), type: EnvelopeType.Signal, ciphertext: ciphertext(text) }],
  });

  beforeAll(async () => {
    relay = await startTestRelay();
    alice = await keyedUser('alice');
    bob = await keyedUser('bob');
  });

  afterAll(async () => {
    await relay?.close();
  });

  it('stores a sent message as opaque bytes and lists it oldest first with its sender from the token', async () => {
    const before = Date.now();
    const first = await send(alice, toBob('first'));
    expect(first.status).toBe(201);
    expect(first.body.serverTimestamp).toBeGreaterThanOrEqual(before - 5);
    await send(alice, toBob('second'));

    const { status, body } = await list(bob);
    expect(status).toBe(200);
    expect(body.more).toBe(false);
    expect(body.messages.map((m) => Buffer.from(m.ciphertext, 'base64').toString())).toEqual(['first', 'second']);
    expect(body.messages[0]).toEqual({
      id: expect.stringMatching(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/) as unknown as string,
      source: alice.username,
      sourceDevice: 1,
      sourceAccountId: alice.accountId,
      type: EnvelopeType.Signal,
      ciphertext: ciphertext('first'),
      serverTimestamp: first.body.serverTimestamp,
    });
    const [row] = await relay.sql<{ ciphertext: Uint8Array }>('SELECT ciphertext FROM messages WHERE id = $1::uuid', body.messages[0]!.id);
    expect(Buffer.from(row!.ciphertext).toString()).toBe('first');

    for (const message of body.messages) expect((await ack(bob, message.id)).status).toBe(204);
    expect((await list(bob)).body.messages).toEqual([]);
  });

  it('pages with limit and says when more are stored', async () => {
    for (const text of ['p1', 'p2', 'p3']) expect((await send(alice, toBob(text))).status).toBe(201);
    const page = await list(bob, '?limit=2');
    expect(page.body.more).toBe(true);
    expect(page.body.messages.map((m) => Buffer.from(m.ciphertext, 'base64').toString())).toEqual(['p1', 'p2']);
    expect((await list(bob, '?limit=0')).body.code).toBe(ErrorCode.ValidationFailed);
    for (const message of (await list(bob)).body.messages) await ack(bob, message.id);
  });

  it("refuses to ack another device's message with MESSAGE_NOT_FOUND and keeps the message", async () => {
    await send(alice, toBob('for bob only'));
    const [message] = (await list(bob)).body.messages;
    expect((await list(alice)).body.messages).toEqual([]);
    const { status, body } = await ack(alice, message!.id);
    expect(status).toBe(404);
    expect(body.code).toBe(ErrorCode.MessageNotFound);
    expect((await list(bob)).body.messages.map((m) => m.id)).toEqual([message!.id]);
    expect((await ack(bob, message!.id)).status).toBe(204);
    expect((await ack(bob, message!.id)).body.code).toBe(ErrorCode.MessageNotFound);
    expect((await ack(bob, 'not-a-uuid')).body.code).toBe(ErrorCode.ValidationFailed);
  });

  it('refuses an unknown recipient and one without keys with UNKNOWN_RECIPIENT', async () => {
    const unknown = await send(alice, { ...toBob('x'), to: uniqueUsername('ghost') });
    expect(unknown.status).toBe(404);
    expect(unknown.body.code).toBe(ErrorCode.UnknownRecipient);
    const keyless = await registerUser(relay, uniqueUsername('keyless'));
    expect((await send(alice, { ...toBob('x'), to: keyless.username })).body.code).toBe(ErrorCode.UnknownRecipient);
  });

  it('refuses a send that does not address exactly the recipient devices with MISMATCHED_DEVICES', async () => {
    const extra = await send(alice, {
      to: bob.username,
      messages: [1, 2].map((deviceId) => ({ deviceId, registrationId: registrationIds.get(bob.username), type: EnvelopeType.Signal, ciphertext: ciphertext('x') })),
    });
    expect(extra.status).toBe(409);
    expect(extra.body).toEqual({
      code: ErrorCode.MismatchedDevices,
      message: expect.any(String),
      details: ['extra: 2'],
      mismatched: [{ username: bob.username, missing: [], extra: [2] }],
    });

    const wrong = await send(alice, { ...toBob('x'), messages: [{ deviceId: 3, registrationId: 1, type: EnvelopeType.Signal, ciphertext: ciphertext('x') }] });
    expect(wrong.body).toMatchObject({
      code: ErrorCode.MismatchedDevices,
      details: ['missing: 1', 'extra: 3'],
      mismatched: [{ username: bob.username, missing: [1], extra: [3] }],
    });
    expect((await list(bob)).body.messages).toEqual([]);
  });

  it('refuses a device message without its registration id with VALIDATION_FAILED', async () => {
    const { registrationId: _omitted, ...withoutRegistrationId } = toBob('x').messages[0]!;
    const { status, body } = await send(alice, { to: bob.username, messages: [withoutRegistrationId] });
    expect(status).toBe(400);
    expect(body.code).toBe(ErrorCode.ValidationFailed);
    expect(body.details.join('\n')).toContain('registrationId');
  });

  it('refuses a ciphertext over the limit with VALIDATION_FAILED', async () => {
    const big = Buffer.alloc(MAX_CIPHERTEXT_BYTES + 1, 1).toString('base64');
    const { status, body } = await send(alice, { to: bob.username, messages: [{ ...toBob('x').messages[0], ciphertext: big }] });
    expect(status).toBe(400);
    expect(body.code).toBe(ErrorCode.ValidationFailed);
    expect(body.details.join('\n')).toContain('ciphertext');
  });

  it('takes the sender from the token only: a body `source` field is refused', async () => {
    const { status, body } = await send(alice, { ...toBob('spoof'), source: bob.username });
    expect(status).toBe(400);
    expect(body.code).toBe(ErrorCode.ValidationFailed);
    expect((await list(bob)).body.messages).toEqual([]);
  });

  it('requires a token', async () => {
    const { status, body } = await httpJson(relay, 'POST', '/v1/messages', { body: toBob('anonymous') });
    expect(status).toBe(401);
    expect(body.code).toBe(ErrorCode.AuthenticationRequired);
  });
});

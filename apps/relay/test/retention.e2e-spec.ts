import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { EnvelopeType, type AuthResponse } from '@chat/protocol';
import { Clock } from '../src/common/clock.js';
import { MessagesModule } from '../src/messages/messages.module.js';
import { RetentionService } from '../src/messages/retention.service.js';
import { DeviceKeys } from './support/libsignal-keys.js';
import { httpJson, registerUser, startTestRelay, uniqueUsername, type TestRelay } from './support/test-relay.js';

const DAY_MS = 24 * 60 * 60 * 1000;
const RETENTION_DAYS = 30;

describe('retention sweep (e2e)', () => {
  let relay: TestRelay;
  let alice: AuthResponse;
  let bob: AuthResponse;
  let bobRegistrationId: number;

  beforeAll(async () => {
    // The scheduled sweep (hourly by default) does not run during these tests; they call sweep().
    relay = await startTestRelay({ MESSAGE_RETENTION_DAYS: String(RETENTION_DAYS) });
    alice = await registerUser(relay, uniqueUsername('alice'));
    bob = await registerUser(relay, uniqueUsername('bob'));
    const keys = new DeviceKeys();
    bobRegistrationId = keys.registrationId;
    expect((await httpJson(relay, 'PUT', '/v1/keys', { token: bob.accessToken, body: keys.uploadRequest() })).status).toBe(204);
  });

  afterAll(async () => {
    await relay?.close();
  });

  const send = async (text: string, id?: string) => {
    const { status, body } = await httpJson(relay, 'POST', '/v1/messages', {
      token: alice.accessToken,
      body: { id, to: bob.username, messages: [{ deviceId: 1, registrationId: bobRegistrationId, type: EnvelopeType.Signal, ciphertext: Buffer.from(text).toString('base64') }] },
    });
    expect(status).toBe(201);
    return body.serverTimestamp as number;
  };
  const queuedTexts = async () =>
    (
      await relay.sql<{ ciphertext: Uint8Array }>(
        'SELECT m.ciphertext FROM messages m JOIN devices d ON d.id = m.recipient_device_row_id WHERE d.account_id = $1::uuid ORDER BY m.seq',
        bob.accountId,
      )
    ).map((row) => Buffer.from(row.ciphertext).toString());
  const age = async (days: number, text: string, requestId?: string) => {
    const when = new Date(Date.now() - days * DAY_MS);
    await relay.sql('UPDATE messages SET server_timestamp = $1 WHERE ciphertext = $2', when, Buffer.from(text));
    if (requestId) await relay.sql('UPDATE sent_requests SET created_at = $1 WHERE request_id = $2::uuid', when, requestId);
  };
  const sentRequestExists = async (requestId: string) =>
    (await relay.sql('SELECT 1 FROM sent_requests WHERE request_id = $1::uuid', requestId)).length === 1;
  const slot = async (expiresInMs: number) => {
    const id = randomUUID();
    await relay.sql(
      'INSERT INTO provisioning_slots (id, secret_hash, expires_at) VALUES ($1::uuid, $2, $3)',
      id,
      randomBytes(32),
      new Date(Date.now() + expiresInMs),
    );
    return id;
  };
  const slotExists = async (id: string) => (await relay.sql('SELECT 1 FROM provisioning_slots WHERE id = $1::uuid', id)).length === 1;

  it('deletes the answers of sealed sends older than the retention period, and keeps the recent ones', async () => {
    // bob accepts sealed messages from anyone, so the sends need no access key.
    const access = { accessKey: randomBytes(16).toString('base64'), unrestricted: true };
    expect((await httpJson(relay, 'PUT', '/v1/account/unidentified-access', { token: bob.accessToken, body: access })).status).toBe(204);
    const sealedSend = async (id: string) => {
      const { status } = await httpJson(relay, 'POST', '/v1/messages/sealed', {
        body: { id, to: bob.username, messages: [{ deviceId: 1, registrationId: bobRegistrationId, ciphertext: Buffer.from(`sealed ${id}`).toString('base64') }] },
      });
      expect(status).toBe(201);
    };
    const sealedRequestExists = async (requestId: string) =>
      (await relay.sql('SELECT 1 FROM sealed_send_requests WHERE request_id = $1::uuid', requestId)).length === 1;
    const [oldId, recentId] = [randomUUID(), randomUUID()];
    await sealedSend(oldId);
    await sealedSend(recentId);
    await relay.sql('UPDATE sealed_send_requests SET created_at = $1 WHERE request_id = $2::uuid', new Date(Date.now() - (RETENTION_DAYS + 1) * DAY_MS), oldId);

    const result = await relay.app.get(RetentionService).sweep();

    expect(result.sealedSendRequests).toBe(1);
    expect([await sealedRequestExists(oldId), await sealedRequestExists(recentId)]).toEqual([false, true]);
    await relay.sql("DELETE FROM messages WHERE type = 'sealed'");
  });

  it('deletes messages and send answers older than the retention period and expired provisioning slots, and keeps the rest', async () => {
    const [oldId, recentId] = [randomUUID(), randomUUID()];
    await send('old', oldId);
    await send('recent', recentId);
    await send('almost old');
    await age(RETENTION_DAYS + 1, 'old', oldId);
    await age(RETENTION_DAYS - 1, 'almost old');
    const [expired, live] = [await slot(-1000), await slot(600_000)];

    const result = await relay.app.get(RetentionService).sweep();

    expect(result).toEqual({ messages: 1, sentRequests: 1, sealedSendRequests: 0, provisioningSlots: 1 });
    expect(await queuedTexts()).toEqual(['recent', 'almost old']);
    expect([await sentRequestExists(oldId), await sentRequestExists(recentId)]).toEqual([false, true]);
    expect([await slotExists(expired), await slotExists(live)]).toEqual([false, true]);

    // A forgotten id is a new send again; a kept one is still answered from its record.
    await send('old', oldId);
    await send('recent', recentId);
    expect(await queuedTexts()).toEqual(['recent', 'almost old', 'old']);
    await relay.sql('DELETE FROM messages');
  });

  it('measures age against the injectable clock', async () => {
    await send('today');
    const clock = relay.app.select(MessagesModule).get(Clock, { strict: true });
    const later = jest.spyOn(clock, 'now').mockReturnValue(new Date(Date.now() + (RETENTION_DAYS + 1) * DAY_MS));
    try {
      expect((await relay.app.get(RetentionService).sweep()).messages).toBe(1);
    } finally {
      later.mockRestore();
    }
    expect(await queuedTexts()).toEqual([]);
  });

  it('runs by itself every RETENTION_SWEEP_INTERVAL_MS', async () => {
    const scheduled = await startTestRelay({ RETENTION_SWEEP_INTERVAL_MS: '1000' });
    try {
      const expired = randomUUID();
      await scheduled.sql(
        'INSERT INTO provisioning_slots (id, secret_hash, expires_at) VALUES ($1::uuid, $2, $3)',
        expired,
        randomBytes(32),
        new Date(Date.now() - 1000),
      );
      const deadline = Date.now() + 10_000;
      while ((await scheduled.sql('SELECT 1 FROM provisioning_slots WHERE id = $1::uuid', expired)).length > 0) {
        if (Date.now() > deadline) throw new Error('no sweep ran');
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    } finally {
      await scheduled.close();
    }
  });
});

import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { ErrorCode, MAX_BACKUP_BYTES, MAX_HTTP_BODY_BYTES, type AuthResponse, type BackupResponse } from '@chat/protocol';
import { httpJson, registerUser, startTestRelay, uniqueUsername, type TestRelay } from './support/test-relay.js';

describe('backup (e2e)', () => {
  let relay: TestRelay;

  beforeAll(async () => {
    relay = await startTestRelay();
  });

  afterAll(async () => {
    await relay?.close();
  });

  const put = (user: AuthResponse, body: unknown) => httpJson(relay, 'PUT', '/v1/backup', { token: user.accessToken, body });
  const get = (user: AuthResponse) => httpJson<BackupResponse>(relay, 'GET', '/v1/backup', { token: user.accessToken });
  const remove = (user: AuthResponse) => httpJson(relay, 'DELETE', '/v1/backup', { token: user.accessToken });
  const stored = (user: AuthResponse) =>
    relay.sql<{ blob: Uint8Array; updated_at: Date }>('SELECT blob, updated_at FROM backups WHERE account_id = $1::uuid', user.accountId);

  it('stores an upload as bytes, hands it back with its time, replaces it, and deletes it', async () => {
    const alice = await registerUser(relay, uniqueUsername('alice'));
    const first = randomBytes(1000);
    const before = Date.now();
    expect(await put(alice, { blob: first.toString('base64') })).toMatchObject({ status: 204, body: undefined });

    const rows = await stored(alice);
    expect(rows).toHaveLength(1);
    expect(Buffer.from(rows[0]!.blob).equals(first)).toBe(true);
    const fetched = await get(alice);
    expect(fetched.status).toBe(200);
    expect(fetched.body).toEqual({ blob: first.toString('base64'), updatedAt: rows[0]!.updated_at.getTime() });
    expect(fetched.body.updatedAt).toBeGreaterThanOrEqual(before - 1000);

    await new Promise((resolve) => setTimeout(resolve, 5));
    const second = randomBytes(10);
    expect((await put(alice, { blob: second.toString('base64') })).status).toBe(204);
    const replaced = await get(alice);
    expect(replaced.body.blob).toBe(second.toString('base64'));
    expect(replaced.body.updatedAt).toBeGreaterThan(fetched.body.updatedAt);
    expect(await stored(alice)).toHaveLength(1);

    expect(await remove(alice)).toMatchObject({ status: 204, body: undefined });
    const gone = await get(alice);
    expect(gone.status).toBe(404);
    expect(gone.body.code).toBe(ErrorCode.BackupNotFound);
    expect(await stored(alice)).toHaveLength(0);
    expect((await remove(alice)).status).toBe(204);
  });

  it('answers BACKUP_NOT_FOUND to an account that never uploaded one', async () => {
    const user = await registerUser(relay, uniqueUsername('nobackup'));
    const { status, body } = await get(user);
    expect(status).toBe(404);
    expect(body.code).toBe(ErrorCode.BackupNotFound);
  });

  it('accepts a blob of exactly MAX_BACKUP_BYTES and refuses one byte more with VALIDATION_FAILED, keeping the old one', async () => {
    const user = await registerUser(relay, uniqueUsername('big'));
    const largest = randomBytes(MAX_BACKUP_BYTES);
    expect((await put(user, { blob: largest.toString('base64') })).status).toBe(204);

    const tooLarge = await put(user, { blob: randomBytes(MAX_BACKUP_BYTES + 1).toString('base64') });
    expect(tooLarge.status).toBe(400);
    expect(tooLarge.body.code).toBe(ErrorCode.ValidationFailed);
    expect(tooLarge.body.details).toEqual([expect.stringMatching(/^blob: /)]);
    expect((await get(user)).body.blob).toBe(largest.toString('base64'));
  });

  it('refuses a body larger than MAX_HTTP_BODY_BYTES with PAYLOAD_TOO_LARGE', async () => {
    const user = await registerUser(relay, uniqueUsername('huge'));
    const rawBody = JSON.stringify({ blob: randomBytes(MAX_HTTP_BODY_BYTES).toString('base64') });
    const { status, body } = await httpJson(relay, 'PUT', '/v1/backup', { token: user.accessToken, rawBody });
    expect(status).toBe(413);
    expect(body.code).toBe(ErrorCode.PayloadTooLarge);
  });

  it.each([
    ['an empty blob', { blob: '' }],
    ['a blob that is not base64', { blob: 'not base64!' }],
    ['unpadded base64', { blob: 'YWJjZA' }],
    ['a missing blob', {}],
    ['an unknown field', { blob: 'AAAA', accountId: 'x' }],
  ])('refuses %s with VALIDATION_FAILED', async (_what, body) => {
    const user = await registerUser(relay, uniqueUsername('invalid'));
    const answer = await put(user, body);
    expect(answer.status).toBe(400);
    expect(answer.body.code).toBe(ErrorCode.ValidationFailed);
    expect(await stored(user)).toHaveLength(0);
  });

  it("lets each account see only its own backup: another's upload and delete never touch it", async () => {
    const alice = await registerUser(relay, uniqueUsername('alice'));
    const mallory = await registerUser(relay, uniqueUsername('mallory'));
    const aliceBlob = randomBytes(64).toString('base64');
    await put(alice, { blob: aliceBlob });

    expect((await get(mallory)).body.code).toBe(ErrorCode.BackupNotFound);
    await put(mallory, { blob: randomBytes(64).toString('base64') });
    expect((await remove(mallory)).status).toBe(204);
    expect((await get(alice)).body.blob).toBe(aliceBlob);
    expect((await get(mallory)).body.code).toBe(ErrorCode.BackupNotFound);
    // There is no path that names an account.
    expect((await httpJson(relay, 'GET', `/v1/backup/${alice.username}`, { token: mallory.accessToken })).body.code).toBe(
      ErrorCode.NotFound,
    );
    expect((await httpJson(relay, 'GET', `/v1/backup/${alice.accountId}`, { token: mallory.accessToken })).body.code).toBe(
      ErrorCode.NotFound,
    );
  });

  it('goes with its account: deleting the account deletes the backup, and a token of it cannot upload again', async () => {
    const user = await registerUser(relay, uniqueUsername('leaving'));
    await put(user, { blob: 'AAAA' });
    await relay.sql('DELETE FROM accounts WHERE id = $1::uuid', user.accountId);
    expect(await stored(user)).toHaveLength(0);
    const again = await put(user, { blob: 'AAAA' });
    expect(again.status).toBe(401);
    expect(again.body.code).toBe(ErrorCode.InvalidToken);
    expect(await stored(user)).toHaveLength(0);
  });

  it.each(['PUT', 'GET', 'DELETE'])('%s without a token is AUTHENTICATION_REQUIRED, with a forged one INVALID_TOKEN', async (method) => {
    const body = method === 'PUT' ? { blob: 'AAAA' } : undefined;
    const anonymous = await httpJson(relay, method, '/v1/backup', { body });
    expect(anonymous.status).toBe(401);
    expect(anonymous.body.code).toBe(ErrorCode.AuthenticationRequired);
    const forged = await httpJson(relay, method, '/v1/backup', { body, token: 'eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl' });
    expect(forged.status).toBe(401);
    expect(forged.body.code).toBe(ErrorCode.InvalidToken);
  });
});

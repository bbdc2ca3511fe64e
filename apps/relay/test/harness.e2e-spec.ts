import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { httpJson, registerUser, startTestRelay, type TestRelay } from './support/test-relay.js';

describe('e2e harness', () => {
  let relay: TestRelay;

  beforeAll(async () => {
    relay = await startTestRelay();
  });

  afterAll(async () => {
    await relay?.close();
  });

  it('serves the relay on a loopback port with a migrated database', async () => {
    expect(relay.baseUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(relay.wsUrl).toBe(`${relay.baseUrl.replace('http', 'ws')}/v1/ws`);
    const migrations = await relay.sql<{ migration_name: string }>('SELECT migration_name FROM _prisma_migrations');
    expect(migrations.map((row) => row.migration_name)).toContain('20261126000000_init');
  });

  it('registers a user over HTTP and sees its row through sql()', async () => {
    const auth = await registerUser(relay, 'harness_user');
    const rows = await relay.sql<{ username: string }>('SELECT username FROM accounts WHERE id = $1::uuid', auth.accountId);
    expect(rows).toEqual([{ username: 'harness_user' }]);
    const me = await httpJson(relay, 'GET', '/v1/auth/me', { token: auth.accessToken });
    expect(me.status).toBe(200);
    expect(me.body).toMatchObject({ accountId: auth.accountId, username: 'harness_user', deviceId: 1 });
  });
});

import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { PreKeyBundleResponse } from '@chat/protocol';
import { ChatEvent, SecureChatClient, type IncomingMessage, type SecureChatStores } from '@chat/signal-sdk';
import { MessageCollector, createMemoryStores, waitForEvent, waitForMessage } from '@chat/signal-sdk/testing';
import { DEFAULT_TEST_PASSWORD, httpJson, registerUser, startTestRelay, uniqueUsername, type TestRelay } from './support/test-relay.js';

// Whole-chat e2e: the real relay (AppModule) on a real database, SDK clients
// over real HTTP and WebSocket connections.

describe('two SDK clients through the real relay', () => {
  let relay: TestRelay;
  const clients: SecureChatClient[] = [];

  beforeAll(async () => {
    relay = await startTestRelay();
  });

  afterAll(async () => {
    for (const client of clients) await client.close();
    await relay?.close();
  });

  async function newClient(prefix: string, stores: SecureChatStores = createMemoryStores()) {
    const client = SecureChatClient.create({ relayUrl: relay.baseUrl, stores });
    clients.push(client);
    const username = uniqueUsername(prefix);
    await client.register(username, DEFAULT_TEST_PASSWORD);
    return { client, username, stores };
  }

  it('(a) decrypts the first (PreKey) message and replies in both directions', async () => {
    const alice = await newClient('alice');
    const bob = await newClient('bob');
    await Promise.all([alice.client.connect(), bob.client.connect()]);

    const first = waitForMessage(bob.client);
    await alice.client.send(bob.username, 'hello bob, first message');
    const got = await first;
    expect(got.text).toBe('hello bob, first message');
    expect(got.sender).toBe(alice.username);

    for (let i = 0; i < 3; i++) {
      const atAlice = waitForMessage(alice.client);
      await bob.client.send(alice.username, `reply ${i} to alice`);
      expect((await atAlice).text).toBe(`reply ${i} to alice`);
      const atBob = waitForMessage(bob.client);
      await alice.client.send(bob.username, new Uint8Array([i, 1, 2]));
      expect([...(await atBob).body]).toEqual([i, 1, 2]);
    }
  });

  it('(b) delivers a message sent while the recipient was offline on connect, then queueEmpty', async () => {
    const alice = await newClient('alice');
    const bob = await newClient('bob');
    await alice.client.send(bob.username, 'sent while you were away');

    const order: string[] = [];
    bob.client.on(ChatEvent.Message, (m) => void order.push(m.text ?? ''));
    const empty = waitForEvent(bob.client, ChatEvent.QueueEmpty, 10_000);
    bob.client.on(ChatEvent.QueueEmpty, () => order.push('queueEmpty'));
    await bob.client.connect();
    await empty;
    expect(order).toEqual(['sent while you were away', 'queueEmpty']);
    // The auto-ack frame is not answered: wait until the relay has deleted the message from bob's
    // queue (alice's may hold bob's delivery receipt meanwhile).
    const stored = async () =>
      Number(
        (
          await relay.sql<{ n: bigint }>(
            'SELECT count(*) AS n FROM messages m JOIN devices d ON d.id = m.recipient_device_row_id JOIN accounts a ON a.id = d.account_id WHERE a.username = $1',
            bob.username,
          )
        )[0]?.n,
      );
    for (let i = 0; i < 50 && (await stored()) > 0; i++) await new Promise((resolve) => setTimeout(resolve, 50));
    expect(await stored()).toBe(0);
  });

  it('(c) delivers 200 messages in order, each exactly once', async () => {
    const alice = await newClient('alice');
    const bob = await newClient('bob');
    await Promise.all([alice.client.connect(), bob.client.connect()]);
    const collector = new MessageCollector(bob.client);
    for (let i = 0; i < 200; i++) await alice.client.send(bob.username, `seq ${i}`);
    for (let i = 0; i < 200; i++) await collector.next(10_000);
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(collector.received.map((m) => m.text)).toEqual(Array.from({ length: 200 }, (_, i) => `seq ${i}`));
    expect(new Set(collector.received.map((m) => m.id)).size).toBe(200);
    collector.stop();
  }, 60_000);

  it('(d) stores neither plaintext nor any private key in any relay column', async () => {
    const alice = await newClient('alice');
    const bob = await newClient('bob');
    const plaintexts = ['ZEBRA-QUARTZ-7731 meet at the old mill', 'PLATYPUS-NEBULA-0042 the code is 9981', 'OCELOT-GLACIER-5150'];
    // Some while bob is offline so they sit in the messages table.
    await alice.client.send(bob.username, plaintexts[0]!);
    await bob.client.send(alice.username, plaintexts[1]!);
    await alice.client.send(bob.username, plaintexts[2]!);

    const secrets: Array<{ what: string; bytes: Buffer }> = [];
    for (const { username, stores } of [alice, bob]) {
      const identity = (await stores.identity.getLocalIdentity())!;
      secrets.push({ what: `${username} identity`, bytes: Buffer.from(identity.identityKeyPair.privateKey.serialize()) });
      for (let id = 1; id <= 110; id++) {
        await stores.preKey.getPreKey(id).then(
          (r) => secrets.push({ what: `${username} prekey ${id}`, bytes: Buffer.from(r.privateKey().serialize()) }),
          () => undefined,
        );
        await stores.kyberPreKey.getKyberPreKey(id).then(
          (r) => secrets.push({ what: `${username} kyber ${id}`, bytes: Buffer.from(r.secretKey().serialize()) }),
          () => undefined,
        );
        await stores.signedPreKey.getSignedPreKey(id).then(
          (r) => secrets.push({ what: `${username} signed ${id}`, bytes: Buffer.from(r.privateKey().serialize()) }),
          () => undefined,
        );
      }
    }
    expect(secrets.filter((s) => s.what.includes('signed'))).toHaveLength(2);
    expect(secrets.filter((s) => s.what.includes('kyber')).length).toBeGreaterThan(190);

    const columns = await relay.sql<{ table_name: string; column_name: string; data_type: string }>(
      `SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c
       JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
       WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'
         AND c.data_type IN ('text', 'character varying', 'character', 'bytea', 'json', 'jsonb')`,
    );
    expect(columns.some((c) => c.table_name === 'messages' && c.data_type === 'bytea')).toBe(true);

    const needles = [
      ...plaintexts.map((p) => ({ what: 'plaintext', bytes: Buffer.from(p, 'utf8') })),
      ...plaintexts.map((p) => ({ what: 'plaintext fragment', bytes: Buffer.from(p.slice(0, 12), 'utf8') })),
      ...secrets,
    ];
    let scanned = 0;
    const findings: string[] = [];
    for (const { table_name, column_name, data_type } of columns) {
      const rows = await relay.sql<{ v: unknown }>(`SELECT "${column_name}" AS v FROM "${table_name}" WHERE "${column_name}" IS NOT NULL`);
      for (const { v } of rows) {
        scanned++;
        const raw = data_type === 'bytea' ? Buffer.from(v as Uint8Array) : Buffer.from(typeof v === 'string' ? v : JSON.stringify(v), 'utf8');
        const text = raw.toString('utf8');
        for (const needle of needles) {
          if (
            raw.includes(needle.bytes) ||
            text.includes(needle.bytes.toString('base64')) ||
            text.includes(needle.bytes.toString('base64url')) ||
            text.toLowerCase().includes(needle.bytes.toString('hex'))
          ) {
            findings.push(`${needle.what} in ${table_name}.${column_name}`);
          }
        }
      }
    }
    expect(scanned).toBeGreaterThan(0);
    expect(findings).toEqual([]);
  });

  it('(e) still forms a session after every one-time key of the recipient is drained (last-resort Kyber)', async () => {
    const bob = await newClient('bob');
    const drainer = await registerUser(relay, uniqueUsername('drain'));
    let bundle: PreKeyBundleResponse | undefined;
    for (let i = 0; i < 150; i++) {
      const { status, body } = await httpJson<PreKeyBundleResponse>(relay, 'GET', `/v1/keys/${bob.username}`, { token: drainer.accessToken });
      expect(status).toBe(200);
      bundle = body;
      if (body.devices[0]?.preKey === null) break;
    }
    const device = bundle!.devices[0]!;
    expect(device.preKey).toBeNull();
    // The last-resort key is kept in bob's store after use; a one-time key would be gone.
    await expect(bob.stores.kyberPreKey.getKyberPreKey(device.kyberPreKey.keyId)).resolves.toBeDefined();
    const again = await httpJson<PreKeyBundleResponse>(relay, 'GET', `/v1/keys/${bob.username}`, { token: drainer.accessToken });
    expect(again.body.devices[0]?.kyberPreKey.keyId).toBe(device.kyberPreKey.keyId);

    const carol = await newClient('carol');
    await Promise.all([bob.client.connect(), carol.client.connect()]);
    const atBob = waitForMessage(bob.client, (m: IncomingMessage) => m.sender === carol.username, 10_000);
    await carol.client.send(bob.username, 'hello after the drain');
    expect((await atBob).text).toBe('hello after the drain');
    const atCarol = waitForMessage(carol.client, undefined, 10_000);
    await bob.client.send(carol.username, 'and back');
    expect((await atCarol).text).toBe('and back');
  });
});

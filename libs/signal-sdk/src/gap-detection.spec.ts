import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChatEvent, type IncomingMessage, type MessagesMissing } from './events.js';
import { SecureChatClient } from './secure-chat-client.js';
import { SqliteStores } from './sqlite/sqlite-stores.js';
import { createMemoryStores } from './stores/memory-stores.js';
import type { SecureChatStores } from './stores/stores.js';
import { FakeRelay } from './test-support/fake-relay.js';
import { until } from './test-support/spec-helpers.js';

// Gap detection (docs/architecture.md, "Gap detection") through the whole client, on both kinds of store.

const workDir = mkdtempSync(join(tmpdir(), 'gap-detection-'));
let files = 0;
afterAll(() => rmSync(workDir, { recursive: true, force: true }));

interface StoreKind {
  /** Fresh stores, and a way to open the same ones again (as a restarted app would). */
  create(): Promise<{ stores: SecureChatStores; reopen: () => Promise<SecureChatStores>; close: () => Promise<void> }>;
}

const memory: StoreKind = {
  async create() {
    const stores = createMemoryStores();
    return { stores, reopen: async () => stores, close: async () => undefined };
  },
};

const sqlite: StoreKind = {
  async create() {
    const path = join(workDir, `client-${++files}.db`);
    const open = () => SqliteStores.open({ path, passphrase: 'correct horse battery staple', kdf: { logN: 10, r: 8, p: 1 } });
    let stores = await open();
    return {
      stores,
      reopen: async () => {
        await stores.close();
        stores = await open();
        return stores;
      },
      close: () => stores.close(),
    };
  },
};

describe.each([
  ['memory stores', memory],
  ['SQLite stores', sqlite],
])('gap detection with %s', (_name, kind) => {
  const opened: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const close of opened.splice(0)) await close();
  });

  async function setUp() {
    const relay = new FakeRelay();
    const make = async (name: string) => {
      const held = await kind.create();
      const client = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores: held.stores });
      opened.push(async () => {
        await client.close();
        await held.close();
      });
      await client.register(name, 'correct horse battery');
      return { client, held };
    };
    const alice = await make('alice');
    const bob = await make('bob');
    const shown: IncomingMessage[] = [];
    const missing: MessagesMissing[] = [];
    bob.client.on(ChatEvent.Message, (message) => {
      shown.push(message);
    });
    bob.client.on(ChatEvent.MessagesMissing, (report) => missing.push(report));
    return { relay, alice, bob, shown, missing };
  }

  it('numbers each message to a recipient in one stream, 1, 2, 3, and keeps counting after a restart of the sender', async () => {
    const { relay, alice, bob, shown, missing } = await setUp();
    await bob.client.connect();
    await alice.client.send('bob', 'one');
    await alice.client.send('bob', 'two');
    await until(() => shown.length === 2);

    // The sender starts again on the same stores: the next number follows on.
    await alice.client.close();
    const aliceStores = await alice.held.reopen();
    const restarted = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores: aliceStores });
    opened.push(() => restarted.close());
    await restarted.resume();
    await restarted.send('bob', 'three');
    await until(() => shown.length === 3);

    expect(shown.map((m) => [m.text, m.sequence, m.filledGap])).toEqual([
      ['one', 1, false],
      ['two', 2, false],
      ['three', 3, false],
    ]);
    expect(missing).toEqual([]);
    const stream = await aliceStores.metadata.getSendSequence('bob');
    expect(stream?.number).toBe(3);
  });

  it('a relay withholds a message: the next one reports it missing (sender, device, range), and when it comes late it is flagged and the gap closes', async () => {
    const { relay, alice, bob, shown, missing } = await setUp();
    for (const text of ['m1', 'm2', 'm3', 'm4']) await alice.client.send('bob', text);
    const queue = relay.queueOf('bob');
    expect(queue).toHaveLength(4);
    const [withheld] = queue.splice(1, 1);

    await bob.client.connect();
    await until(() => shown.length === 3);
    expect(shown.map((m) => m.text)).toEqual(['m1', 'm3', 'm4']);
    expect(missing).toEqual([{ sender: 'alice', senderDevice: 1, conversation: 'alice', outgoing: false, ranges: [{ from: 2, to: 2 }], count: 1 }]);
    await expect(bob.client.missingMessages()).resolves.toEqual(missing);

    // Still missing after bob's app restarts: the track is in the stores.
    await bob.client.close();
    const restarted = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores: await bob.held.reopen() });
    opened.push(() => restarted.close());
    const late: IncomingMessage[] = [];
    restarted.on(ChatEvent.Message, (message) => {
      late.push(message);
    });
    await restarted.resume();
    await expect(restarted.missingMessages()).resolves.toEqual(missing);

    await restarted.connect();
    relay.deliver('bob', withheld!);
    await until(() => late.length === 1);
    expect([late[0]!.text, late[0]!.sequence, late[0]!.filledGap]).toEqual(['m2', 2, true]);
    await expect(restarted.missingMessages()).resolves.toEqual([]);
    expect(missing).toHaveLength(1);
  });

  it('a relay delivers a message twice, under its own id and under a new one: it is shown once and nothing is reported missing', async () => {
    const { relay, alice, bob, shown, missing } = await setUp();
    await alice.client.send('bob', 'only once');
    await alice.client.send('bob', 'after it');
    const [first, second] = relay.queueOf('bob').map((envelope) => ({ ...envelope }));
    relay.queueOf('bob').splice(0);
    relay.deliver('bob', first!);
    relay.deliver('bob', { ...first! });
    relay.deliver('bob', { ...first!, id: randomUUID() });
    relay.deliver('bob', second!);
    relay.deliver('bob', { ...second!, id: randomUUID() });
    await bob.client.connect();
    await until(() => relay.queueOf('bob').length === 0);
    expect(shown.map((m) => m.text)).toEqual(['only once', 'after it']);
    expect(missing).toEqual([]);
    await expect(bob.client.missingMessages()).resolves.toEqual([]);
  });

  it('control records (receipts) and typing take no number: messages around them show no gap', async () => {
    const { alice, bob, shown, missing } = await setUp();
    await bob.client.connect();
    await alice.client.connect();
    await alice.client.send('bob', 'before');
    await until(() => shown.length === 1);
    await alice.client.sendReadReceipt('bob', [1]);
    await alice.client.sendTyping('bob', true);
    await alice.client.send('bob', 'after');
    await until(() => shown.length === 2);
    expect(shown.map((m) => [m.text, m.sequence])).toEqual([
      ['before', 1],
      ['after', 2],
    ]);
    expect(missing).toEqual([]);
  });
});

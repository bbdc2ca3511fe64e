import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EnvelopeType, type Envelope } from '@chat/protocol';
import { ChatEvent, type IncomingMessage, type MessagesMissing } from './events.js';
import { SecureChatClient } from './secure-chat-client.js';
import { SqliteStores } from './sqlite/sqlite-stores.js';
import { createMemoryStores } from './stores/memory-stores.js';
import type { SecureChatStores } from './stores/stores.js';
import { FakeRelay } from './test-support/fake-relay.js';
import { until } from './test-support/spec-helpers.js';

// Gap detection for group messages (docs/architecture.md, "Gap detection"), through the whole client, on both kinds of store.

const workDir = mkdtempSync(join(tmpdir(), 'group-gap-detection-'));
let files = 0;
afterAll(() => rmSync(workDir, { recursive: true, force: true }));

const memory = async (): Promise<{ stores: SecureChatStores; close: () => Promise<void> }> => ({ stores: createMemoryStores(), close: async () => undefined });
const sqlite = async (): Promise<{ stores: SecureChatStores; close: () => Promise<void> }> => {
  const stores = await SqliteStores.open({ path: join(workDir, `client-${++files}.db`), passphrase: 'correct horse battery staple', kdf: { logN: 10, r: 8, p: 1 } });
  return { stores, close: () => stores.close() };
};

const isGroupMessage = (envelope: Envelope) => envelope.type === EnvelopeType.Sealed;

describe.each([
  ['memory stores', memory],
  ['SQLite stores', sqlite],
])('group gap detection with %s', (_name, create) => {
  const opened: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const close of opened.splice(0)) await close();
  });

  async function member(relay: FakeRelay, name: string) {
    const held = await create();
    const client = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores: held.stores, trustRoot: relay.trustRoot });
    opened.push(async () => {
      await client.close();
      await held.close();
    });
    await client.register(name, 'correct horse battery');
    const shown: IncomingMessage[] = [];
    const missing: MessagesMissing[] = [];
    const errors: unknown[] = [];
    client.on(ChatEvent.Message, (message) => {
      shown.push(message);
      void message.ack();
    });
    client.on(ChatEvent.MessagesMissing, (report) => missing.push(report));
    client.on(ChatEvent.Error, (error) => errors.push(error));
    return { client, stores: held.stores, shown, missing, errors };
  }

  /** alice (admin), bob and carol, every one connected, with the group and alice's sender key in place. */
  async function setUp() {
    const relay = new FakeRelay();
    const alice = await member(relay, 'alice');
    const bob = await member(relay, 'bob');
    const carol = await member(relay, 'carol');
    for (const m of [alice, bob, carol]) await m.client.connect();
    const group = await alice.client.createGroup('the group', ['bob', 'carol']);
    await until(async () => (await bob.client.groups()).length === 1 && (await carol.client.groups()).length === 1);
    return { relay, alice, bob, carol, group: group.id };
  }

  it('a relay withholds a group message from one member: the next one from that sender reports it missing in that group, and a late arrival is flagged and closes the gap', async () => {
    const { relay, alice, bob, carol, group } = await setUp();
    await bob.client.close();
    for (const text of ['g1', 'g2', 'g3']) await alice.client.sendGroupMessage(group, text);
    const queue = relay.queueOf('bob').filter(isGroupMessage);
    expect(queue).toHaveLength(3);
    const withheld = queue[1]!;
    relay.queueOf('bob').splice(relay.queueOf('bob').indexOf(withheld), 1);

    // bob's own client, reconnected (a closed client cannot connect again: a new one on the same stores).
    const reopened = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores: bob.stores, trustRoot: relay.trustRoot });
    opened.unshift(() => reopened.close());
    const shown: IncomingMessage[] = [];
    const missing: MessagesMissing[] = [];
    reopened.on(ChatEvent.Message, (message) => {
      shown.push(message);
      void message.ack();
    });
    reopened.on(ChatEvent.MessagesMissing, (report) => missing.push(report));
    await reopened.resume();
    await reopened.connect();
    await until(() => shown.length === 2);
    expect(shown.map((m) => [m.text, m.group?.id, m.sequence, m.filledGap])).toEqual([
      ['g1', group, 1, false],
      ['g3', group, 3, false],
    ]);
    const report = { sender: 'alice', senderDevice: 1, conversation: group, group, outgoing: false, ranges: [{ from: 2, to: 2 }], count: 1 };
    expect(missing).toEqual([report]);
    await expect(reopened.missingMessages()).resolves.toEqual([report]);

    relay.deliver('bob', withheld);
    await until(() => shown.length === 3);
    expect([shown[2]!.text, shown[2]!.sequence, shown[2]!.filledGap]).toEqual(['g2', 2, true]);
    await expect(reopened.missingMessages()).resolves.toEqual([]);
    // carol got all three in order: nothing missing.
    await until(() => carol.shown.length === 3);
    expect(carol.missing).toEqual([]);
    expect(carol.shown.map((m) => m.sequence)).toEqual([1, 2, 3]);
  });

  it('a retry of a group send (same id) that the relay had stored keeps its number: the next message shows no gap', async () => {
    const { relay, alice, bob, group } = await setUp();
    const id = randomUUID();
    await alice.client.sendGroupMessage(group, 'once', { id });
    await alice.client.sendGroupMessage(group, 'once', { id });
    await alice.client.sendGroupMessage(group, 'next');
    await until(() => bob.shown.length === 2);
    expect(relay.multiRecipientSends.filter((send) => send.request.id === id).length).toBeGreaterThanOrEqual(2);
    expect(bob.shown.map((m) => [m.text, m.sequence])).toEqual([
      ['once', 1],
      ['next', 2],
    ]);
    expect(bob.missing).toEqual([]);
  });

  it('a member removed, sent messages while out, and added again: nothing it was not sent is reported missing, and nobody else sees a gap across the new sender key', async () => {
    const { alice, bob, carol, group } = await setUp();
    await alice.client.sendGroupMessage(group, 'before');
    await until(() => carol.shown.length === 1 && bob.shown.length === 1);
    await alice.client.removeGroupMember(group, 'carol');
    await until(async () => !(await carol.client.groups())[0]!.member);
    for (const text of ['while out 1', 'while out 2']) await alice.client.sendGroupMessage(group, text);
    await until(() => bob.shown.length === 3);
    await alice.client.addGroupMembers(group, ['carol']);
    await until(async () => (await carol.client.groups())[0]!.member);
    await alice.client.sendGroupMessage(group, 'back');
    await until(() => carol.shown.length === 2 && bob.shown.length === 4);
    expect(carol.shown.map((m) => m.text)).toEqual(['before', 'back']);
    expect(carol.missing).toEqual([]);
    await expect(carol.client.missingMessages()).resolves.toEqual([]);
    expect(bob.shown.map((m) => m.text)).toEqual(['before', 'while out 1', 'while out 2', 'back']);
    expect(bob.missing).toEqual([]);
  });

  it('a relay hides a member\'s removal from it and it is added again: the sender\'s new sender key started a new stream, so what it was not sent is not missing', async () => {
    const { relay, alice, carol, group } = await setUp();
    await alice.client.sendGroupMessage(group, 'before');
    await until(() => carol.shown.length === 1);
    await carol.client.close();
    await alice.client.removeGroupMember(group, 'carol');
    // The only thing queued for carol is the update that removes her: the relay discards it.
    expect(relay.queueOf('carol')).toHaveLength(1);
    relay.queueOf('carol').splice(0);
    for (const text of ['while out 1', 'while out 2']) await alice.client.sendGroupMessage(group, text);
    await alice.client.addGroupMembers(group, ['carol']);

    const back = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores: carol.stores, trustRoot: relay.trustRoot });
    opened.unshift(() => back.close());
    const shown: IncomingMessage[] = [];
    const missing: MessagesMissing[] = [];
    back.on(ChatEvent.Message, (message) => {
      shown.push(message);
      void message.ack();
    });
    back.on(ChatEvent.MessagesMissing, (report) => missing.push(report));
    await back.resume();
    await back.connect();
    await until(async () => (await back.groups())[0]!.revision === 3 && relay.queueOf('carol').length === 0);
    await alice.client.sendGroupMessage(group, 'back');
    await until(() => shown.length === 1);
    // Third in alice's stream since her new key (the two she sent while carol was out came first), a stream carol never saw.
    expect([shown[0]!.text, shown[0]!.sequence, shown[0]!.filledGap]).toEqual(['back', 3, false]);
    expect(missing).toEqual([]);
    await expect(back.missingMessages()).resolves.toEqual([]);
  });

  it('a relay hides a removal from a sender, whose messages the removed member then refuses; once added again, that member forgets what it followed of the group: no gap', async () => {
    const { relay, alice, bob, carol, group } = await setUp();
    await bob.client.sendGroupMessage(group, 'b1');
    await until(() => carol.shown.length === 1 && alice.shown.length === 1);
    await bob.client.close();
    await alice.client.removeGroupMember(group, 'carol');
    await until(async () => !(await carol.client.groups())[0]!.member);
    // bob never learns of the removal (nor gets alice's new sender key): he keeps sending to carol, under his old key.
    relay.queueOf('bob').splice(0);
    const stale = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores: bob.stores, trustRoot: relay.trustRoot });
    opened.unshift(() => stale.close());
    await stale.resume();
    await stale.connect();
    const refusedBefore = carol.errors.length;
    await stale.sendGroupMessage(group, 'b2');
    await until(() => carol.errors.length === refusedBefore + 1 && alice.shown.length === 2);
    expect(carol.shown.map((m) => m.text)).toEqual(['b1']);

    await alice.client.addGroupMembers(group, ['carol']);
    await until(async () => (await carol.client.groups())[0]!.member && (await stale.groups())[0]!.revision === 3);
    await stale.sendGroupMessage(group, 'b3');
    await until(() => carol.shown.length === 2);
    expect(carol.shown.map((m) => [m.text, m.sequence])).toEqual([
      ['b1', 1],
      ['b3', 3],
    ]);
    expect(carol.missing).toEqual([]);
    await expect(carol.client.missingMessages()).resolves.toEqual([]);
  });

  it('a member added later starts from the first group message it gets: the history before it joined is not missing', async () => {
    const { relay, alice, group } = await setUp();
    for (const text of ['h1', 'h2']) await alice.client.sendGroupMessage(group, text);
    const dave = await member(relay, 'dave');
    await dave.client.connect();
    await alice.client.addGroupMembers(group, ['dave']);
    await until(async () => (await dave.client.groups()).length === 1);
    await alice.client.sendGroupMessage(group, 'h3');
    await until(() => dave.shown.length === 1);
    expect([dave.shown[0]!.text, dave.shown[0]!.sequence, dave.shown[0]!.filledGap]).toEqual(['h3', 3, false]);
    expect(dave.missing).toEqual([]);
  });

  it("a relay replays a group message under a new id: it is acked and dropped silently (no error event), shown once, and the sender's sequence goes on without a gap", async () => {
    const { relay, alice, bob, group } = await setUp();
    await bob.client.close();
    await alice.client.sendGroupMessage(group, 'only once');
    await alice.client.sendGroupMessage(group, 'after it');
    const [first, second] = relay.queueOf('bob').filter(isGroupMessage).map((envelope) => ({ ...envelope }));
    relay.queueOf('bob').splice(0);
    const reopened = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores: bob.stores, trustRoot: relay.trustRoot });
    opened.unshift(() => reopened.close());
    const shown: IncomingMessage[] = [];
    const missing: MessagesMissing[] = [];
    const errors: unknown[] = [];
    reopened.on(ChatEvent.Message, (message) => {
      shown.push(message);
      void message.ack();
    });
    reopened.on(ChatEvent.MessagesMissing, (report) => missing.push(report));
    reopened.on(ChatEvent.Error, (error) => errors.push(error));
    await reopened.resume();
    const replay = { ...first!, id: randomUUID() };
    relay.deliver('bob', first!);
    relay.deliver('bob', replay);
    relay.deliver('bob', second!);
    await reopened.connect();
    await until(() => relay.queueOf('bob').length === 0);
    expect(shown.map((m) => [m.text, m.sequence])).toEqual([
      ['only once', 1],
      ['after it', 2],
    ]);
    expect(relay.acked).toContain(replay.id);
    expect(errors).toEqual([]);
    expect(missing).toEqual([]);
  });
});

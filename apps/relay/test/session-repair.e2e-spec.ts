import { join } from 'node:path';
import { describe, expect, it } from '@jest/globals';
import Database from 'better-sqlite3';
import { ProtocolAddress, SessionRecord } from '@signalapp/libsignal-client';
import {
  ChatEvent,
  SecureChatClient,
  SessionResetReason,
  type SecureChatClientOptions,
  type SecureChatError,
  type SecureChatStores,
  type SessionReset,
} from '@chat/signal-sdk';
import { SqliteStores, type StoreKdfParams } from '@chat/signal-sdk/sqlite';
import { MessageCollector, createMemoryStores } from '@chat/signal-sdk/testing';
import { useSdkRelay } from './support/sdk-relay.js';
import { DEFAULT_TEST_PASSWORD, uniqueUsername } from './support/test-relay.js';

// Session repair end to end: SDK clients on the real relay (AppModule, real
// database, HTTP and WebSocket) whose sessions are broken behind their back.
// The backup-restore spec covers the other way a session goes stale (a peer
// writes first to an install restored from a backup).

/** 1 MiB of scrypt instead of the default 128 MiB: the same format, only cheaper to attack. */
const TEST_KDF: StoreKdfParams = { logN: 10, r: 8, p: 1 };

/** What one client's app saw. */
interface Seen {
  inbox: MessageCollector;
  resets: SessionReset[];
  errors: SecureChatError[];
}

function watch(client: SecureChatClient): Seen {
  const seen: Seen = { inbox: new MessageCollector(client), resets: [], errors: [] };
  client.on(ChatEvent.SessionReset, (reset) => void seen.resets.push(reset));
  client.on(ChatEvent.Error, (error) => void seen.errors.push(error));
  return seen;
}

const texts = (seen: Seen) => seen.inbox.received.map((m) => m.text);
const localResets = (seen: Seen) => seen.resets.filter((r) => r.initiator === 'local');

/** Replaces the stored session with an empty record, through the store API: the session is gone. */
const deleteSession = (stores: SecureChatStores, peer: string) =>
  stores.session.saveSession(ProtocolAddress.new(peer, 1), SessionRecord.deserialize(new Uint8Array(0)));

describe('session repair through the real relay', () => {
  const fixture = useSdkRelay('session-repair-e2e');
  const { clients, openStores } = fixture;

  function clientOn(stores: SecureChatStores, options: Partial<SecureChatClientOptions> = {}) {
    const client = SecureChatClient.create({ relayUrl: fixture.relay.baseUrl, stores, ...options });
    clients.push(client);
    return { client, stores, seen: watch(client) };
  }

  async function registered(prefix: string, stores: SecureChatStores = createMemoryStores(), options: Partial<SecureChatClientOptions> = {}) {
    const user = clientOn(stores, options);
    const username = uniqueUsername(prefix);
    await user.client.register(username, DEFAULT_TEST_PASSWORD);
    return { ...user, username };
  }

  type User = Awaited<ReturnType<typeof registered>>;

  /** `from` sends `text`; resolves once `to`'s app has it. */
  async function say(from: User, to: User, text: string) {
    await from.client.send(to.username, text);
    for (;;) {
      const message = await to.seen.inbox.next(10_000);
      if (message.text === text) return message;
    }
  }

  /** alice opens the session and bob answers, so both sides send plain Signal messages on it. */
  async function talking(options: Partial<SecureChatClientOptions> = {}) {
    const alice = await registered('alice', createMemoryStores(), options);
    const bob = await registered('bob', createMemoryStores(), options);
    await Promise.all([alice.client.connect(), bob.client.connect()]);
    await say(alice, bob, 'open');
    await say(bob, alice, 'answer');
    return { alice, bob };
  }

  it("(1) recovers when the receiver's session is deleted: the lost messages arrive once each, both apps see sessionReset, and both directions work", async () => {
    const { alice, bob } = await talking();
    await deleteSession(bob.stores, alice.username);

    await alice.client.send(bob.username, 'm1');
    await alice.client.send(bob.username, 'm2');
    expect((await bob.seen.inbox.next(10_000)).text).toBe('m1');
    expect((await bob.seen.inbox.next(10_000)).text).toBe('m2');
    await say(bob, alice, 'bob writes after the repair');
    await say(alice, bob, 'alice writes after the repair');

    // A duplicate resend would have reached bob before alice's last message: the relay keeps the order.
    expect(texts(bob.seen)).toEqual(['open', 'm1', 'm2', 'alice writes after the repair']);
    expect(texts(alice.seen)).toEqual(['answer', 'bob writes after the repair']);
    expect(bob.seen.resets).toEqual([{ peer: alice.username, device: 1, reason: SessionResetReason.NoSession, initiator: 'local' }]);
    expect(alice.seen.resets).toEqual([{ peer: bob.username, device: 1, reason: SessionResetReason.PeerRequest, initiator: 'peer' }]);
    expect([...alice.seen.errors, ...bob.seen.errors]).toEqual([]);
  });

  it('(1) recovers a session record deleted from the SQLite file while the app was down; the resend comes from the sender\'s SQLite log', async () => {
    const open = async (path: string) => {
      const stores = await SqliteStores.open({ path, passphrase: 'store passphrase', kdf: TEST_KDF });
      openStores.push(stores);
      return stores;
    };
    const alicePath = join(fixture.dir, 'alice.db');
    const bobPath = join(fixture.dir, 'bob.db');
    const alice = await registered('alice', await open(alicePath));
    let bob = await registered('bob', await open(bobPath));
    await Promise.all([alice.client.connect(), bob.client.connect()]);
    await say(alice, bob, 'open');
    await say(bob, alice, 'answer');

    await bob.client.close();
    await (bob.stores as SqliteStores).close();
    await alice.client.send(bob.username, 'm1 while bob is down');
    await alice.client.send(bob.username, 'm2 while bob is down');
    const file = new Database(bobPath);
    expect(file.prepare("DELETE FROM records WHERE kind = 'session'").run().changes).toBe(1);
    file.close();

    bob = { ...clientOn(await open(bobPath)), username: bob.username };
    await bob.client.resume();
    await bob.client.connect();
    expect((await bob.seen.inbox.next(10_000)).text).toBe('m1 while bob is down');
    expect((await bob.seen.inbox.next(10_000)).text).toBe('m2 while bob is down');
    await say(bob, alice, 'bob is back');
    await say(alice, bob, 'welcome back');
    expect(texts(bob.seen)).toEqual(['m1 while bob is down', 'm2 while bob is down', 'welcome back']);
    expect(bob.seen.resets.map((r) => [r.initiator, r.reason])).toEqual([['local', SessionResetReason.NoSession]]);
    expect(alice.seen.resets.map((r) => [r.initiator, r.reason])).toEqual([['peer', SessionResetReason.PeerRequest]]);
    expect([...alice.seen.errors, ...bob.seen.errors]).toEqual([]);
  });

  it("(2) needs no repair when the sender's session is deleted: its next message opens a new session (PQXDH) and nothing is lost", async () => {
    const { alice, bob } = await talking();
    await deleteSession(alice.stores, bob.username);

    await alice.client.send(bob.username, 'm1');
    await alice.client.send(bob.username, 'm2');
    expect((await bob.seen.inbox.next(10_000)).text).toBe('m1');
    expect((await bob.seen.inbox.next(10_000)).text).toBe('m2');
    await say(bob, alice, 'bob answers on the new session');
    await say(alice, bob, 'and alice again');

    expect(texts(bob.seen)).toEqual(['open', 'm1', 'm2', 'and alice again']);
    expect(texts(alice.seen)).toEqual(['answer', 'bob answers on the new session']);
    expect([...alice.seen.resets, ...bob.seen.resets]).toEqual([]);
    expect([...alice.seen.errors, ...bob.seen.errors]).toEqual([]);
  });

  it('(3) does not loop when both sides lost their session with messages in flight both ways: one request each, everything arrives once', async () => {
    // A short interval: a loop would show as more requests during the exchanges below.
    const { alice, bob } = await talking({ sessionResetIntervalMs: 100 });
    await alice.client.close();
    await bob.client.close();
    await alice.client.send(bob.username, 'alice, sent on the old session');
    await bob.client.send(alice.username, 'bob, sent on the old session');
    await deleteSession(alice.stores, bob.username);
    await deleteSession(bob.stores, alice.username);

    await Promise.all([alice.client.connect(), bob.client.connect()]);
    expect((await bob.seen.inbox.next(10_000)).text).toBe('alice, sent on the old session');
    expect((await alice.seen.inbox.next(10_000)).text).toBe('bob, sent on the old session');
    for (let i = 0; i < 5; i++) {
      await say(alice, bob, `alice ${i}`);
      await say(bob, alice, `bob ${i}`);
    }

    expect(texts(bob.seen)).toEqual(['open', 'alice, sent on the old session', ...[0, 1, 2, 3, 4].map((i) => `alice ${i}`)]);
    expect(texts(alice.seen)).toEqual(['answer', 'bob, sent on the old session', ...[0, 1, 2, 3, 4].map((i) => `bob ${i}`)]);
    for (const side of [alice, bob]) {
      expect(localResets(side.seen)).toHaveLength(1);
      expect(side.seen.resets.filter((r) => r.initiator === 'peer')).toHaveLength(1);
      expect(side.seen.errors).toEqual([]);
    }
  });
});

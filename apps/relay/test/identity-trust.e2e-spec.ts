import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { IdentityKeyPair, ProtocolAddress, SessionRecord } from '@signalapp/libsignal-client';
import type { PreKeyBundleResponse } from '@chat/protocol';
import {
  ChatEvent,
  IdentityStatus,
  SecureChatClient,
  SecureChatError,
  SecureChatErrorCode,
  type IdentityChanged,
  type SecureChatClientOptions,
  type SecureChatStores,
} from '@chat/signal-sdk';
import { MessageCollector, createMemoryStores } from '@chat/signal-sdk/testing';
import { startRewritingProxy, type RewritingProxy } from './support/rewriting-proxy.js';
import { DEFAULT_TEST_PASSWORD, startTestRelay, uniqueUsername, type TestRelay } from './support/test-relay.js';

// Identity trust end to end: SDK clients on the real relay, one of them
// through a proxy that can swap a peer's identity key in the bundles it
// hands out (a compromised relay), and accounts re-registered under a name
// (the username cooling-off is 0 here so a name can be taken again at once).

const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');
const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');

describe('identity trust through the real relay', () => {
  let relay: TestRelay;
  let proxy: RewritingProxy;
  const clients: SecureChatClient[] = [];
  /** Usernames whose bundles the proxy answers with the attacker's identity key. */
  const swapped = new Set<string>();
  const attacker = IdentityKeyPair.generate();

  beforeAll(async () => {
    relay = await startTestRelay({ USERNAME_COOLING_OFF_DAYS: '0' });
    proxy = await startRewritingProxy(relay, ({ method, path, status, body }) => {
      const victim = /^\/v1\/keys\/([^/?]+)$/.exec(path)?.[1];
      if (method !== 'GET' || status !== 200 || !victim || !swapped.has(decodeURIComponent(victim))) return undefined;
      return swapIdentity(body as PreKeyBundleResponse, attacker);
    });
  });

  afterAll(async () => {
    for (const client of clients) await client.close();
    await proxy?.close();
    await relay?.close();
  });

  function newClient(options: Partial<SecureChatClientOptions> = {}, stores: SecureChatStores = createMemoryStores()) {
    const client = SecureChatClient.create({ relayUrl: relay.baseUrl, stores, deliveryReceipts: false, ...options });
    clients.push(client);
    const seen = { changes: [] as IdentityChanged[], errors: [] as SecureChatError[] };
    client.on(ChatEvent.IdentityChanged, (change) => void seen.changes.push(change));
    client.on(ChatEvent.Error, (error) => void seen.errors.push(error));
    return { client, stores, seen, inbox: new MessageCollector(client) };
  }

  async function registered(prefix: string, options: Partial<SecureChatClientOptions> = {}) {
    const party = newClient(options);
    const username = uniqueUsername(prefix);
    await party.client.register(username, DEFAULT_TEST_PASSWORD);
    await party.client.connect();
    return { ...party, username };
  }

  async function failure(promise: Promise<unknown>): Promise<SecureChatError> {
    const error = await promise.then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(SecureChatError);
    return error as SecureChatError;
  }

  async function until(condition: () => Promise<boolean>, timeoutMs = 5_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await condition())) {
      if (Date.now() > deadline) throw new Error('condition not met in time');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  const storedMessages = async () => Number((await relay.sql<{ n: bigint }>('SELECT count(*) AS n FROM messages'))[0]?.n);
  const forgetSession = (stores: SecureChatStores, peer: string) =>
    stores.session.saveSession(ProtocolAddress.new(peer, 1), SessionRecord.deserialize(new Uint8Array(0)));

  it("detects a relay that serves a swapped identity key, sends nothing to it under 'block', reports a verified peer's change, and trusts the real key again once the real peer is heard", async () => {
    const alice = await registered('alice', { relayUrl: proxy.baseUrl });
    const bob = await registered('bob');
    const carol = await registered('carol');
    for (const peer of [bob, carol]) {
      await alice.client.send(peer.username, `hello ${peer.username}`);
      await peer.inbox.next();
      await peer.client.send(alice.username, 'hello alice');
      await alice.inbox.next();
    }
    await alice.client.verifySafetyNumber(bob.username, (await bob.client.safetyNumber(alice.username)).scannable);
    expect((await alice.client.peerIdentity(bob.username))?.status).toBe(IdentityStatus.Verified);
    expect((await alice.client.peerIdentity(carol.username))?.status).toBe(IdentityStatus.Trusted);
    const bobKey = (await bob.stores.identity.getLocalIdentity())!.identityKeyPair.publicKey.serialize();

    // From now on the relay lies about bob's and carol's keys; alice has to fetch their bundles again.
    swapped.add(bob.username);
    swapped.add(carol.username);
    await forgetSession(alice.stores, bob.username);
    await forgetSession(alice.stores, carol.username);
    // Every message so far was delivered and acked; acks are not answered, so wait for the relay to delete them.
    await until(async () => (await storedMessages()) === 0);

    expect((await failure(alice.client.send(bob.username, 'for bob only'))).code).toBe(SecureChatErrorCode.IdentityChanged);
    expect((await failure(alice.client.send(carol.username, 'for carol only'))).code).toBe(SecureChatErrorCode.IdentityChanged);
    expect(alice.seen.changes.map((c) => ({ ...c, previousKey: hex(c.previousKey), newKey: hex(c.newKey) }))).toEqual([
      { username: bob.username, previousKey: hex(bobKey), newKey: hex(attacker.publicKey.serialize()), wasVerified: true, status: IdentityStatus.Changed },
      expect.objectContaining({ username: carol.username, newKey: hex(attacker.publicKey.serialize()), wasVerified: false, status: IdentityStatus.Changed }),
    ]);
    expect((await alice.client.peerIdentity(bob.username))?.status).toBe(IdentityStatus.Changed);
    // Nothing reached the relay for either of them.
    expect(await storedMessages()).toBe(0);
    expect(proxy.requests.filter((r) => r.method === 'POST' && r.path === '/v1/messages')).toEqual([]);
    // The safety number alice would show now is not the one bob shows: comparing them reveals the attack.
    expect((await alice.client.safetyNumber(bob.username)).displayable).not.toBe((await bob.client.safetyNumber(alice.username)).displayable);

    // Sending stays refused while the change is not resolved: no new bundle is fetched for it.
    const fetchesBefore = proxy.requests.filter((r) => r.path.startsWith('/v1/keys/')).length;
    expect((await failure(alice.client.send(bob.username, 'again'))).code).toBe(SecureChatErrorCode.IdentityChanged);
    expect(proxy.requests.filter((r) => r.path.startsWith('/v1/keys/')).length).toBe(fetchesBefore);

    // The relay stops lying and the real bob writes: alice cannot decrypt it (she lost the session),
    // asks bob to start over from his real bundle, and his key is the verified one again.
    swapped.clear();
    await bob.client.send(alice.username, 'the real bob');
    const resent = await alice.inbox.next(10_000);
    expect(resent.text).toBe('the real bob');
    expect(resent.identity).toBe(IdentityStatus.Verified);
    expect(alice.seen.changes.at(-1)).toMatchObject({ username: bob.username, newKey: bobKey, status: IdentityStatus.Verified });
    await alice.client.send(bob.username, 'the real bob again');
    expect((await bob.inbox.next()).text).toBe('the real bob again');
    expect(alice.seen.errors).toEqual([]);
  });

  it('safety numbers computed by both sides for each other are equal, and differ after either side’s identity changes', async () => {
    const alice = await registered('alice');
    const bob = await registered('bob');
    await alice.client.send(bob.username, 'hi bob');
    await bob.inbox.next();
    await bob.client.send(alice.username, 'hi alice');
    await alice.inbox.next();
    const first = (await alice.client.safetyNumber(bob.username)).displayable;
    expect(first).toMatch(/^\d{60}$/);
    expect((await bob.client.safetyNumber(alice.username)).displayable).toBe(first);
    await alice.client.verifySafetyNumber(bob.username, (await bob.client.safetyNumber(alice.username)).scannable);

    // bob deletes his account and registers the name again on a new install: a new identity key.
    await bob.client.deleteAccount(DEFAULT_TEST_PASSWORD);
    const newBob = newClient();
    await newBob.client.register(bob.username, DEFAULT_TEST_PASSWORD);
    await newBob.client.connect();
    await newBob.client.send(alice.username, 'new install of bob');
    const fromNewBob = await alice.inbox.next();
    expect(fromNewBob.identity).toBe(IdentityStatus.Changed);
    expect(alice.seen.changes).toEqual([expect.objectContaining({ username: bob.username, wasVerified: true, status: IdentityStatus.Changed })]);
    const second = (await alice.client.safetyNumber(bob.username)).displayable;
    expect(second).not.toBe(first);
    expect((await newBob.client.safetyNumber(alice.username)).displayable).toBe(second);
    // Under 'block' alice answers only once she accepts the new key.
    expect((await failure(alice.client.send(bob.username, 'who is this?'))).code).toBe(SecureChatErrorCode.IdentityChanged);
    await alice.client.acceptIdentity(bob.username, alice.seen.changes[0]!.newKey);
    await alice.client.send(bob.username, 'welcome back');
    expect((await newBob.inbox.next()).text).toBe('welcome back');

    // Now alice's side changes the same way.
    await alice.client.deleteAccount(DEFAULT_TEST_PASSWORD);
    const newAlice = newClient();
    await newAlice.client.register(alice.username, DEFAULT_TEST_PASSWORD);
    await newAlice.client.connect();
    await newAlice.client.send(bob.username, 'new install of alice');
    expect((await newBob.inbox.next()).identity).toBe(IdentityStatus.Changed);
    const third = (await newBob.client.safetyNumber(alice.username)).displayable;
    expect(third).not.toBe(second);
    expect((await newAlice.client.safetyNumber(bob.username)).displayable).toBe(third);
  });
});

/** `bundle` with `attacker`'s identity key and its prekeys re-signed by it: what a lying relay can make. */
function swapIdentity(bundle: PreKeyBundleResponse, attacker: IdentityKeyPair): PreKeyBundleResponse {
  const resign = <K extends { publicKey: string; signature: string }>(key: K): K => ({
    ...key,
    signature: b64(attacker.privateKey.sign(new Uint8Array(Buffer.from(key.publicKey, 'base64')))),
  });
  return {
    ...bundle,
    identityKey: b64(attacker.publicKey.serialize()),
    devices: bundle.devices.map((device) => ({ ...device, signedPreKey: resign(device.signedPreKey), kyberPreKey: resign(device.kyberPreKey) })),
  };
}

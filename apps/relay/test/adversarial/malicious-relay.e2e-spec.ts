import { join } from 'node:path';
import { afterAll, describe, expect, it } from '@jest/globals';
import { PreKeySignalMessage, ProtocolAddress, signalDecryptPreKey } from '@signalapp/libsignal-client';
import { ClientFrameType, ErrorCode, ServerFrameType, type ClientFrame, type PreKeyBundleResponse, type SendFrame, type ServerFrame } from '@chat/protocol';
import {
  ChatEvent,
  IdentityStatus,
  SecureChatClient,
  SecureChatErrorCode,
  type IdentityChanged,
  type IncomingMessage,
  type MessagesMissing,
  type SecureChatClientOptions,
  type SecureChatError,
  type SecureChatStores,
} from '@chat/signal-sdk';
import { SqliteStores } from '@chat/signal-sdk/sqlite';
import { createMemoryStores } from '@chat/signal-sdk/testing';
import { DeviceKeys } from '../support/libsignal-keys.js';
import { useSdkRelay } from '../support/sdk-relay.js';
import { DEFAULT_TEST_PASSWORD, uniqueUsername } from '../support/test-relay.js';
import { startHostileRelay, type DeliverAction, type HostileRelay } from './support/hostile-relay.js';

// A compromised relay: the real relay behind a proxy that drops, duplicates,
// reorders and delays what it delivers, and substitutes identity keys in the
// bundles it hands out. The clients are real SDK clients; what they show and
// report is what the defence is.

const setup = useSdkRelay('malicious-relay');
const hostiles: HostileRelay[] = [];

afterAll(async () => {
  for (const hostile of hostiles) await hostile.close();
});

async function hostileRelay(): Promise<HostileRelay> {
  const hostile = await startHostileRelay(setup.relay);
  hostiles.push(hostile);
  return hostile;
}

interface Party {
  /** The account's username (for a linked device, its account's). */
  username: string;
  client: SecureChatClient;
  stores: SecureChatStores;
  shown: IncomingMessage[];
  missing: MessagesMissing[];
  changes: IdentityChanged[];
  errors: SecureChatError[];
}

async function party(prefix: string, options: Partial<SecureChatClientOptions> & { sqlite?: boolean; linkTo?: Party } = {}): Promise<Party> {
  const { sqlite, linkTo, ...clientOptions } = options;
  let stores: SecureChatStores = createMemoryStores();
  if (sqlite) {
    const opened = await SqliteStores.open({ path: join(setup.dir, `${prefix}-${setup.openStores.length}.db`), passphrase: 'store passphrase', kdf: { logN: 10, r: 8, p: 1 } });
    setup.openStores.push(opened);
    stores = opened;
  }
  const client = SecureChatClient.create({ relayUrl: setup.relay.baseUrl, stores, deliveryReceipts: false, ...clientOptions });
  setup.clients.push(client);
  const seen: Party = { username: uniqueUsername(prefix), client, stores, shown: [], missing: [], changes: [], errors: [] };
  client.on(ChatEvent.Message, (message) => void seen.shown.push(message));
  client.on(ChatEvent.MessagesMissing, (report) => void seen.missing.push(report));
  client.on(ChatEvent.IdentityChanged, (change) => void seen.changes.push(change));
  client.on(ChatEvent.Error, (error) => void seen.errors.push(error));
  if (linkTo) {
    // Another device of `linkTo`'s account.
    const linking = await client.beginLinking({ pollIntervalMs: 50 });
    await linkTo.client.approveLink(linking.uri);
    await linking.completion;
    seen.username = linkTo.username;
  } else {
    await client.register(seen.username, DEFAULT_TEST_PASSWORD);
  }
  await client.connect();
  return seen;
}

async function until(condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const texts = (p: Party) => p.shown.map((m) => m.text);
const storedFor = async (username: string) =>
  Number(
    (
      await setup.relay.sql<{ n: bigint }>(
        'SELECT count(*) AS n FROM messages m JOIN devices d ON d.id = m.recipient_device_row_id JOIN accounts a ON a.id = d.account_id WHERE a.username = $1',
        username,
      )
    )[0]?.n,
  );

/** alice sends `text` to `to`; resolves once the relay has taken it. */
const sendFrom = (from: Party, to: Party, text: string) => from.client.send(to.username, text);

describe('adversarial: malicious relay', () => {
  describe('what it delivers', () => {
    it('a relay drops a message and acks it itself, so the real relay deletes it: the receiver shows the rest and reports that one missing (sender, device, range) once a later one arrives', async () => {
      const hostile = await hostileRelay();
      const alice = await party('alice');
      const bob = await party('bob', { relayUrl: hostile.baseUrl, sqlite: true });

      await sendFrom(alice, bob, 'm1');
      await until(() => bob.shown.length === 1, 'm1');
      hostile.onDeliver = () => 'drop';
      await sendFrom(alice, bob, 'm2 (dropped)');
      await until(() => hostile.dropped.length === 1, 'the drop');
      hostile.onDeliver = () => 'pass';
      expect(bob.missing).toEqual([]);
      await sendFrom(alice, bob, 'm3');
      await until(() => bob.shown.length === 2, 'm3');

      expect(texts(bob)).toEqual(['m1', 'm3']);
      expect(bob.shown.map((m) => m.sequence)).toEqual([1, 3]);
      const report = { sender: alice.username, senderDevice: 1, conversation: alice.username, outgoing: false, ranges: [{ from: 2, to: 2 }], count: 1 };
      expect(bob.missing).toEqual([report]);
      await expect(bob.client.missingMessages()).resolves.toEqual([report]);
      // The relay was told the message was handled: it is gone for good, and a reconnect brings nothing back.
      await until(async () => (await storedFor(bob.username)) === 0, 'the relay to delete every message');
      await bob.client.close();
      await bob.client.connect();
      await sendFrom(alice, bob, 'm4');
      await until(() => bob.shown.length === 3, 'm4');
      expect(texts(bob)).toEqual(['m1', 'm3', 'm4']);
      expect(bob.missing).toEqual([report]);
      expect(bob.errors).toEqual([]);
    });

    it('a relay delivers every message twice and later replays each under a new envelope id: each is shown exactly once and nothing is reported missing', async () => {
      const hostile = await hostileRelay();
      hostile.onDeliver = () => 'duplicate';
      const alice = await party('alice');
      const bob = await party('bob', { relayUrl: hostile.baseUrl });

      for (const text of ['one', 'two', 'three']) await sendFrom(alice, bob, text);
      await until(() => bob.shown.length === 3, 'three messages');
      const acked = (id: string) => hostile.clientFrames.some((frame: ClientFrame) => frame.type === ClientFrameType.Ack && frame.id === id);
      await until(() => hostile.delivered.every((envelope) => acked(envelope.id)), 'every delivery acked');

      // Later, the relay replays the stored ciphertexts as if they were new messages.
      const replays = hostile.delivered.map((envelope) => hostile.replay(envelope));
      await until(() => replays.every(acked), 'every replay acked');
      await sendFrom(alice, bob, 'four');
      await until(() => bob.shown.length === 4, 'four');

      expect(texts(bob)).toEqual(['one', 'two', 'three', 'four']);
      expect(bob.shown.map((m) => m.sequence)).toEqual([1, 2, 3, 4]);
      expect(bob.missing).toEqual([]);
      await expect(bob.client.missingMessages()).resolves.toEqual([]);
      expect(bob.errors).toEqual([]);
    });

    it('a relay reorders messages (holds one until the next has passed): all are shown once, the held one flagged as filling the gap, and nothing is missing at the end', async () => {
      const hostile = await hostileRelay();
      const alice = await party('alice');
      const bob = await party('bob', { relayUrl: hostile.baseUrl });

      await sendFrom(alice, bob, 'first');
      await until(() => bob.shown.length === 1, 'first');
      let next: DeliverAction = 'hold-until-next';
      hostile.onDeliver = () => {
        const action = next;
        next = 'pass';
        return action;
      };
      await sendFrom(alice, bob, 'second');
      await until(() => hostile.held().length === 1, 'second to be held');
      await sendFrom(alice, bob, 'third');
      await until(() => bob.shown.length === 3, 'all three');

      expect(texts(bob)).toEqual(['first', 'third', 'second']);
      expect(bob.shown.map((m) => [m.sequence, m.filledGap])).toEqual([
        [1, false],
        [3, false],
        [2, true],
      ]);
      // While it was held the gap showed; it closed when the message came.
      expect(bob.missing.map((m) => m.ranges)).toEqual([[{ from: 2, to: 2 }]]);
      await expect(bob.client.missingMessages()).resolves.toEqual([]);
      expect(bob.errors).toEqual([]);
    });

    it('a relay delays a message past later ones and past a reconnect: it is reported missing meanwhile, then shown once, late, and its gap report is resolved', async () => {
      const hostile = await hostileRelay();
      const alice = await party('alice');
      const bob = await party('bob', { relayUrl: hostile.baseUrl, sqlite: true });

      await sendFrom(alice, bob, 'a');
      await until(() => bob.shown.length === 1, 'a');
      let next: DeliverAction = { delayMs: 600_000 };
      hostile.onDeliver = () => {
        const action = next;
        next = 'pass';
        return action;
      };
      await sendFrom(alice, bob, 'b (delayed)');
      await until(() => hostile.held().length === 1, 'b to be held');
      await sendFrom(alice, bob, 'c');
      await sendFrom(alice, bob, 'd');
      await until(() => bob.shown.length === 3, 'c and d');
      expect(texts(bob)).toEqual(['a', 'c', 'd']);
      await expect(bob.client.missingMessages()).resolves.toEqual([
        { sender: alice.username, senderDevice: 1, conversation: alice.username, outgoing: false, ranges: [{ from: 2, to: 2 }], count: 1 },
      ]);

      // bob's connection drops; the relay still has b (never acked) and delivers it on the next one.
      await until(async () => (await storedFor(bob.username)) === 1, 'the relay to delete all but b');
      await bob.client.close();
      await bob.client.connect();
      await until(() => bob.shown.length === 4, 'b');
      // The first copy, held all along, is let go at last: a repeat, never shown.
      const [firstCopy] = hostile.held();
      expect(hostile.held()).toHaveLength(1);
      hostile.releaseAll();
      const acksOf = (id: string) => hostile.clientFrames.filter((frame) => frame.type === ClientFrameType.Ack && frame.id === id).length;
      await until(() => acksOf(firstCopy!) === 2, 'the first copy to be acked as a repeat');
      await sendFrom(alice, bob, 'e');
      await until(() => bob.shown.length === 5, 'e');

      expect(texts(bob)).toEqual(['a', 'c', 'd', 'b (delayed)', 'e']);
      expect(bob.shown[3]).toMatchObject({ sequence: 2, filledGap: true });
      expect(bob.missing).toHaveLength(1);
      await expect(bob.client.missingMessages()).resolves.toEqual([]);
      expect(bob.errors).toEqual([]);
    });

    it("a relay drops a sync copy on its way to the sender's other device: that device reports its own message to bob missing (outgoing, in bob's conversation)", async () => {
      const hostile = await hostileRelay();
      const a1 = await party('alice');
      const a2 = await party('alice', { relayUrl: hostile.baseUrl, linkTo: a1 });
      const bob = await party('bob');

      await sendFrom(a1, bob, 's1');
      await until(() => a2.shown.length === 1, 'the sync copy of s1');
      hostile.onDeliver = () => 'drop';
      await sendFrom(a1, bob, 's2');
      await until(() => hostile.dropped.length === 1, 'the drop');
      hostile.onDeliver = () => 'pass';
      await sendFrom(a1, bob, 's3');
      await until(() => a2.shown.length === 2 && bob.shown.length === 3, 's3 on a2, all three on bob');

      expect(a2.shown.map((m) => [m.text, m.outgoing, m.conversation, m.sequence])).toEqual([
        ['s1', true, bob.username, 1],
        ['s3', true, bob.username, 3],
      ]);
      expect(a2.missing).toEqual([{ sender: a1.username, senderDevice: 1, conversation: bob.username, outgoing: true, ranges: [{ from: 2, to: 2 }], count: 1 }]);
      // bob, whose copies went untouched, got all three and reports nothing.
      expect(texts(bob)).toEqual(['s1', 's2', 's3']);
      expect(bob.missing).toEqual([]);
    });
  });

  describe('what it delivers to a group', () => {
    /**
     * alice (admin), bob behind the hostile relay, carol direct; the group and
     * alice's sender key in place, every control record (group update, sender
     * key, profile keys) delivered, and one group message `g1` shown to both:
     * from then on the only envelopes bob gets are alice's group messages.
     */
    async function groupWithBobBehind(hostile: HostileRelay) {
      const trustRoot = setup.relay.trustRoot;
      const alice = await party('alice', { trustRoot });
      const bob = await party('bob', { trustRoot, relayUrl: hostile.baseUrl, sqlite: true });
      const carol = await party('carol', { trustRoot });
      const group = (await alice.client.createGroup('watched', [bob.username, carol.username])).id;
      const knowsEveryone = async (p: Party, others: Party[]) =>
        (await p.client.groups()).length === 1 && (await Promise.all(others.map((o) => p.stores.metadata.getPeerProfileKey(o.username)))).every(Boolean);
      await until(async () => (await knowsEveryone(bob, [alice, carol])) && (await knowsEveryone(carol, [alice, bob])), 'the group and every profile key');
      await alice.client.sendGroupMessage(group, 'g1');
      await until(() => bob.shown.length === 1 && carol.shown.length === 1, 'g1 on bob and carol');
      await until(async () => (await storedFor(bob.username)) === 0, "bob's queue to drain");
      return { alice, bob, carol, group };
    }

    it('a relay drops a group message for one member and acks it itself: that member shows the rest and reports it missing in that group (sender, device, range) once a later group message from that sender arrives; the others miss nothing', async () => {
      const hostile = await hostileRelay();
      const { alice, bob, carol, group } = await groupWithBobBehind(hostile);

      hostile.onDeliver = () => 'drop';
      await alice.client.sendGroupMessage(group, 'g2 (dropped for bob)');
      await until(() => hostile.dropped.length === 1, 'the drop');
      hostile.onDeliver = () => 'pass';
      expect(bob.missing).toEqual([]);
      await alice.client.sendGroupMessage(group, 'g3');
      await until(() => bob.shown.length === 2 && carol.shown.length === 3, 'g3 on bob, all three on carol');

      expect(bob.shown.map((m) => [m.text, m.group?.id, m.sequence, m.filledGap])).toEqual([
        ['g1', group, 1, false],
        ['g3', group, 3, false],
      ]);
      const report = { sender: alice.username, senderDevice: 1, conversation: group, group, outgoing: false, ranges: [{ from: 2, to: 2 }], count: 1 };
      expect(bob.missing).toEqual([report]);
      await expect(bob.client.missingMessages()).resolves.toEqual([report]);
      // The real relay was told it was handled: gone for good.
      await until(async () => (await storedFor(bob.username)) === 0, 'the relay to delete every message');
      expect(texts(carol)).toEqual(['g1', 'g2 (dropped for bob)', 'g3']);
      expect(carol.missing).toEqual([]);
      expect([...bob.errors, ...carol.errors]).toEqual([]);
    });

    it('a relay reorders group messages (holds one until the next has passed): all are shown once, the held one flagged as filling the gap, and nothing is missing at the end', async () => {
      const hostile = await hostileRelay();
      const { alice, bob, group } = await groupWithBobBehind(hostile);

      let next: DeliverAction = 'hold-until-next';
      hostile.onDeliver = () => {
        const action = next;
        next = 'pass';
        return action;
      };
      await alice.client.sendGroupMessage(group, 'g2');
      await until(() => hostile.held().length === 1, 'g2 to be held');
      await alice.client.sendGroupMessage(group, 'g3');
      await until(() => bob.shown.length === 3, 'all three');

      expect(bob.shown.map((m) => [m.text, m.sequence, m.filledGap])).toEqual([
        ['g1', 1, false],
        ['g3', 3, false],
        ['g2', 2, true],
      ]);
      // While it was held the gap showed; it closed when the message came.
      expect(bob.missing.map((m) => [m.group, m.ranges])).toEqual([[group, [{ from: 2, to: 2 }]]]);
      await expect(bob.client.missingMessages()).resolves.toEqual([]);
      expect(bob.errors).toEqual([]);
    });
  });

  describe('identity keys it hands out', () => {
    /**
     * A relay-driven substitution mid-conversation: the hostile relay answers
     * alice's next send to bob with 410 (bob's device "is stale"), so the SDK
     * fetches bob's bundle again, and the relay answers that with a bundle of
     * its own key (`attacker`). Sends alice makes after that are kept by the
     * relay and confirmed as stored.
     */
    async function substitution(policy: 'block' | 'warn', verify: boolean) {
      const hostile = await hostileRelay();
      const attacker = new DeviceKeys({ preKeys: 1, kyberPreKeys: 1 });
      const alice = await party('alice', { relayUrl: hostile.baseUrl, identityPolicy: policy });
      const bob = await party('bob');
      await sendFrom(alice, bob, 'hello bob');
      await until(() => bob.shown.length === 1, 'hello bob');
      await bob.client.send(alice.username, 'hello alice');
      await until(() => alice.shown.length === 1, 'hello alice');
      if (verify) await alice.client.verifySafetyNumber(bob.username, (await bob.client.safetyNumber(alice.username)).scannable);
      const bobKey = (await bob.stores.identity.getLocalIdentity())!.identityKeyPair.publicKey.serialize();

      const upload = attacker.uploadRequest();
      hostile.rewrite = ({ method, path, status, body }) => {
        if (method !== 'GET' || status !== 200 || path !== `/v1/keys/${bob.username}`) return undefined;
        const bundle = body as PreKeyBundleResponse;
        return {
          ...bundle,
          identityKey: upload.identityKey,
          devices: [{ deviceId: 1, registrationId: upload.registrationId, signedPreKey: upload.signedPreKey!, preKey: upload.preKeys![0]!, kyberPreKey: upload.kyberPreKeys![0]! }],
        } satisfies PreKeyBundleResponse;
      };
      let claimedStale = false;
      hostile.onClientFrame = (frame) => {
        if (frame.type !== ClientFrameType.Send || frame.message.to !== bob.username) return 'forward';
        if (!claimedStale) {
          claimedStale = true;
          const stale = { type: ServerFrameType.Error, requestId: frame.requestId, code: ErrorCode.StaleDevices, message: 'stale devices', stale: [{ username: bob.username, devices: [1] }] };
          return { answer: stale as ServerFrame };
        }
        // Kept by the relay, confirmed as if stored.
        return { answer: { type: ServerFrameType.Sent, requestId: frame.requestId, serverTimestamp: Date.now() } };
      };
      const attackStart = hostile.clientFrames.length;
      const bundleFetches = () => hostile.requests.filter((r) => r.method === 'GET' && r.path === `/v1/keys/${bob.username}`).length;
      const fetchesBefore = bundleFetches();
      const sendsToAttacker = () =>
        hostile.clientFrames.slice(attackStart).filter((frame): frame is SendFrame => frame.type === ClientFrameType.Send && frame.message.to === bob.username);
      return { attacker, alice, bob, bobKey, sendsToAttacker, bundleFetched: () => bundleFetches() > fetchesBefore };
    }

    it("a relay claims bob's device is stale and hands out its own key for him, mid-conversation, under 'block': the send is refused, nothing reaches the relay's key, and identityChanged reports the change as not accepted", async () => {
      const { alice, bob, bobKey, attacker, sendsToAttacker, bundleFetched } = await substitution('block', false);
      const refused = await alice.client.send(bob.username, 'for bob only').then(
        () => undefined,
        (error: SecureChatError) => error,
      );
      expect(refused?.code).toBe(SecureChatErrorCode.IdentityChanged);
      expect(bundleFetched()).toBe(true);
      // The one send frame is the first attempt (answered 410); nothing was encrypted to the substituted key.
      expect(sendsToAttacker()).toHaveLength(1);
      expect(alice.changes).toEqual([
        { username: bob.username, previousKey: bobKey, newKey: attacker.identity.publicKey.serialize(), wasVerified: false, status: IdentityStatus.Changed },
      ]);
      expect((await alice.client.peerIdentity(bob.username))?.status).toBe(IdentityStatus.Changed);
      // Still refused later, without another bundle fetch, until the app accepts the key or the user verifies.
      const again = await alice.client.send(bob.username, 'again').then(
        () => undefined,
        (error: SecureChatError) => error,
      );
      expect(again?.code).toBe(SecureChatErrorCode.IdentityChanged);
      expect(sendsToAttacker()).toHaveLength(1);
    });

    it("the same relay against a verified peer under 'warn': the send goes on (the relay can read it: that is what 'warn' trades), and identityChanged tells the app that a verified key was replaced", async () => {
      const { alice, bob, bobKey, attacker, sendsToAttacker, bundleFetched } = await substitution('warn', true);
      await alice.client.send(bob.username, 'readable by whoever holds the new key');
      expect(bundleFetched()).toBe(true);
      expect(alice.changes).toEqual([
        { username: bob.username, previousKey: bobKey, newKey: attacker.identity.publicKey.serialize(), wasVerified: true, status: IdentityStatus.Trusted },
      ]);
      // No longer verified: the safety number shown now differs from bob's.
      expect((await alice.client.peerIdentity(bob.username))?.status).toBe(IdentityStatus.Trusted);
      expect((await alice.client.safetyNumber(bob.username)).displayable).not.toBe((await bob.client.safetyNumber(alice.username)).displayable);

      // The attacker decrypts the retried send with its own keys.
      const retried = sendsToAttacker().at(-1)!.message.messages[0]!;
      const keys = attacker.stores();
      const plaintext = await signalDecryptPreKey(
        PreKeySignalMessage.deserialize(new Uint8Array(Buffer.from(retried.ciphertext, 'base64'))),
        ProtocolAddress.new(alice.username, 1),
        ProtocolAddress.new(bob.username, 1),
        keys.sessions,
        keys.identities,
        keys.preKeys,
        keys.signed,
        keys.kyber,
      );
      expect(Buffer.from(plaintext).includes(Buffer.from('readable by whoever holds the new key'))).toBe(true);
    });
  });
});

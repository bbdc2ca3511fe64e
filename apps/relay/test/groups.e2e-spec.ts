import { randomUUID } from 'node:crypto';
import { afterAll, describe, expect, it } from '@jest/globals';
import {
  CiphertextMessageType,
  ProtocolAddress,
  SenderKeyMessage,
  UnidentifiedSenderMessageContent,
  groupDecrypt,
  sealedSenderDecryptToUsmc,
  sealedSenderEncrypt,
} from '@signalapp/libsignal-client';
import { ProfileKey } from '@signalapp/libsignal-client/dist/zkgroup/index.js';
import {
  ChatEvent,
  HttpRelayTransport,
  SecureChatClient,
  SecureChatErrorCode,
  type GroupUpdated,
  type IncomingMessage,
  type SecureChatError,
  type SecureChatStores,
} from '@chat/signal-sdk';
import { createMemoryStores } from '@chat/signal-sdk/testing';
import { startRewritingProxy, type ProxiedAnswer } from './support/rewriting-proxy.js';
import { useSdkRelay } from './support/sdk-relay.js';
import { DEFAULT_TEST_PASSWORD, uniqueUsername } from './support/test-relay.js';
import { until } from './support/wait.js';

// Issue 6, acceptance 2: a group of four users, one of them (alice) on two
// devices linked with beginLinking/approveLink: five SDK clients on the real
// relay, database and sockets. Every group message reaches every other member
// device (alice's other device included) from ONE upload of the sender (each
// client talks to the relay through a proxy that records every HTTP answer);
// after dave is removed, the remaining members rotate their sender keys: the
// new messages never reach dave, and a remaining member's SenderKey
// ciphertext, taken from the relay's table and re-sealed to dave with
// libsignal, neither decrypts with dave's stores nor reaches dave's app.

const fixture = useSdkRelay('groups');

const MULTI_RECIPIENT = '/v1/messages/multi-recipient';
const bytes = (value: Uint8Array | string) => (typeof value === 'string' ? new Uint8Array(Buffer.from(value, 'base64')) : new Uint8Array(value));

interface Install {
  name: string;
  client: SecureChatClient;
  stores: SecureChatStores;
  /** Every HTTP answer this install got, in order. */
  answers: ProxiedAnswer[];
  seen: IncomingMessage[];
  updates: GroupUpdated[];
  errors: SecureChatError[];
}

async function install(name: string): Promise<Install> {
  const answers: ProxiedAnswer[] = [];
  const proxy = await startRewritingProxy(fixture.relay, (answer) => {
    answers.push(answer);
    return undefined;
  });
  const stores = createMemoryStores();
  const client = SecureChatClient.create({
    relayUrl: proxy.baseUrl,
    stores,
    trustRoot: fixture.relay.trustRoot,
    deliveryReceipts: false,
    backOff: { initialDelayMs: 20, maxDelayMs: 100 },
  });
  fixture.clients.push(client);
  const device: Install = { name, client, stores, answers, seen: [], updates: [], errors: [] };
  client.on(ChatEvent.Message, (message) => void device.seen.push(message));
  client.on(ChatEvent.GroupUpdated, (update) => void device.updates.push(update));
  client.on(ChatEvent.Error, (error) => void device.errors.push(error));
  // The proxy outlives the client; the relay's afterAll closes the server side of its sockets.
  afterAllClose.push(() => proxy.close());
  return device;
}
const afterAllClose: Array<() => Promise<void>> = [];
afterAll(async () => {
  for (const close of afterAllClose) await close();
});

/** Accepted multi-recipient uploads in `answers` (a 409 or a refused sealed attempt is not an upload). */
const uploads = (device: Install) =>
  device.answers.filter((a) => a.method === 'POST' && a.path === MULTI_RECIPIENT && a.status >= 200 && a.status < 300).length;

/** Group messages `device`'s app was handed, as `sender:text`. */
const groupLines = (device: Install, groupId: string) =>
  device.seen.filter((m) => m.group?.id === groupId).map((m) => `${m.sender}:${m.text}`);

interface QueuedRow {
  id: string;
  ciphertext: Uint8Array;
}

/** The sealed envelopes the relay holds for `username`, oldest first. */
const sealedRowsFor = (username: string) =>
  fixture.relay.sql<QueuedRow>(
    `SELECT m.id, m.ciphertext FROM messages m JOIN devices d ON d.id = m.recipient_device_row_id JOIN accounts a ON a.id = d.account_id
      WHERE a.username = $1 AND m.type = 'sealed' ORDER BY m.seq`,
    username,
  );

describe('groups: five clients, one upload per message, and a removed member locked out', () => {
  it('delivers every group message to every member device from one upload; after a removal the rest go on and the removed member cannot decrypt', async () => {
    const a1 = await install('a1');
    const bob = await install('bob');
    const carol = await install('carol');
    const dave = await install('dave');
    await a1.client.register(uniqueUsername('alice'), DEFAULT_TEST_PASSWORD);
    for (const user of [bob, carol, dave]) await user.client.register(uniqueUsername(user.name), DEFAULT_TEST_PASSWORD);
    const a2 = await install('a2');
    const linking = await a2.client.beginLinking({ pollIntervalMs: 50 });
    await a1.client.approveLink(linking.uri);
    await linking.completion;
    expect([a2.client.username, a2.client.deviceId]).toEqual([a1.client.username, 2]);

    const everyone = [a1, a2, bob, carol, dave];
    await Promise.all(everyone.map((device) => device.client.connect()));
    const alice = a1.client.username!;
    const usernameOf = (device: Install) => device.client.username!;

    // --- the group, created on a1 ---------------------------------------------------------------
    const created = await a1.client.createGroup('five clients', [usernameOf(bob), usernameOf(carol), usernameOf(dave)]);
    const groupId = created.id;
    expect(created.members).toEqual([alice, usernameOf(bob), usernameOf(carol), usernameOf(dave)].sort());
    expect(created.admins).toEqual([alice]);
    for (const device of [a2, bob, carol, dave]) {
      await until(() => device.updates.some((u) => u.group.id === groupId), `${device.name} learning the group`);
      expect((await device.client.groups()).map((g) => [g.id, g.title, g.revision, g.member])).toEqual([[groupId, 'five clients', 1, true]]);
    }

    // Joining, each member gave every other its profile key (kind 7), so every member's access key is known to all.
    for (const device of everyone) {
      for (const other of [a1, bob, carol, dave].filter((member) => usernameOf(member) !== usernameOf(device))) {
        await until(async () => (await device.stores.metadata.getPeerProfileKey(usernameOf(other))) !== null, `${device.name} holding ${other.name}'s profile key`);
      }
    }

    // --- everyone sends, everyone else receives, each from one upload ----------------------------
    const senders = [a1, bob, a2, carol, dave];
    const expected = new Map<Install, string[]>(everyone.map((device) => [device, []]));
    for (const [i, sender] of senders.entries()) {
      const text = `before removal ${i} from ${sender.name}`;
      const uploadsBefore = uploads(sender);
      const sent = await sender.client.sendGroupMessage(groupId, text);
      // One sealed upload reached the other members' devices; alice's devices send their other
      // device a second, authenticated copy (the relay cannot exempt a sealed sender's own device).
      const fromAlice = sender === a1 || sender === a2;
      expect(sent.sealed).toBe(true);
      expect([sent.recipientDevices, sent.ownDevices]).toEqual(fromAlice ? [3, 1] : [4, 0]);
      expect(uploads(sender) - uploadsBefore).toBe(fromAlice ? 2 : 1);
      for (const device of everyone) if (device !== sender) expected.get(device)!.push(`${usernameOf(sender)}:${text}`);
      for (const device of everyone) {
        await until(() => groupLines(device, groupId).length === expected.get(device)!.length, `${device.name} receiving "${text}"`);
      }
    }
    for (const device of everyone) expect(groupLines(device, groupId)).toEqual(expected.get(device));
    // Alice's messages show on her other device as hers, sent (outgoing).
    expect(a2.seen.filter((m) => m.group && m.sender === alice).map((m) => [m.outgoing, m.senderDevice])).toEqual([[true, 1]]);
    expect(bob.seen.find((m) => m.group)?.group).toEqual({ id: groupId, title: 'five clients' });

    // --- dave is removed: everyone learns it, the rest rotate their sender keys ------------------
    const removed = await a1.client.removeGroupMember(groupId, usernameOf(dave));
    expect(removed.members).not.toContain(usernameOf(dave));
    for (const device of [a2, bob, carol]) {
      await until(() => device.updates.some((u) => u.removed.includes(usernameOf(dave))), `${device.name} learning of the removal`);
    }
    await until(() => dave.updates.some((u) => u.removedSelf), 'dave learning it was removed');
    expect((await dave.client.groups())[0]).toMatchObject({ id: groupId, member: false, revision: 2 });
    const daveSeen = dave.seen.length;

    // carol goes offline, so that bob's next group message waits for her in the relay's table.
    await carol.client.close();
    const carolRowsBefore = (await sealedRowsFor(usernameOf(carol))).map((row) => row.id);
    const secret = 'after removal, from bob';
    const bobUploads = uploads(bob);
    const afterRemoval = await bob.client.sendGroupMessage(groupId, secret);
    expect(uploads(bob) - bobUploads).toBe(1);
    expect([afterRemoval.recipientDevices, afterRemoval.ownDevices, afterRemoval.sealed]).toEqual([3, 0, true]); // a1, a2, carol: not dave
    for (const device of [a1, a2]) await until(() => groupLines(device, groupId).includes(`${usernameOf(bob)}:${secret}`), `${device.name} receiving bob's message`);

    // Carol's queued part of that upload, opened with carol's identity key: bob's SenderKey message.
    const carolIdentity = carol.stores.identity;
    let senderKeyMessage: Uint8Array<ArrayBuffer> | undefined;
    let usmcBytes: Uint8Array<ArrayBuffer> | undefined;
    for (const row of await sealedRowsFor(usernameOf(carol))) {
      if (carolRowsBefore.includes(row.id)) continue;
      const usmc = await sealedSenderDecryptToUsmc(bytes(row.ciphertext), carolIdentity);
      if (usmc.msgType() !== CiphertextMessageType.SenderKey) continue;
      senderKeyMessage = usmc.contents();
      usmcBytes = usmc.serialize();
      expect(usmc.senderCertificate().senderUuid()).toBe(await bob.stores.metadata.getAccountId(usernameOf(bob)));
      expect(usmc.groupId() && Buffer.from(usmc.groupId()!).toString('base64url')).toBe(groupId);
    }
    if (!senderKeyMessage || !usmcBytes) throw new Error("bob's group message is not in carol's queue");
    const bobAddress = ProtocolAddress.new(usernameOf(bob), 1);

    // 1. dave's own stores hold bob's sender key of before the removal, not the rotated one: groupDecrypt fails.
    const daveKeys = dave.stores.senderKey;
    const rotatedDistribution = SenderKeyMessage.deserialize(senderKeyMessage).distributionId();
    expect(await daveKeys.getSenderKey(bobAddress, rotatedDistribution)).toBeNull();
    await expect(groupDecrypt(bobAddress, daveKeys, senderKeyMessage)).rejects.toThrow();

    // 2. The same inner content (bob's certificate, the SenderKey message, the group id) re-sealed to
    //    dave with bob's identity key, stored in dave's queue by the relay's sealed endpoint with dave's
    //    access key: dave's SDK drops it.
    const daveUsername = usernameOf(dave);
    const sealedForDave = await sealedSenderEncrypt(
      UnidentifiedSenderMessageContent.deserialize(usmcBytes),
      ProtocolAddress.new(daveUsername, 1),
      bob.stores.identity,
    );
    const daveProfileKey = (await dave.stores.metadata.getOwnProfileKey())!;
    const daveAccessKey = Buffer.from(new ProfileKey(new Uint8Array(daveProfileKey)).deriveAccessKey()).toString('base64');
    const daveRegistrationId = (await dave.stores.identity.getLocalIdentity())!.registrationId;
    const errorsBefore = dave.errors.length;
    await new HttpRelayTransport(fixture.relay.baseUrl).sendSealed(daveAccessKey, {
      to: daveUsername,
      id: randomUUID(),
      messages: [{ deviceId: 1, registrationId: daveRegistrationId, ciphertext: Buffer.from(sealedForDave).toString('base64') }],
    });
    await until(() => dave.errors.length > errorsBefore, "dave's SDK reporting the re-addressed message");
    expect([SecureChatErrorCode.DecryptionFailed, SecureChatErrorCode.MalformedContent]).toContain(dave.errors.at(-1)!.code);
    await until(async () => (await sealedRowsFor(daveUsername)).length === 0, 'dave acking the dropped message');
    expect(dave.seen.length).toBe(daveSeen);

    // 3. Carol, a member, reads that very ciphertext once she is back.
    await carol.client.connect();
    await until(() => groupLines(carol, groupId).includes(`${usernameOf(bob)}:${secret}`), 'carol receiving bob\'s message');

    // --- the rest go on; dave gets nothing ---------------------------------------------------------
    const remaining = [a1, a2, bob, carol];
    for (const sender of [a1, carol, a2]) {
      const text = `after removal from ${sender.name}`;
      const before = uploads(sender);
      const sent = await sender.client.sendGroupMessage(groupId, text);
      const fromAlice = sender === a1 || sender === a2;
      expect(sent.sealed).toBe(true);
      expect([sent.recipientDevices, sent.ownDevices]).toEqual(fromAlice ? [2, 1] : [3, 0]);
      expect(uploads(sender) - before).toBe(fromAlice ? 2 : 1);
      for (const device of remaining) {
        if (device === sender) continue;
        await until(() => groupLines(device, groupId).includes(`${usernameOf(sender)}:${text}`), `${device.name} receiving "${text}"`);
      }
    }
    expect(dave.seen.length).toBe(daveSeen);
    expect(await dave.client.sendGroupMessage(groupId, 'still here?').catch((error: SecureChatError) => error.code)).toBe(SecureChatErrorCode.InvalidState);
    // No member device was shown anything twice or anything it should not have.
    for (const device of remaining) {
      const lines = groupLines(device, groupId);
      expect(new Set(lines).size).toBe(lines.length);
    }
  }, 180_000);
});

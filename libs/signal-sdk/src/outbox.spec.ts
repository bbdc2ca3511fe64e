import { ErrorCode } from '@chat/protocol';
import { ProtocolAddress } from '@signalapp/libsignal-client';
import { SecureChatError, SecureChatErrorCode } from './errors.js';
import { ChatEvent, ConnectionState, type IncomingMessage, type OutboxSendFailed, type OutboxSent } from './events.js';
import { asDeviceId } from './ids.js';
import { SecureChatClient } from './secure-chat-client.js';
import { createMemoryStores } from './stores/memory-stores.js';
import type { SecureChatStores } from './stores/stores.js';
import { FakeRelay } from './test-support/fake-relay.js';
import { until } from './test-support/spec-helpers.js';

// The outbox and the fan-out's device correction (docs/architecture.md,
// "The outbox" and "Fan-out and device correction"), against the fake relay,
// which checks device lists and registration ids as the relay does and
// remembers accepted send ids.

const PASSWORD = 'correct horse battery';

async function setUp() {
  const relay = new FakeRelay();
  const make = async (name: string, stores: SecureChatStores = createMemoryStores()) => {
    const client = SecureChatClient.create({
      relayUrl: 'http://127.0.0.1:1',
      transport: relay.transport(),
      stores,
      backOff: { initialDelayMs: 5, maxDelayMs: 20 },
      // Receipts would add sends of their own to what these tests count.
      deliveryReceipts: false,
    });
    return client;
  };
  const aliceStores = createMemoryStores();
  const alice = await make('alice', aliceStores);
  await alice.register('alice', PASSWORD);
  const bob = await make('bob');
  await bob.register('bob', PASSWORD);
  const bobTexts: string[] = [];
  bob.on(ChatEvent.Message, (message: IncomingMessage) => void bobTexts.push(message.text ?? ''));
  return { relay, alice, aliceStores, bob, bobTexts, make };
}

const storedFrom = (relay: FakeRelay, from: string) => relay.stored.filter((s) => s.from === from);

describe('the outbox', () => {
  it('sends in the order queued, one at a time, each with its own UUID as the request id', async () => {
    const { relay, alice, bob, bobTexts } = await setUp();
    await bob.connect();
    const sends = ['one', 'two', 'three', 'four'].map((text) => alice.send('bob', text));
    const results = await Promise.all(sends);

    expect(relay.sends.map((s) => s.request.id)).toEqual(results.map((r) => r.id));
    expect(new Set(results.map((r) => r.id)).size).toBe(4);
    expect(results.map((r) => r.timestamp)).toEqual([...results.map((r) => r.timestamp)].sort((a, b) => a - b));
    await until(() => bobTexts.length === 4);
    expect(bobTexts).toEqual(['one', 'two', 'three', 'four']);
    await expect(alice.stores.metadata.getOutgoing()).resolves.toEqual([]);
    await Promise.all([alice.close(), bob.close()]);
  });

  it('carries the registration id of each session and an empty sync list when the account has no other device', async () => {
    const { relay, alice } = await setUp();
    const sent = await alice.send('bob', 'hello');
    const [{ request }] = relay.sends as [(typeof relay.sends)[number]];
    expect(request.messages.map((m) => [m.deviceId, m.registrationId])).toEqual([[1, relay.accounts.get('bob')!.keys!.registrationId]]);
    expect(request.sync).toEqual([]);
    expect(sent).toEqual(expect.objectContaining({ devices: [1], syncDevices: [] }));
    await alice.close();
  });

  it('after a lost answer sends the same id again once reconnected, and the relay stores it once', async () => {
    const { relay, alice, bob, bobTexts } = await setUp();
    await Promise.all([alice.connect(), bob.connect()]);
    relay.loseAnswers = 1;
    const reconnected = new Promise<void>((resolve) =>
      alice.on(ChatEvent.ConnectionState, (state) => {
        if (state === ConnectionState.Reconnecting) resolve();
      }),
    );

    const sent = await alice.send('bob', 'exactly once');
    await reconnected;

    expect(relay.sends.map((s) => s.request.id)).toEqual([sent.id, sent.id]);
    expect(storedFrom(relay, 'alice')).toHaveLength(1);
    expect(sent.serverTimestamp).toBe(storedFrom(relay, 'alice')[0]!.envelope.serverTimestamp);
    await until(() => bobTexts.length === 1);
    expect(bobTexts).toEqual(['exactly once']);
    await Promise.all([alice.close(), bob.close()]);
  });

  it('while connect() is in effect, queues sends during an outage and flushes them once, in order, when reconnected', async () => {
    const { relay, alice, bob, bobTexts } = await setUp();
    await Promise.all([alice.connect(), bob.connect()]);
    relay.unreachable = true;
    relay.closeSocketOf('alice', 1006, 'network down');
    const settled: string[] = [];
    const first = alice.send('bob', 'during the outage 1').then((s) => (settled.push('1'), s));
    const second = alice.send('bob', 'during the outage 2').then((s) => (settled.push('2'), s));
    await until(async () => (await alice.stores.metadata.getOutgoing()).length === 2);
    await new Promise((resolve) => setTimeout(resolve, 60));
    expect(settled).toEqual([]);
    expect(storedFrom(relay, 'alice')).toHaveLength(0);

    relay.unreachable = false;
    const [one, two] = await Promise.all([first, second]);

    expect(settled).toEqual(['1', '2']);
    expect(storedFrom(relay, 'alice')).toHaveLength(2);
    expect(new Set(relay.sends.map((s) => s.request.id))).toEqual(new Set([one.id, two.id]));
    await until(() => bobTexts.length === 2);
    expect(bobTexts).toEqual(['during the outage 1', 'during the outage 2']);
    await expect(alice.stores.metadata.getOutgoing()).resolves.toEqual([]);
    await Promise.all([alice.close(), bob.close()]);
  });

  it('without connect(), rejects with the transient error and keeps the message: the next send sends it first and reports it with sent', async () => {
    const { relay, alice, bob, bobTexts } = await setUp();
    await bob.connect();
    relay.unreachable = true;
    const failed = await alice.send('bob', 'kept').catch((error: unknown) => error);
    expect(SecureChatError.is(failed, SecureChatErrorCode.Network)).toBe(true);
    const [kept] = await alice.stores.metadata.getOutgoing();
    expect(kept?.recipient).toBe('bob');

    relay.unreachable = false;
    const reported: OutboxSent[] = [];
    alice.on(ChatEvent.Sent, (sent) => void reported.push(sent));
    await alice.send('bob', 'next');

    expect(reported).toEqual([expect.objectContaining({ id: kept!.id, recipient: 'bob', timestamp: kept!.timestamp })]);
    await until(() => bobTexts.length === 2);
    expect(bobTexts).toEqual(['kept', 'next']);
    await Promise.all([alice.close(), bob.close()]);
  });

  it('sends what an earlier run left in the outbox after connect(): sent for an accepted one, sendFailed for a refused one', async () => {
    const { relay, alice, aliceStores, bob, bobTexts, make } = await setUp();
    await bob.connect();
    relay.unreachable = true;
    await expect(alice.send('bob', 'from the last run')).rejects.toMatchObject({ code: SecureChatErrorCode.Network });
    await expect(alice.send('nobody', 'to no one')).rejects.toMatchObject({ code: SecureChatErrorCode.Network });
    const queued = await aliceStores.metadata.getOutgoing();
    expect(queued.map((m) => m.recipient)).toEqual(['bob', 'nobody']);
    await alice.close();
    relay.unreachable = false;

    const restarted = await make('alice', aliceStores);
    const sent = new Promise<OutboxSent>((resolve) => restarted.once(ChatEvent.Sent, resolve));
    const failed = new Promise<OutboxSendFailed>((resolve) => restarted.once(ChatEvent.SendFailed, resolve));
    await restarted.resume();
    expect(relay.sends).toHaveLength(0);
    await restarted.connect();

    expect(await sent).toEqual(expect.objectContaining({ id: queued[0]!.id, recipient: 'bob' }));
    const failure = await failed;
    expect(failure).toEqual(expect.objectContaining({ id: queued[1]!.id, recipient: 'nobody' }));
    expect(failure.error.relayCode).toBe(ErrorCode.UnknownRecipient);
    await until(() => bobTexts.length === 1);
    expect(bobTexts).toEqual(['from the last run']);
    await expect(aliceStores.metadata.getOutgoing()).resolves.toEqual([]);
    await Promise.all([restarted.close(), bob.close()]);
  });

  it('waits for a send already queued under the id passed, instead of queueing another', async () => {
    const { relay, alice } = await setUp();
    const id = '6f1c1a52-3b8e-4d0e-9a55-9a8f1b0b7d11';
    const [a, b] = await Promise.all([alice.send('bob', 'first', { id }), alice.send('bob', 'ignored', { id })]);
    expect(a).toEqual(b);
    expect(relay.sends.map((s) => s.request.id)).toEqual([id]);
    await expect(alice.send('bob', 'x', { id: 'not-a-uuid' })).rejects.toMatchObject({ code: SecureChatErrorCode.InvalidArgument });
    await alice.close();
  });
});

describe('fan-out device correction', () => {
  it('409 extra: deletes the session of a device the recipient does not have, forgets it, and sends again', async () => {
    const { relay, alice, aliceStores, bob, bobTexts } = await setUp();
    await bob.connect();
    await alice.send('bob', 'first');
    // Alice believes bob has a device 2 (one that was since removed).
    const bob1 = ProtocolAddress.new('bob', 1);
    const bob2 = ProtocolAddress.new('bob', 2);
    await aliceStores.session.saveSession(bob2, (await aliceStores.session.getSession(bob1))!);
    await aliceStores.metadata.savePeerDevices('bob', [asDeviceId(1), asDeviceId(2)]);

    const sent = await alice.send('bob', 'second');

    expect(relay.sends.slice(1).map((s) => s.request.messages.map((m) => m.deviceId))).toEqual([[1, 2], [1]]);
    expect(sent.devices).toEqual([1]);
    await expect(aliceStores.session.getSession(bob2)).resolves.toBeNull();
    await expect(aliceStores.metadata.getPeerDevices('bob')).resolves.toEqual([1]);
    await until(() => bobTexts.length === 2);
    expect(bobTexts).toEqual(['first', 'second']);
    await Promise.all([alice.close(), bob.close()]);
  });

  it('409 missing: fetches the bundle, opens sessions for the missing devices, and sends again', async () => {
    const { relay, alice, bob, bobTexts } = await setUp();
    await bob.connect();
    await alice.send('bob', 'first');
    const fetches = relay.bundleFetches.length;
    let staged = false;
    relay.refuseSend = (_from, request) => {
      if (staged) return undefined;
      staged = true;
      return new SecureChatError(SecureChatErrorCode.RelayRejected, 'MISMATCHED_DEVICES', {
        relayCode: ErrorCode.MismatchedDevices,
        status: 409,
        mismatched: [{ username: request.to, missing: [1], extra: [] }],
      });
    };

    await alice.send('bob', 'second');

    expect(relay.bundleFetches.slice(fetches)).toEqual([{ by: 'alice', of: 'bob' }]);
    expect(relay.sends).toHaveLength(3);
    await until(() => bobTexts.length === 2);
    expect(bobTexts).toEqual(['first', 'second']);
    await Promise.all([alice.close(), bob.close()]);
  });

  it('410: deletes the stale session, opens a new one from a fresh bundle, and sends again', async () => {
    const { relay, alice, aliceStores, bob, bobTexts } = await setUp();
    await bob.connect();
    const registrationId = relay.accounts.get('bob')!.keys!.registrationId;
    // The first bundle names another registration id: alice's session with bob.1 is stale from the start.
    const wrong = registrationId === 1 ? 2 : registrationId - 1;
    relay.rewriteBundle = (bundle) => ({ ...bundle, devices: bundle.devices.map((d) => ({ ...d, registrationId: wrong })) });
    let rewrites = 0;
    const rewrite = relay.rewriteBundle;
    relay.rewriteBundle = (bundle) => (rewrites++ === 0 ? rewrite(bundle) : bundle);

    const sent = await alice.send('bob', 'after a stale session');

    expect(relay.sends.map((s) => s.request.messages[0]!.registrationId)).toEqual([wrong, registrationId]);
    expect(relay.sends[0]!.request.id).toBe(sent.id);
    expect(relay.sends[1]!.request.id).toBe(sent.id);
    expect((await aliceStores.session.getSession(ProtocolAddress.new('bob', 1)))!.remoteRegistrationId()).toBe(registrationId);
    await until(() => bobTexts.length === 1);
    expect(bobTexts).toEqual(['after a stale session']);
    await Promise.all([alice.close(), bob.close()]);
  });

  it('gives up after 3 corrections: the send rejects with the relay refusal and leaves the outbox', async () => {
    const { relay, alice } = await setUp();
    relay.refuseSend = (_from, request) =>
      new SecureChatError(SecureChatErrorCode.RelayRejected, 'MISMATCHED_DEVICES', {
        relayCode: ErrorCode.MismatchedDevices,
        status: 409,
        mismatched: [{ username: request.to, missing: [1], extra: [] }],
      });
    await expect(alice.send('bob', 'never accepted')).rejects.toMatchObject({ relayCode: ErrorCode.MismatchedDevices });
    expect(relay.sends).toHaveLength(4);
    await expect(alice.stores.metadata.getOutgoing()).resolves.toEqual([]);
    await alice.close();
  });
});

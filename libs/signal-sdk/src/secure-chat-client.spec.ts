import { randomUUID } from 'node:crypto';
import type { Envelope } from '@chat/protocol';
import { EnvelopeType } from '@chat/protocol';
import { ProtocolAddress, SessionRecord } from '@signalapp/libsignal-client';
import { SecureChatError, SecureChatErrorCode } from './errors.js';
import { ChatEvent, ConnectionState, SessionResetReason, type IncomingMessage, type SessionReset } from './events.js';
import { SecureChatClient, type SecureChatClientOptions } from './secure-chat-client.js';
import { MemorySessionStore, createMemoryStores } from './stores/memory-stores.js';
import { SESSION_REPAIR_WINDOW_MS, type SecureChatStores } from './stores/stores.js';
import { FakeRelay } from './test-support/fake-relay.js';
import { waitForEvent, waitForMessage } from './testing/wait-for.js';
import { until } from './test-support/spec-helpers.js';

const settle = () => new Promise((resolve) => setTimeout(resolve, 20));

async function pair(options: Pick<SecureChatClientOptions, 'autoAck' | 'now' | 'sessionResetIntervalMs'> = {}) {
  const relay = new FakeRelay();
  const make = async (name: string, stores: SecureChatStores = createMemoryStores()) => {
    const client = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores, ...options });
    await client.register(name, 'correct horse battery');
    return client;
  };
  const alice = await make('alice');
  const bob = await make('bob');
  return { relay, alice, bob };
}

describe('SecureChatClient', () => {
  it('validates the relay URL', () => {
    expect(() => SecureChatClient.create({ relayUrl: 'ftp://relay.example' })).toThrow(
      expect.objectContaining({ code: SecureChatErrorCode.InvalidOptions }),
    );
    expect(() => SecureChatClient.create({ relayUrl: 'not a url' })).toThrow(SecureChatError);
    expect(() => SecureChatClient.create({ relayUrl: 'https://relay.example/' })).not.toThrow();
  });

  it('uploads only public keys: no private key byte string from the stores appears in the upload', async () => {
    const stores = createMemoryStores();
    const relay = new FakeRelay();
    const client = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores });
    await client.register('alice', 'correct horse battery');

    const [upload] = relay.uploads;
    expect(upload?.keys.preKeys).toHaveLength(100);
    expect(upload?.keys.kyberPreKeys).toHaveLength(100);
    expect(upload?.keys.signedPreKey).toBeDefined();
    expect(upload?.keys.kyberLastResortPreKey).toBeDefined();

    const identity = (await stores.identity.getLocalIdentity())!;
    const secrets: Uint8Array[] = [identity.identityKeyPair.privateKey.serialize()];
    secrets.push((await stores.signedPreKey.getSignedPreKey(upload!.keys.signedPreKey!.keyId)).privateKey().serialize());
    secrets.push((await stores.kyberPreKey.getKyberPreKey(upload!.keys.kyberLastResortPreKey!.keyId)).secretKey().serialize());
    for (const { keyId } of upload!.keys.preKeys!) secrets.push((await stores.preKey.getPreKey(keyId)).privateKey().serialize());
    for (const { keyId } of upload!.keys.kyberPreKeys!) secrets.push((await stores.kyberPreKey.getKyberPreKey(keyId)).secretKey().serialize());
    expect(secrets).toHaveLength(203);

    const uploaded = JSON.stringify(relay.uploads);
    const uploadedBytes = Buffer.concat(
      [...uploaded.matchAll(/"([A-Za-z0-9+/]{40,}={0,2})"/g)].map((m) => Buffer.from(m[1]!, 'base64')),
    );
    for (const secret of secrets) {
      // Curve25519 private keys are 32 bytes; Kyber secret keys carry a type byte: compare the raw key material.
      const material = Buffer.from(secret.length > 32 ? secret.subarray(1) : secret);
      expect(uploadedBytes.includes(material)).toBe(false);
      expect(uploaded.includes(material.toString('base64').slice(0, 40))).toBe(false);
      expect(uploaded.includes(material.toString('hex').slice(0, 40))).toBe(false);
    }
  });

  it('delivers a first message and replies, acking each only after every listener has finished', async () => {
    const { relay, alice, bob } = await pair();
    await bob.connect();
    const events: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    bob.on(ChatEvent.Message, async (message) => {
      events.push(`listener start ${message.text}`);
      await gate;
      events.push('listener end');
    });
    bob.on(ChatEvent.Message, () => {
      events.push('second listener');
    });

    await alice.send('bob', 'hello bob');
    await settle();
    expect(events).toEqual(['listener start hello bob']);
    expect(relay.acked).toHaveLength(0);
    expect(relay.queueOf('bob')).toHaveLength(1);

    release();
    await settle();
    expect(events).toEqual(['listener start hello bob', 'listener end', 'second listener']);
    expect(relay.acked).toHaveLength(1);
    expect(relay.queueOf('bob')).toHaveLength(0);

    const reply = waitForMessage(alice, (m) => m.text === 'hi alice');
    await alice.connect();
    await bob.send('alice', 'hi alice');
    const got = await reply;
    expect(got.sender).toBe('bob');
    expect(got.senderDevice).toBe(1);
    await alice.close();
    await bob.close();
  });

  it('does not ack a message when a listener throws, reports ListenerFailed, and delivers it again on reconnect', async () => {
    const { relay, alice, bob } = await pair();
    const errors: SecureChatError[] = [];
    bob.on(ChatEvent.Error, (error) => errors.push(error));
    let fail = true;
    const seen: string[] = [];
    bob.on(ChatEvent.Message, (message) => {
      seen.push(message.text ?? '');
      if (fail) throw new Error('app crashed');
    });
    await bob.connect();
    await alice.send('bob', 'fragile');
    await settle();
    expect(errors.map((e) => e.code)).toEqual([SecureChatErrorCode.ListenerFailed]);
    expect(errors[0]?.incoming?.sender).toBe('alice');
    expect(relay.acked).toHaveLength(0);
    expect(relay.queueOf('bob')).toHaveLength(1);

    fail = false;
    await bob.close();
    await bob.connect();
    await settle();
    expect(seen).toEqual(['fragile', 'fragile']);
    expect(relay.queueOf('bob')).toHaveLength(0);
  });

  it('reports an undecryptable message with DecryptionFailed, never its bytes, and acks it so it is not retried forever', async () => {
    const { relay, alice, bob } = await pair();
    await bob.connect();
    const error = waitForEvent(bob, ChatEvent.Error);
    const messages: IncomingMessage[] = [];
    bob.on(ChatEvent.Message, (m) => void messages.push(m));
    const id = randomUUID();
    relay.deliver('bob', {
      id,
      source: 'alice',
      sourceDevice: 1,
      type: EnvelopeType.Signal,
      ciphertext: Buffer.from('not a signal message at all').toString('base64'),
      serverTimestamp: Date.now(),
    });
    const [reported] = await error;
    expect(reported.code).toBe(SecureChatErrorCode.DecryptionFailed);
    expect(reported.incoming).toEqual({ messageId: id, sender: 'alice', senderDevice: 1 });
    await settle();
    expect(relay.acked).toEqual([id]);
    expect(messages).toHaveLength(0);

    // The session still works afterwards.
    const next = waitForMessage(bob);
    await alice.send('bob', 'still fine');
    expect((await next).text).toBe('still fine');
  });

  it('with autoAck false, leaves the ack to message.ack()', async () => {
    const { relay, alice, bob } = await pair({ autoAck: false });
    await bob.connect();
    const received = waitForMessage(bob);
    await alice.send('bob', new Uint8Array([1, 2, 3]));
    const message = await received;
    expect([...message.body]).toEqual([1, 2, 3]);
    expect(message.text).toBeUndefined();
    await settle();
    expect(relay.acked).toHaveLength(0);
    await message.ack();
    await message.ack();
    expect(relay.acked).toEqual([message.id]);
  });

  it('emits messages stored while offline in order, then queueEmpty, and tracks connection state', async () => {
    const { alice, bob } = await pair();
    for (let i = 0; i < 5; i++) await alice.send('bob', `offline ${i}`);
    const states: ConnectionState[] = [];
    const order: string[] = [];
    bob.on(ChatEvent.ConnectionState, (state) => states.push(state));
    bob.on(ChatEvent.Message, (m) => void order.push(m.text!));
    const empty = waitForEvent(bob, ChatEvent.QueueEmpty);
    bob.on(ChatEvent.QueueEmpty, () => order.push('queue empty'));
    await bob.connect();
    await empty;
    expect(order).toEqual(['offline 0', 'offline 1', 'offline 2', 'offline 3', 'offline 4', 'queue empty']);
    await bob.close();
    expect(states).toEqual([ConnectionState.Connecting, ConnectionState.Connected, ConnectionState.Disconnected]);
  });

  it('refuses to send before signing in and to send an oversized body', async () => {
    const client = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: new FakeRelay().transport() });
    await expect(client.send('bob', 'x')).rejects.toMatchObject({ code: SecureChatErrorCode.InvalidState });
    const { alice } = await pair();
    await expect(alice.send('bob', new Uint8Array(70 * 1024))).rejects.toMatchObject({ code: SecureChatErrorCode.InvalidArgument });
  });

  it('login without a local identity is refused', async () => {
    const client = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: new FakeRelay().transport() });
    await expect(client.login('alice', 'correct horse battery')).rejects.toMatchObject({ code: SecureChatErrorCode.NoLocalIdentity });
  });
});

describe('SecureChatClient on stores that outlive it', () => {
  it('keeps the refresh token in the stores, so a new client on them resumes without the password and goes on with the session', async () => {
    const { relay, alice } = await pair();
    const bobStores = createMemoryStores();
    const bob = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores: bobStores });
    await bob.register('bob', 'correct horse battery');
    await expect(bobStores.metadata.getRefreshToken()).resolves.toBe('refresh:bob:0');
    await bob.connect();
    const first = waitForMessage(bob);
    await alice.send('bob', 'before the restart');
    await first;
    await bob.close();
    const uploads = relay.uploads.length;

    const restarted = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores: bobStores });
    await restarted.resume();
    expect(restarted.username).toBe('bob');
    expect(relay.uploads).toHaveLength(uploads);
    await restarted.connect();
    const next = waitForMessage(restarted);
    await alice.send('bob', 'after the restart');
    expect((await next).text).toBe('after the restart');
    await restarted.close();
  });

  it('refuses resume without a kept session (InvalidState) and with a refused token (SessionExpired, then forgets it)', async () => {
    const relay = new FakeRelay();
    const stores = createMemoryStores();
    const client = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores });
    await expect(client.resume()).rejects.toMatchObject({ code: SecureChatErrorCode.NoLocalIdentity });
    await client.register('carol', 'correct horse battery');
    await stores.metadata.saveRefreshToken(null);
    await expect(client.resume()).rejects.toMatchObject({ code: SecureChatErrorCode.InvalidState });
    await stores.metadata.saveRefreshToken('revoked-token');
    await expect(client.resume()).rejects.toMatchObject({ code: SecureChatErrorCode.SessionExpired });
    await expect(stores.metadata.getRefreshToken()).resolves.toBeNull();
  });

  it('emits a message decrypted but not acked again from the stores after a restart, though it can never decrypt again', async () => {
    const { relay, alice } = await pair();
    const bobStores = createMemoryStores();
    const bob = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores: bobStores, autoAck: false });
    await bob.register('bob', 'correct horse battery');
    await bob.connect();
    const first = waitForMessage(bob);
    await alice.send('bob', 'read, never acked');
    const unacked = await first;
    await bob.close();
    expect(relay.queueOf('bob').map((e) => e.id)).toEqual([unacked.id]);
    await expect(bobStores.metadata.getPendingMessage(unacked.id)).resolves.not.toBeNull();

    const restarted = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores: bobStores });
    const errors: SecureChatError[] = [];
    restarted.on(ChatEvent.Error, (error) => errors.push(error));
    await restarted.resume();
    const again = waitForMessage(restarted);
    await restarted.connect();
    const message = await again;
    expect({ id: message.id, text: message.text, timestamp: message.timestamp }).toEqual({
      id: unacked.id,
      text: 'read, never acked',
      timestamp: unacked.timestamp,
    });
    await settle();
    expect(errors).toEqual([]);
    expect(relay.queueOf('bob')).toHaveLength(0);
    await expect(bobStores.metadata.getPendingMessage(unacked.id)).resolves.toBeNull();
    await restarted.close();
  });

  it('reports a store failure during decryption as StoreFailure and leaves the message for a retry (libsignal alone calls it a decryption failure)', async () => {
    class FlakySessionStore extends MemorySessionStore {
      failures = 0;
      override async getSession(...args: Parameters<MemorySessionStore['getSession']>) {
        if (this.failures > 0) {
          this.failures--;
          throw new Error('disk I/O error');
        }
        return super.getSession(...args);
      }
    }
    const relay = new FakeRelay();
    const alice = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport() });
    await alice.register('alice', 'correct horse battery');
    const session = new FlakySessionStore();
    const bob = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores: { session } });
    await bob.register('bob', 'correct horse battery');
    const errors: SecureChatError[] = [];
    bob.on(ChatEvent.Error, (error) => errors.push(error));
    const seen: string[] = [];
    bob.on(ChatEvent.Message, (m) => void seen.push(m.text ?? ''));
    await alice.send('bob', 'kept for a retry');

    session.failures = 1;
    await bob.connect();
    await settle();
    expect(errors.map((e) => e.code)).toEqual([SecureChatErrorCode.StoreFailure]);
    const storeError = errors[0]?.cause as SecureChatError;
    expect(storeError.code).toBe(SecureChatErrorCode.StoreFailure);
    expect((storeError.cause as Error).message).toBe('disk I/O error');
    expect(seen).toEqual([]);
    expect(relay.queueOf('bob')).toHaveLength(1);

    await bob.close();
    await bob.connect();
    await settle();
    expect(seen).toEqual(['kept for a retry']);
    expect(relay.queueOf('bob')).toHaveLength(0);
    await bob.close();
  });
});

/** What one client's app saw. */
function watch(client: SecureChatClient) {
  const seen = { texts: [] as string[], resets: [] as SessionReset[], errors: [] as SecureChatError[] };
  client.on(ChatEvent.Message, (m) => void seen.texts.push(m.text ?? ''));
  client.on(ChatEvent.SessionReset, (reset) => void seen.resets.push(reset));
  client.on(ChatEvent.Error, (error) => void seen.errors.push(error));
  return seen;
}

/** Replaces the stored session with an empty record: the session is gone, as if deleted. */
const deleteSession = (stores: SecureChatStores, peer: string) =>
  stores.session.saveSession(ProtocolAddress.new(peer, 1), SessionRecord.deserialize(new Uint8Array(0)));

const flipLastByte = (envelope: Envelope): Envelope => {
  const bytes = Buffer.from(envelope.ciphertext, 'base64');
  bytes[bytes.length - 1]! ^= 1;
  return { ...envelope, ciphertext: bytes.toString('base64') };
};

describe('session repair', () => {
  async function talkingPair(options: Pick<SecureChatClientOptions, 'now' | 'sessionResetIntervalMs'> = {}) {
    const relay = new FakeRelay();
    const make = async (name: string) => {
      const stores = createMemoryStores();
      // No delivery receipts: these tests count what goes over the wire, repair traffic only.
      const client = SecureChatClient.create({
        relayUrl: 'http://127.0.0.1:1',
        transport: relay.transport(),
        stores,
        deliveryReceipts: false,
        ...options,
      });
      await client.register(name, 'correct horse battery');
      return { client, stores, seen: watch(client) };
    };
    const alice = await make('alice');
    const bob = await make('bob');
    await alice.client.connect();
    await bob.client.connect();
    await alice.client.send('bob', 'open');
    await until(() => bob.seen.texts.length === 1);
    await bob.client.send('alice', 'ack');
    await until(() => alice.seen.texts.length === 1);
    const drained = () => relay.queueOf('alice').length === 0 && relay.queueOf('bob').length === 0;
    return { relay, alice, bob, drained };
  }

  it('recovers a session deleted behind the receiver: one reset request, the lost messages resent once each, sessionReset on both sides', async () => {
    const { relay, alice, bob, drained } = await talkingPair();
    await deleteSession(bob.stores, 'alice');

    await alice.client.send('bob', 'm1');
    await alice.client.send('bob', 'm2');
    await until(() => bob.seen.texts.length === 3);
    await bob.client.send('alice', 'bob after the repair');
    await until(() => alice.seen.texts.length === 2);
    await alice.client.send('bob', 'alice after the repair');
    await until(() => bob.seen.texts.length === 4 && drained());

    // A duplicate would have come before alice's last message: the relay keeps the order.
    expect(bob.seen.texts).toEqual(['open', 'm1', 'm2', 'alice after the repair']);
    expect(alice.seen.texts).toEqual(['ack', 'bob after the repair']);
    expect(bob.seen.resets).toEqual([{ peer: 'alice', device: 1, reason: SessionResetReason.NoSession, initiator: 'local' }]);
    expect(alice.seen.resets).toEqual([{ peer: 'bob', device: 1, reason: SessionResetReason.PeerRequest, initiator: 'peer' }]);
    expect([...alice.seen.errors, ...bob.seen.errors]).toEqual([]);
    // On the wire: m1 and m2 on the lost session, one request, their two resends, then the two replies.
    const wire = relay.stored.slice(2).map(({ from, envelope }) => `${from}:${envelope.type}`);
    expect(wire).toEqual(['alice:signal', 'alice:signal', 'bob:prekey', 'alice:signal', 'alice:signal', 'bob:signal', 'alice:signal']);
  });

  it('drops the resend of a message already delivered: a single damaged message is resent with what followed it, each shown once', async () => {
    const { relay, alice, bob, drained } = await talkingPair();
    relay.tamper = (envelope) => {
      relay.tamper = undefined;
      return flipLastByte(envelope);
    };
    await alice.client.send('bob', 'damaged in transit');
    await alice.client.send('bob', 'arrived whole');
    await until(() => bob.seen.texts.length === 3);
    await alice.client.send('bob', 'later');
    await until(() => bob.seen.texts.length === 4 && drained());

    expect(bob.seen.texts).toEqual(['open', 'arrived whole', 'damaged in transit', 'later']);
    expect(bob.seen.resets.map((r) => r.reason)).toEqual([SessionResetReason.InvalidMessage]);
    // Both were resent; bob dropped the copy of the one he had.
    const fromAlice = relay.stored.filter((s) => s.from === 'alice').length;
    expect(fromAlice).toBe(1 + 2 + 2 + 1);
    expect(bob.seen.errors).toEqual([]);
  });

  it('acks an undecryptable message only once the reset request is sent: a failed request leaves it for the next connection', async () => {
    const { relay, alice, bob, drained } = await talkingPair();
    await deleteSession(bob.stores, 'alice');
    relay.bundleFailures = 1;

    await alice.client.send('bob', 'kept on the relay');
    await until(() => bob.seen.errors.length === 1);
    expect(bob.seen.errors[0]?.code).toBe(SecureChatErrorCode.SessionRepairFailed);
    expect(bob.seen.errors[0]?.incoming?.sender).toBe('alice');
    expect(relay.queueOf('bob')).toHaveLength(1);
    expect(bob.seen.resets).toEqual([]);

    await bob.client.close();
    await bob.client.connect();
    await until(() => bob.seen.texts.length === 2 && drained());
    expect(bob.seen.texts).toEqual(['open', 'kept on the relay']);
    expect(bob.seen.resets).toHaveLength(1);
    expect(alice.seen.resets).toHaveLength(1);
  });

  it('resends nothing older than the repair window', async () => {
    const clock = { now: 1_800_000_000_000 };
    const { relay, alice, bob, drained } = await talkingPair({ now: () => clock.now });
    await bob.client.close();
    const old = await alice.client.send('bob', 'sent a day and more ago');
    clock.now = old.timestamp + SESSION_REPAIR_WINDOW_MS + 1;
    await alice.client.send('bob', 'sent just now');
    await deleteSession(bob.stores, 'alice');

    await bob.client.connect();
    await until(() => bob.seen.texts.length === 2 && drained());
    expect(bob.seen.texts).toEqual(['open', 'sent just now']);
    expect(bob.seen.resets).toHaveLength(1);
    expect(relay.stored.filter((s) => s.from === 'alice')).toHaveLength(1 + 2 + 1);
  });

  it('two clients whose every message arrives damaged do not loop: at most one reset request each per interval, no hidden traffic; new messages arrive once the damage stops', async () => {
    const interval = 1_000;
    const clock = { now: 1_800_000_000_000 };
    const { relay, alice, bob, drained } = await talkingPair({ now: () => clock.now, sessionResetIntervalMs: interval });
    const before = relay.stored.length;
    relay.tamper = flipLastByte;

    const rounds = 20;
    const step = 250;
    for (let i = 0; i < rounds; i++) {
      clock.now += step;
      await alice.client.send('bob', `alice ${i}`);
      await bob.client.send('alice', `bob ${i}`);
      await until(drained);
    }
    const requests = (seen: typeof alice.seen) => seen.resets.filter((r) => r.initiator === 'local').length;
    const bound = Math.ceil((rounds * step) / interval);
    for (const side of [alice, bob]) {
      expect(requests(side.seen)).toBeGreaterThanOrEqual(1);
      expect(requests(side.seen)).toBeLessThanOrEqual(bound);
      // The requests were damaged too: nobody was asked to resend. Nothing of the peer ever
      // decrypted, so every failure between two requests counted as covered by the unanswered one.
      expect(side.seen.resets.filter((r) => r.initiator === 'peer')).toEqual([]);
      expect(side.seen.errors).toEqual([]);
    }
    expect(relay.stored.length - before).toBe(2 * rounds + requests(alice.seen) + requests(bob.seen));

    relay.tamper = undefined;
    clock.now += interval;
    await alice.client.send('bob', 'alice, healed');
    await until(() => bob.seen.texts.includes('alice, healed'));
    await bob.client.send('alice', 'bob, healed');
    await until(() => alice.seen.texts.includes('bob, healed'));
    // What each app saw of the damaged period: a sessionReset per request it sent, no error, and
    // none of the damaged messages: their senders were never reached, so they are not resent.
    expect(bob.seen.texts).toEqual(['open', 'alice, healed']);
    expect(alice.seen.texts).toEqual(['ack', 'bob, healed']);
  });

  it('resends nothing when a reset request comes with a new identity key (a relay could claim to be the peer), and says so', async () => {
    const { relay, alice, bob } = await talkingPair();
    await bob.client.close();
    // Someone else takes over the name at the relay, with keys of its own; the relay, in on it,
    // lets alice's send through on her old session although the registration id changed.
    relay.checkRegistrationIds = false;
    const impostor = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport() });
    const impostorSaw = watch(impostor);
    await impostor.register('bob', 'correct horse battery');
    const storedBefore = relay.stored.length;
    await alice.client.send('bob', 'also for the real bob');
    await impostor.connect();

    await until(() => alice.seen.errors.length === 1);
    expect(alice.seen.errors[0]?.code).toBe(SecureChatErrorCode.UntrustedIdentity);
    expect(alice.seen.resets).toEqual([]);
    expect(impostorSaw.resets.map((r) => r.initiator)).toEqual(['local']);
    // The impostor's request reached alice, and alice sent nothing back.
    expect(relay.stored.slice(storedBefore).map((s) => `${s.from}->${s.to}`)).toEqual(['alice->bob', 'bob->alice']);
    expect(impostorSaw.texts).toEqual([]);
    await impostor.close();
  });

  it("does not ask a peer whose bundle now has another identity key: DecryptionFailed, acked, not retried", async () => {
    const { relay, alice, bob, drained } = await talkingPair();
    await bob.client.close();
    relay.tamper = (envelope) => {
      relay.tamper = undefined;
      return flipLastByte(envelope);
    };
    await alice.client.send('bob', 'damaged in transit');
    const impostor = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport() });
    await impostor.register('alice', 'correct horse battery');
    const storedBefore = relay.stored.length;

    await bob.client.connect();
    await until(() => bob.seen.errors.length === 1 && drained());
    expect(bob.seen.errors[0]?.code).toBe(SecureChatErrorCode.DecryptionFailed);
    expect((bob.seen.errors[0]?.cause as SecureChatError).code).toBe(SecureChatErrorCode.IdentityChanged);
    expect(bob.seen.resets).toEqual([]);
    expect(relay.stored.length).toBe(storedBefore);
  });

  it('refuses a sessionResetIntervalMs that is not a positive integer', () => {
    for (const sessionResetIntervalMs of [0, -1, 1.5, Number.NaN]) {
      expect(() => SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', sessionResetIntervalMs })).toThrow(
        expect.objectContaining({ code: SecureChatErrorCode.InvalidOptions }),
      );
    }
  });
});


describe('receipts, typing and ephemeral envelopes', () => {
  async function pair(bobOptions: Partial<SecureChatClientOptions> = {}) {
    const relay = new FakeRelay();
    const make = async (name: string, options: Partial<SecureChatClientOptions> = {}) => {
      const stores = createMemoryStores();
      const client = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores, ...options });
      await client.register(name, 'correct horse battery');
      await client.connect();
      return { client, stores, seen: watch(client) };
    };
    return { relay, alice: await make('alice'), bob: await make('bob', bobOptions) };
  }

  it('emits typing from an ephemeral envelope without acking it; the next stored message is acked and recorded as processed', async () => {
    const { relay, alice, bob } = await pair();
    const typing: boolean[] = [];
    bob.client.on(ChatEvent.Typing, (t) => void typing.push(t.typing));
    const ackedBefore = relay.acked.length;

    await alice.client.sendTyping('bob', true);
    await until(() => typing.length === 1);
    await alice.client.send('bob', 'after typing');
    await until(() => bob.seen.texts.length === 1);
    const stored = relay.stored.filter((s) => s.to === 'bob').map((s) => s.envelope.id);
    await until(() => relay.acked.includes(stored.at(-1)!));

    expect(typing).toEqual([true]);
    // Only the stored message was acked; the typing envelope never was.
    expect(relay.acked.slice(ackedBefore).filter((id) => !relay.stored.some((s) => s.envelope.id === id))).toEqual([]);
    expect(relay.stored.filter((s) => s.to === 'bob')).toHaveLength(1);
    await expect(bob.stores.metadata.hasProcessedEnvelope(stored[0]!)).resolves.toBe(true);
    expect([...alice.seen.errors, ...bob.seen.errors]).toEqual([]);
    await Promise.all([alice.client.close(), bob.client.close()]);
  });

  it('refuses sendTyping while not connected, and bad read receipt arguments', async () => {
    const { alice, bob } = await pair();
    await alice.client.close();
    await expect(alice.client.sendTyping('bob', true)).rejects.toMatchObject({ code: SecureChatErrorCode.InvalidState });
    for (const timestamps of [[], [-1], [1.5], [Number.MAX_SAFE_INTEGER + 1]]) {
      await expect(bob.client.sendReadReceipt('alice', timestamps)).rejects.toMatchObject({ code: SecureChatErrorCode.InvalidArgument });
    }
    await expect(bob.client.sendReadReceipt('NOT a user!', [1])).rejects.toMatchObject({ code: SecureChatErrorCode.InvalidArgument });
    await bob.client.close();
  });

  it('splits a read receipt of more than 100 timestamps into receipts of at most 100', async () => {
    const { alice, bob } = await pair();
    const receipts: number[][] = [];
    alice.client.on(ChatEvent.Receipt, (r) => void receipts.push([...r.timestamps]));
    const timestamps = Array.from({ length: 250 }, (_, i) => 1_000 + i);
    await bob.client.sendReadReceipt('alice', timestamps);
    await until(() => receipts.flat().length === 250);
    expect(receipts.map((r) => r.length)).toEqual([100, 100, 50]);
    expect(receipts.flat()).toEqual(timestamps);
    expect(alice.seen.texts).toEqual([]);
    await Promise.all([alice.client.close(), bob.client.close()]);
  });
});

import { describe, expect, it } from '@jest/globals';
import { IdentityKeyPair, PrivateKey, ProtocolAddress, PublicKey, SessionRecord } from '@signalapp/libsignal-client';
import type { PreKeyBundleResponse } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { ChatEvent } from '../events.js';
import { SecureChatClient, type SecureChatClientOptions } from '../secure-chat-client.js';
import { createMemoryStores } from '../stores/memory-stores.js';
import { FakeRelay } from '../test-support/fake-relay.js';
import { MessageCollector } from '../testing/wait-for.js';
import { IdentityStatus, type IdentityChanged } from './identity-trust.js';
import { failure, until } from '../test-support/spec-helpers.js';

const PASSWORD = 'correct horse battery';
const base64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');
const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');

function client(relay: FakeRelay, options: Partial<SecureChatClientOptions> = {}) {
  const stores = createMemoryStores();
  const made = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores, ...options });
  const seen = { changes: [] as IdentityChanged[], errors: [] as SecureChatError[], order: [] as string[] };
  made.on(ChatEvent.IdentityChanged, (change) => {
    seen.changes.push(change);
    seen.order.push(`identityChanged ${change.username}`);
  });
  made.on(ChatEvent.Error, (error) => void seen.errors.push(error));
  made.on(ChatEvent.Message, (message) => void seen.order.push(`message ${message.text} (${message.identity})`));
  return { client: made, stores, seen };
}

/**
 * A relay that hands out `victim`'s bundle with an attacker's identity key
 * and prekeys signed by it (a lying relay can re-sign, never forge the
 * victim's signature), keeping the attacker's private keys on its side.
 */
function swapIdentityOf(relay: FakeRelay, victim: string): { attacker: IdentityKeyPair } {
  const attacker = IdentityKeyPair.generate();
  relay.rewriteBundle = (bundle: PreKeyBundleResponse) => {
    if (bundle.username !== victim) return bundle;
    const resign = <K extends { publicKey: string; signature: string }>(key: K): K => ({
      ...key,
      signature: base64(attacker.privateKey.sign(new Uint8Array(Buffer.from(key.publicKey, 'base64')))),
    });
    return {
      ...bundle,
      identityKey: base64(attacker.publicKey.serialize()),
      devices: bundle.devices.map((device) => ({
        ...device,
        signedPreKey: resign({ ...device.signedPreKey, publicKey: base64(PrivateKey.generate().getPublicKey().serialize()) }),
        kyberPreKey: device.kyberPreKey,
        preKey: null,
      })),
    };
  };
  return { attacker };
}

/** alice and bob on one fake relay, each having sent the other a message. */
async function acquainted(options: Partial<SecureChatClientOptions> = {}) {
  const relay = new FakeRelay();
  const alice = client(relay, options);
  const bob = client(relay, options);
  await alice.client.register('alice', PASSWORD);
  await bob.client.register('bob', PASSWORD);
  const aliceInbox = new MessageCollector(alice.client);
  const bobInbox = new MessageCollector(bob.client);
  // Each side's delivery receipt too: one still on its way when a test changes an identity
  // would meet the change first (a 410, a bundle fetch) and race the message the test sends.
  const receipted = (party: ReturnType<typeof client>) => new Promise<void>((resolve) => party.client.once(ChatEvent.Receipt, () => resolve()));
  const receipts = Promise.all([receipted(alice), receipted(bob)]);
  await alice.client.connect();
  await bob.client.connect();
  await alice.client.send('bob', 'hello bob');
  await bobInbox.next();
  await bob.client.send('alice', 'hello alice');
  await aliceInbox.next();
  await receipts;
  return { relay, alice, bob, aliceInbox, bobInbox };
}

/** `name` registers again on the relay with a new identity (a reinstall, or someone taking the name over). */
async function reRegister(relay: FakeRelay, name: string, options: Partial<SecureChatClientOptions> = {}) {
  relay.closeSocketOf(name, 4409);
  const fresh = client(relay, options);
  await fresh.client.register(name, PASSWORD);
  return fresh;
}

describe('identity trust', () => {
  it('records a peer’s key on first use as trusted, and delivers its messages as trusted', async () => {
    const { alice, bob } = await acquainted();
    const bobKey = (await bob.stores.identity.getLocalIdentity())!.identityKeyPair.publicKey.serialize();
    const known = await alice.client.peerIdentity('bob');
    expect(known && { ...known, identityKey: hex(known.identityKey) }).toEqual({ username: 'bob', identityKey: hex(bobKey), status: IdentityStatus.Trusted });
    expect(alice.seen.order).toEqual(['message hello alice (trusted)']);
    expect(alice.seen.changes).toEqual([]);
    await expect(alice.client.peerIdentity('carol')).resolves.toBeNull();
  });

  it("under 'block', a bundle with another identity key is reported and nothing is sent until the app accepts it", async () => {
    const { relay, alice, bob } = await acquainted();
    const oldKey = (await bob.stores.identity.getLocalIdentity())!.identityKeyPair.publicKey.serialize();
    await bob.client.close();
    const newBob = await reRegister(relay, 'bob');
    const newKey = (await newBob.stores.identity.getLocalIdentity())!.identityKeyPair.publicKey.serialize();
    // alice's session still belongs to the old bob; make her fetch the new bundle.
    await alice.stores.session.saveSession(ProtocolAddress.new('bob', 1), SessionRecord.deserialize(new Uint8Array(0)));
    const storedBefore = relay.stored.length;

    const refused = await failure(alice.client.send('bob', 'to whoever holds the name now'));
    expect(refused.code).toBe(SecureChatErrorCode.IdentityChanged);
    expect(relay.stored.length).toBe(storedBefore);
    expect(alice.seen.changes.map((c) => ({ ...c, previousKey: hex(c.previousKey), newKey: hex(c.newKey) }))).toEqual([
      { username: 'bob', previousKey: hex(oldKey), newKey: hex(newKey), wasVerified: false, status: IdentityStatus.Changed },
    ]);
    expect((await alice.client.peerIdentity('bob'))?.status).toBe(IdentityStatus.Changed);
    // Refused again without a new report: the change is known, not accepted.
    expect((await failure(alice.client.send('bob', 'again'))).code).toBe(SecureChatErrorCode.IdentityChanged);
    expect(alice.seen.changes).toHaveLength(1);

    await alice.client.acceptIdentity('bob', alice.seen.changes[0]!.newKey);
    const inbox = new MessageCollector(newBob.client);
    await newBob.client.connect();
    await alice.client.send('bob', 'accepted');
    expect((await inbox.next()).text).toBe('accepted');
    expect((await alice.client.peerIdentity('bob'))?.status).toBe(IdentityStatus.Trusted);
    await newBob.client.close();
  });

  it("under 'warn', sends to the changed key and reports the change", async () => {
    const { relay, alice, bob } = await acquainted({ identityPolicy: 'warn' });
    await bob.client.close();
    const newBob = await reRegister(relay, 'bob', { identityPolicy: 'warn' });
    await alice.stores.session.saveSession(ProtocolAddress.new('bob', 1), SessionRecord.deserialize(new Uint8Array(0)));
    const inbox = new MessageCollector(newBob.client);
    await newBob.client.connect();
    await alice.client.send('bob', 'sent despite the change');
    expect((await inbox.next()).text).toBe('sent despite the change');
    expect(alice.seen.changes.map((c) => [c.username, c.status, c.wasVerified])).toEqual([['bob', IdentityStatus.Trusted, false]]);
    await newBob.client.close();
  });

  it("under 'warn', marks the message that brings a changed key 'changed', the ones after it 'trusted', and replies go out", async () => {
    const { relay, alice, bob } = await acquainted({ identityPolicy: 'warn' });
    await alice.client.close();
    const newAlice = await reRegister(relay, 'alice', { identityPolicy: 'warn' });
    await newAlice.client.send('bob', 'the change');
    await newAlice.client.send('bob', 'after the change');
    await until(() => bob.seen.order.length === 4);
    expect(bob.seen.order).toEqual([
      'message hello bob (trusted)',
      'identityChanged alice',
      'message the change (changed)',
      'message after the change (trusted)',
    ]);
    expect(bob.seen.changes[0]?.status).toBe(IdentityStatus.Trusted);
    const inbox = new MessageCollector(newAlice.client);
    await newAlice.client.connect();
    await bob.client.send('alice', 'reply');
    expect((await inbox.next()).text).toBe('reply');
    await newAlice.client.close();
  });

  it('refuses an unknown identityPolicy', () => {
    expect(() => SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', identityPolicy: 'ignore' as never })).toThrow(
      expect.objectContaining({ code: SecureChatErrorCode.InvalidOptions }),
    );
  });

  it("surfaces a message under a changed key as 'changed', reports the change before it, and blocks replies until accepted", async () => {
    const { relay, alice, bob } = await acquainted();
    await alice.client.close();
    const newAlice = await reRegister(relay, 'alice');
    await newAlice.client.send('bob', 'hi, new install here');
    await until(() => bob.seen.order.length === 3);
    expect(bob.seen.order).toEqual(['message hello bob (trusted)', 'identityChanged alice', 'message hi, new install here (changed)']);
    expect((await failure(bob.client.send('alice', 'who are you?'))).code).toBe(SecureChatErrorCode.IdentityChanged);

    // Later messages under the unaccepted key stay 'changed'.
    await newAlice.client.send('bob', 'still me');
    await until(() => bob.seen.order.length === 4);
    expect(bob.seen.order[3]).toBe('message still me (changed)');
    await bob.client.acceptIdentity('alice');
    await newAlice.client.send('bob', 'accepted now?');
    await until(() => bob.seen.order.length === 5);
    expect(bob.seen.order[4]).toBe('message accepted now? (trusted)');
    const inbox = new MessageCollector(newAlice.client);
    await newAlice.client.connect();
    await bob.client.send('alice', 'welcome back');
    expect((await inbox.next()).text).toBe('welcome back');
    await newAlice.client.close();
  });

  it('refuses to accept a key other than the current one (it changed again since the app showed it)', async () => {
    const { relay, alice, bob } = await acquainted();
    await bob.client.close();
    await reRegister(relay, 'bob');
    await alice.stores.session.saveSession(ProtocolAddress.new('bob', 1), SessionRecord.deserialize(new Uint8Array(0)));
    await failure(alice.client.send('bob', 'x'));
    const stale = IdentityKeyPair.generate().publicKey.serialize();
    expect((await failure(alice.client.acceptIdentity('bob', stale))).code).toBe(SecureChatErrorCode.IdentityChanged);
    expect((await alice.client.peerIdentity('bob'))?.status).toBe(IdentityStatus.Changed);
    expect((await failure(alice.client.acceptIdentity('nobody_known'))).code).toBe(SecureChatErrorCode.UnknownIdentity);
  });

  it('detects a relay that serves a swapped identity key for a peer, and sends nothing to it', async () => {
    const relay = new FakeRelay();
    const alice = client(relay);
    const bob = client(relay);
    await alice.client.register('alice', PASSWORD);
    await bob.client.register('bob', PASSWORD);
    await alice.client.send('bob', 'first contact');
    await alice.stores.session.saveSession(ProtocolAddress.new('bob', 1), SessionRecord.deserialize(new Uint8Array(0)));
    const { attacker } = swapIdentityOf(relay, 'bob');
    const storedBefore = relay.stored.length;
    expect((await failure(alice.client.send('bob', 'secret'))).code).toBe(SecureChatErrorCode.IdentityChanged);
    expect(relay.stored.length).toBe(storedBefore);
    expect(hex(alice.seen.changes[0]!.newKey)).toBe(hex(attacker.publicKey.serialize()));
  });
});

describe('safety numbers', () => {
  it('are equal on both sides, each side’s scannable form verifies the other, and verification is kept', async () => {
    const { alice, bob } = await acquainted();
    const aliceSees = await alice.client.safetyNumber('bob');
    const bobSees = await bob.client.safetyNumber('alice');
    expect(aliceSees.displayable).toMatch(/^\d{60}$/);
    expect(aliceSees.displayable).toBe(bobSees.displayable);
    expect(hex(aliceSees.scannable)).not.toBe(hex(bobSees.scannable));

    await alice.client.verifySafetyNumber('bob', bobSees.scannable);
    expect((await alice.client.peerIdentity('bob'))?.status).toBe(IdentityStatus.Verified);
    expect((await alice.stores.identity.getTrustedIdentities()).map((t) => [t.username, t.verified])).toEqual([['bob', true]]);
    await alice.client.send('bob', 'verified');
    await bob.client.close();
    await alice.client.close();
  });

  it('refuses a scanned value that does not match, or is not a safety number, with SafetyNumberMismatch, marking nothing', async () => {
    const { relay, alice, bob } = await acquainted();
    const carol = client(relay);
    await carol.client.register('carol', PASSWORD);
    await carol.client.send('alice', 'hi');
    await until(() => alice.seen.order.length === 2);
    const carolSees = await carol.client.safetyNumber('alice');
    // carol's code is for the pair (carol, alice), not (bob, alice).
    expect((await failure(alice.client.verifySafetyNumber('bob', carolSees.scannable))).code).toBe(SecureChatErrorCode.SafetyNumberMismatch);
    expect((await failure(alice.client.verifySafetyNumber('bob', new Uint8Array([1, 2, 3])))).code).toBe(SecureChatErrorCode.SafetyNumberMismatch);
    // alice's own code, scanned back: local and remote are swapped, so it does not match either.
    const own = await alice.client.safetyNumber('bob');
    expect((await failure(alice.client.verifySafetyNumber('bob', own.scannable))).code).toBe(SecureChatErrorCode.SafetyNumberMismatch);
    expect((await alice.client.peerIdentity('bob'))?.status).toBe(IdentityStatus.Trusted);
    expect((await failure(alice.client.safetyNumber('nobody_known'))).code).toBe(SecureChatErrorCode.UnknownIdentity);
    await bob.client.close();
  });

  it('verify from the 60 digits the user compared (spaces ignored), and refuse other digits with SafetyNumberMismatch', async () => {
    const { alice, bob } = await acquainted();
    const digits = (await bob.client.safetyNumber('alice')).displayable;
    const wrong = `${digits.slice(0, 59)}${(Number(digits[59]) + 1) % 10}`;
    for (const bad of [wrong, digits.slice(0, 55), `${digits.slice(0, 59)}x`]) {
      expect((await failure(alice.client.verifySafetyNumber('bob', bad))).code).toBe(SecureChatErrorCode.SafetyNumberMismatch);
    }
    expect((await alice.client.peerIdentity('bob'))?.status).toBe(IdentityStatus.Trusted);

    await alice.client.verifySafetyNumber('bob', digits.replace(/(\d{5})/g, '$1 '));
    expect((await alice.client.peerIdentity('bob'))?.status).toBe(IdentityStatus.Verified);
    await bob.client.close();
    await alice.client.close();
  });

  it('differ after either side’s identity changes; a verified peer that changes is unverified, reported with wasVerified, and blocked', async () => {
    const { relay, alice, bob } = await acquainted();
    const before = (await alice.client.safetyNumber('bob')).displayable;
    await alice.client.verifySafetyNumber('bob', (await bob.client.safetyNumber('alice')).scannable);
    await bob.client.close();
    const newBob = await reRegister(relay, 'bob');
    await newBob.client.send('alice', 'new bob here');
    await until(() => alice.seen.changes.length === 1);
    expect(alice.seen.changes[0]).toMatchObject({ username: 'bob', wasVerified: true, status: IdentityStatus.Changed });
    expect((await alice.client.peerIdentity('bob'))?.status).toBe(IdentityStatus.Changed);
    expect((await failure(alice.client.send('bob', 'x'))).code).toBe(SecureChatErrorCode.IdentityChanged);

    const after = (await alice.client.safetyNumber('bob')).displayable;
    expect(after).not.toBe(before);
    expect(after).toBe((await newBob.client.safetyNumber('alice')).displayable);
    // Verifying the new key also lifts the block.
    await alice.client.verifySafetyNumber('bob', (await newBob.client.safetyNumber('alice')).scannable);
    expect((await alice.client.peerIdentity('bob'))?.status).toBe(IdentityStatus.Verified);
    await alice.client.send('bob', 'verified again');

    // The other side changing: alice re-registers; new bob's number for her changes too.
    const bobBefore = (await newBob.client.safetyNumber('alice')).displayable;
    await alice.client.close();
    const newAlice = await reRegister(relay, 'alice');
    await newAlice.client.send('bob', 'new alice');
    const inbox = new MessageCollector(newBob.client);
    await newBob.client.connect();
    await inbox.next();
    await inbox.next();
    expect((await newBob.client.safetyNumber('alice')).displayable).not.toBe(bobBefore);
    expect((await newBob.client.safetyNumber('alice')).displayable).toBe((await newAlice.client.safetyNumber('bob')).displayable);
    await newBob.client.close();
  });

  it('uses libsignal’s Fingerprint with 5200 iterations, version 2 and the usernames as identifiers', async () => {
    const { alice, bob } = await acquainted();
    const { Fingerprint } = await import('@signalapp/libsignal-client');
    const aliceKey = (await alice.stores.identity.getLocalIdentity())!.identityKeyPair.publicKey;
    const bobKey = PublicKey.deserialize((await bob.stores.identity.getLocalIdentity())!.identityKeyPair.publicKey.serialize());
    const utf8 = (s: string) => new Uint8Array(Buffer.from(s, 'utf8'));
    const expected = Fingerprint.new(5200, 2, utf8('alice'), aliceKey, utf8('bob'), bobKey);
    const got = await alice.client.safetyNumber('bob');
    expect(got.displayable).toBe(expected.displayableFingerprint().toString());
    expect(hex(got.scannable)).toBe(hex(expected.scannableFingerprint().toBuffer()));
    await alice.client.close();
    await bob.client.close();
  });
});

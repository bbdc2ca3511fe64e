import { ProtocolAddress, SessionRecord } from '@signalapp/libsignal-client';
import type { PreKeyBundleResponse, UploadKeysRequest } from '@chat/protocol';
import { EnvelopeType, MAX_CIPHERTEXT_BYTES } from '@chat/protocol';
import { asDeviceId } from '../ids.js';
import { createMemoryStores } from '../stores/memory-stores.js';
import type { SecureChatStores } from '../stores/stores.js';
import { ContentKind, MAX_BODY_BYTES, encodeContent } from './content.js';
import { DecryptFailure, DecryptFailureKind, PeerSessions, type DeviceCiphertext } from './peer-sessions.js';
import { generateKeyUpload, generateLocalIdentity } from '../keys/prekeys.js';

const DEVICE = asDeviceId(1);
const utf8 = (s: string) => new TextEncoder().encode(s);
const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

interface Party {
  name: string;
  stores: SecureChatStores;
  sessions: PeerSessions;
  upload: UploadKeysRequest;
}

async function party(name: string, oneTime = 3): Promise<Party> {
  const stores = createMemoryStores();
  const identity = generateLocalIdentity();
  await stores.identity.saveLocalIdentity(identity);
  const upload = await generateKeyUpload(stores, identity, {
    oneTimePreKeys: oneTime,
    oneTimeKyberPreKeys: oneTime,
    now: Date.now(),
  });
  return { name, stores, upload, sessions: new PeerSessions(stores, () => ProtocolAddress.new(name, DEVICE)) };
}

/** What the relay would hand out: the first one-time keys, or the last-resort Kyber key. */
function bundleOf(p: Party, options: { oneTimeIndex?: number; lastResort?: boolean } = {}): PreKeyBundleResponse {
  const index = options.oneTimeIndex ?? 0;
  const { signedPreKey, kyberLastResortPreKey, preKeys = [], kyberPreKeys = [] } = p.upload;
  return {
    username: p.name,
    accountId: '00000000-0000-4000-8000-000000000001',
    identityKey: p.upload.identityKey,
    devices: [
      {
        deviceId: DEVICE,
        registrationId: p.upload.registrationId,
        signedPreKey: signedPreKey!,
        preKey: options.lastResort ? null : (preKeys[index] ?? null),
        kyberPreKey: options.lastResort ? kyberLastResortPreKey! : kyberPreKeys[index]!,
      },
    ],
  };
}

const send = (from: Party, to: Party, body: string) =>
  from.sessions.withPeer(to.name, () => from.sessions.encrypt(to.name, DEVICE, utf8(body)));
const receive = (at: Party, from: Party, message: DeviceCiphertext) =>
  at.sessions.withPeer(from.name, () => at.sessions.decrypt(from.name, DEVICE, message.type, message.ciphertext)).then(text);

describe('PeerSessions over memory stores (PQXDH + Double Ratchet)', () => {
  it('opens a session with a PreKey message and exchanges replies both ways', async () => {
    const alice = await party('alice');
    const bob = await party('bob');
    await alice.sessions.processBundle(bundleOf(bob));

    const first = await send(alice, bob, 'hello bob');
    expect(first.type).toBe(EnvelopeType.PreKey);
    // The registration id the relay checks: the one the session names (from the bundle).
    expect(first.registrationId).toBe(bob.upload.registrationId);
    expect(await receive(bob, alice, first)).toBe('hello bob');

    const reply = await send(bob, alice, 'hi alice');
    expect(reply.type).toBe(EnvelopeType.Signal);
    expect(reply.registrationId).toBe(alice.upload.registrationId);
    expect(await receive(alice, bob, reply)).toBe('hi alice');

    const third = await send(alice, bob, 'how are you');
    expect(third.type).toBe(EnvelopeType.Signal);
    expect(await receive(bob, alice, third)).toBe('how are you');
    expect(await receive(alice, bob, await send(bob, alice, 'fine'))).toBe('fine');
  });

  it('consumes the one-time EC and Kyber prekeys and keeps the last-resort Kyber key', async () => {
    const alice = await party('alice');
    const bob = await party('bob');
    const preKeyId = bob.upload.preKeys![0]!.keyId;
    const kyberId = bob.upload.kyberPreKeys![0]!.keyId;
    const lastResortId = bob.upload.kyberLastResortPreKey!.keyId;

    await alice.sessions.processBundle(bundleOf(bob));
    await receive(bob, alice, await send(alice, bob, 'one-time'));
    await expect(bob.stores.preKey.getPreKey(preKeyId)).rejects.toThrow();
    await expect(bob.stores.kyberPreKey.getKyberPreKey(kyberId)).rejects.toThrow();

    const carol = await party('carol');
    await carol.sessions.processBundle(bundleOf(bob, { lastResort: true }));
    expect(await receive(bob, carol, await send(carol, bob, 'last resort'))).toBe('last resort');
    await expect(bob.stores.kyberPreKey.getKyberPreKey(lastResortId)).resolves.toBeDefined();

    const dave = await party('dave');
    await dave.sessions.processBundle(bundleOf(bob, { lastResort: true }));
    expect(await receive(bob, dave, await send(dave, bob, 'again'))).toBe('again');
  });

  it('decrypts messages delivered out of order within the ratchet window', async () => {
    const alice = await party('alice');
    const bob = await party('bob');
    await alice.sessions.processBundle(bundleOf(bob));
    await receive(bob, alice, await send(alice, bob, 'open'));
    await receive(alice, bob, await send(bob, alice, 'ack'));

    const sent = [];
    for (let i = 0; i < 5; i++) sent.push(await send(alice, bob, `m${i}`));
    const order = [4, 0, 3, 1, 2];
    const received = [];
    for (const i of order) received.push(await receive(bob, alice, sent[i]!));
    expect(received).toEqual(['m4', 'm0', 'm3', 'm1', 'm2']);
    await expect(receive(bob, alice, sent[2]!)).rejects.toThrow();
  });

  it('never races the ratchet when one peer sends and receives concurrently', async () => {
    const alice = await party('alice');
    const bob = await party('bob');
    await alice.sessions.processBundle(bundleOf(bob));
    await receive(bob, alice, await send(alice, bob, 'open'));

    const outgoing = await Promise.all(Array.from({ length: 20 }, (_, i) => send(alice, bob, `a${i}`)));
    const incoming = await Promise.all(Array.from({ length: 20 }, (_, i) => send(bob, alice, `b${i}`)));
    const [bobGot, aliceGot] = await Promise.all([
      Promise.all(outgoing.map((m) => receive(bob, alice, m))),
      Promise.all(incoming.map((m) => receive(alice, bob, m))),
    ]);
    expect(bobGot).toEqual(outgoing.map((_, i) => `a${i}`));
    expect(aliceGot).toEqual(incoming.map((_, i) => `b${i}`));
  });

  it('refuses a bundle whose signed prekey signature does not verify', async () => {
    const alice = await party('alice');
    const bob = await party('bob');
    const mallory = await party('mallory');
    const forged = bundleOf(bob);
    forged.identityKey = mallory.upload.identityKey;
    await expect(alice.sessions.processBundle(forged)).rejects.toMatchObject({ code: 'INVALID_PREKEY_BUNDLE' });
  });

  it('keeps the largest padded body in a PreKey message under the relay ciphertext limit', async () => {
    const alice = await party('alice');
    const bob = await party('bob');
    await alice.sessions.processBundle(bundleOf(bob));
    const content = encodeContent({ kind: ContentKind.Bytes, timestamp: 1, body: new Uint8Array(MAX_BODY_BYTES) });
    const message = await alice.sessions.withPeer('bob', () => alice.sessions.encrypt('bob', DEVICE, content));
    expect(message.type).toBe(EnvelopeType.PreKey);
    expect(message.ciphertext.length).toBeLessThanOrEqual(MAX_CIPHERTEXT_BYTES);
  });

  describe('says why a message did not decrypt, so the client knows whether a new session can help', () => {
    /** A session alice opened and bob answered, so both sides send Signal (not PreKey) messages. */
    async function talking() {
      const alice = await party('alice');
      const bob = await party('bob');
      await alice.sessions.processBundle(bundleOf(bob));
      await receive(bob, alice, await send(alice, bob, 'open'));
      await receive(alice, bob, await send(bob, alice, 'ack'));
      return { alice, bob };
    }

    async function failureOf(promise: Promise<unknown>): Promise<DecryptFailure> {
      const error = await promise.then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(DecryptFailure);
      return error as DecryptFailure;
    }

    it('a message decrypted before: Duplicate, not repairable', async () => {
      const { alice, bob } = await talking();
      const message = await send(alice, bob, 'once');
      await receive(bob, alice, message);
      const failure = await failureOf(receive(bob, alice, message));
      expect([failure.kind, failure.repairable]).toEqual([DecryptFailureKind.Duplicate, false]);
    });

    it('bytes libsignal cannot parse: Malformed, not repairable', async () => {
      const { alice, bob } = await talking();
      const garbage = { deviceId: DEVICE, type: EnvelopeType.Signal, ciphertext: new Uint8Array([3, 1, 2]), registrationId: 1 };
      const failure = await failureOf(receive(bob, alice, garbage));
      expect([failure.kind, failure.repairable]).toEqual([DecryptFailureKind.Malformed, false]);
    });

    it('a Signal message after the session was deleted (an empty record): NoSession, repairable', async () => {
      const { alice, bob } = await talking();
      await bob.stores.session.saveSession(ProtocolAddress.new('alice', DEVICE), SessionRecord.deserialize(new Uint8Array(0)));
      const failure = await failureOf(receive(bob, alice, await send(alice, bob, 'into the void')));
      expect([failure.kind, failure.repairable]).toEqual([DecryptFailureKind.NoSession, true]);
    });

    it('a Signal message with a flipped MAC byte: InvalidMessage, repairable; the session still works after it', async () => {
      const { alice, bob } = await talking();
      const message = await send(alice, bob, 'tampered');
      const ciphertext = message.ciphertext.slice();
      ciphertext[ciphertext.length - 1]! ^= 1;
      const failure = await failureOf(receive(bob, alice, { ...message, ciphertext }));
      expect([failure.kind, failure.repairable]).toEqual([DecryptFailureKind.InvalidMessage, true]);
      expect(await receive(bob, alice, await send(alice, bob, 'next'))).toBe('next');
    });

    it('a message of a session the receiver no longer has any state of: InvalidMessage, repairable', async () => {
      const { alice, bob } = await talking();
      const stale = await send(alice, bob, 'on the old session');
      // Bob lost everything (a restore) and talks to alice on a new session.
      const bobAgain: Party = { ...bob, stores: createMemoryStores() };
      await bobAgain.stores.identity.saveLocalIdentity((await bob.stores.identity.getLocalIdentity())!);
      bobAgain.sessions = new PeerSessions(bobAgain.stores, () => ProtocolAddress.new('bob', DEVICE));
      const fresh = await party('alice');
      await bobAgain.sessions.processBundle(bundleOf(fresh));
      const failure = await failureOf(receive(bobAgain, alice, stale));
      expect([failure.kind, failure.repairable]).toEqual([DecryptFailureKind.InvalidMessage, true]);
    });

    it('a PreKey message naming a prekey the receiver does not have: UnknownPreKey, repairable, and nothing consumed', async () => {
      const alice = await party('alice');
      const bob = await party('bob');
      await alice.sessions.processBundle(bundleOf(bob));
      const first = await send(alice, bob, 'hello');
      const preKeyId = bob.upload.preKeys![0]!.keyId;
      const kyberId = bob.upload.kyberPreKeys![0]!.keyId;
      const kept = await bob.stores.kyberPreKey.getKyberPreKey(kyberId);
      await bob.stores.preKey.removePreKey(preKeyId);
      const failure = await failureOf(receive(bob, alice, first));
      expect([failure.kind, failure.repairable]).toEqual([DecryptFailureKind.UnknownPreKey, true]);
      expect((await bob.stores.kyberPreKey.getKyberPreKey(kyberId)).serialize()).toEqual(kept.serialize());
      await expect(bob.stores.session.getSession(ProtocolAddress.new('alice', DEVICE))).resolves.toBeNull();
    });

    it('a replayed PreKey message on a last-resort key, the session since lost: Duplicate (PreKeyReused), not repairable', async () => {
      const alice = await party('alice');
      const bob = await party('bob');
      await alice.sessions.processBundle(bundleOf(bob, { lastResort: true }));
      const first = await send(alice, bob, 'hello');
      await receive(bob, alice, first);
      await bob.stores.session.saveSession(ProtocolAddress.new('alice', DEVICE), SessionRecord.deserialize(new Uint8Array(0)));
      const failure = await failureOf(receive(bob, alice, first));
      expect([failure.kind, failure.repairable]).toEqual([DecryptFailureKind.Duplicate, false]);
    });
  });

  describe('replaceSession', () => {
    it('makes a new current session from a fresh bundle, whose first message is a PreKey message, and keeps the old state for messages in flight', async () => {
      const alice = await party('alice');
      const bob = await party('bob');
      await alice.sessions.processBundle(bundleOf(bob));
      await receive(bob, alice, await send(alice, bob, 'open'));
      await receive(alice, bob, await send(bob, alice, 'ack'));
      const inFlight = await send(alice, bob, 'sent before the reset');

      await bob.sessions.withPeer('alice', () => bob.sessions.replaceSession(bundleOf(alice), DEVICE));
      const request = await send(bob, alice, 'start over');
      expect(request.type).toBe(EnvelopeType.PreKey);
      expect(await receive(alice, bob, request)).toBe('start over');
      const onNewSession = await send(alice, bob, 'on the new session');
      expect(onNewSession.type).toBe(EnvelopeType.Signal);
      expect(await receive(bob, alice, onNewSession)).toBe('on the new session');
      expect(await receive(bob, alice, inFlight)).toBe('sent before the reset');
    });

    it('refuses a bundle that lacks the device', async () => {
      const alice = await party('alice');
      const bob = await party('bob');
      await expect(bob.sessions.replaceSession(bundleOf(alice), asDeviceId(2))).rejects.toMatchObject({ code: 'INVALID_PREKEY_BUNDLE' });
    });
  });
});

// @chat/signal-sdk/testing/conformance: the contract every SecureChatStores
// implementation must keep, as libsignal and SecureChatClient rely on it.
// Run it from a Jest test file of your store:
//
//   import { describeStoreConformance } from '@chat/signal-sdk/testing/conformance';
//   describeStoreConformance('MyStores', async () => {
//     const stores = await MyStores.open(path);
//     return { stores, reopen: ..., close: () => stores.close() };
//   });
//
// A separate entry point: '@jest/globals' throws when imported outside Jest,
// and the testing entry's memory stores also serve demos.
import { createHash, randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import {
  Direction,
  IdentityChange,
  IdentityKeyPair,
  KEMKeyPair,
  KyberPreKeyRecord,
  PreKeyBundle,
  PreKeyRecord,
  PreKeySignalMessage,
  PrivateKey,
  ProtocolAddress,
  PublicKey,
  SenderKeyDistributionMessage,
  SignalMessage,
  SignedPreKeyRecord,
  processPreKeyBundle,
  signalDecrypt,
  signalDecryptPreKey,
  signalEncrypt,
} from '@signalapp/libsignal-client';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { asDeviceId, asRegistrationId } from '../ids.js';
import type { GroupRecord } from '../groups/group-rules.js';
import type { SequenceRange, SequenceTrack } from '../session/message-sequence.js';
import { createMemoryStores } from '../stores/memory-stores.js';
import {
  KeyIdKind,
  MAX_PENDING_MESSAGES,
  MAX_PROCESSED_ENVELOPES,
  MAX_RECEIVED_MESSAGES,
  MAX_SENT_MESSAGES_PER_PEER,
  type OutgoingMessageRecord,
  type PeerIdentityRecord,
  type PendingMessage,
  type ReceivedMessageRecord,
  type SecureChatStores,
  type SentMessageRecord,
} from '../stores/stores.js';

/** What the suite tests: a fresh, empty set of stores. */
export interface StoreConformanceSubject {
  stores: SecureChatStores;
  /**
   * Closes `stores` and opens the same storage again. Required with
   * `{ persistent: true }`; after it, `close` must close the reopened stores.
   */
  reopen?(): Promise<SecureChatStores>;
  /** Releases the stores (and any files); called after each test. */
  close(): Promise<void>;
}

export interface StoreConformanceOptions {
  /** The stores keep their records across `reopen`: adds the persistence tests. */
  persistent?: boolean;
}

const utf8 = (text: string) => new TextEncoder().encode(text);
const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
const same = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b));
const pending = (body: string, sender = 'bob'): PendingMessage => ({ sender, senderDevice: asDeviceId(2), content: utf8(body) });
const sent = (recipient: string, recipientDevice: number, timestamp: number, serverTimestamp = timestamp + 5): SentMessageRecord => ({
  recipient,
  recipientDevice: asDeviceId(recipientDevice),
  timestamp,
  serverTimestamp,
  content: utf8(`to ${recipient}.${recipientDevice} at ${timestamp}`),
});
const outgoing = (id: string, body: string, timestamp = 1_000): OutgoingMessageRecord => ({
  id,
  recipient: 'bob',
  content: utf8(body),
  timestamp,
  queuedAt: timestamp + 1,
});
const plainOutgoing = (message: OutgoingMessageRecord) => ({ ...message, content: text(message.content) });
const digestOf = (text: string) => new Uint8Array(createHash('sha256').update(text).digest());
const received = (sender: string, senderDevice: number, timestamp: number, body = 'body', receivedAt = 1_000): ReceivedMessageRecord => ({
  sender,
  senderDevice: asDeviceId(senderDevice),
  timestamp,
  contentDigest: digestOf(body),
  receivedAt,
});
/** A sent record as plain values, to compare with toEqual. */
const plainSent = (message: SentMessageRecord) => ({ ...message, content: text(message.content) });

function signedPreKey(identity: IdentityKeyPair, id: number, timestamp = Date.now()): SignedPreKeyRecord {
  const privateKey = PrivateKey.generate();
  const publicKey = privateKey.getPublicKey();
  return SignedPreKeyRecord.new(id, timestamp, publicKey, privateKey, identity.privateKey.sign(publicKey.serialize()));
}

function kyberPreKey(identity: IdentityKeyPair, id: number, timestamp = Date.now()): KyberPreKeyRecord {
  const keyPair = KEMKeyPair.generate();
  return KyberPreKeyRecord.new(id, timestamp, keyPair, identity.privateKey.sign(keyPair.getPublicKey().serialize()));
}

const peerIdentity = (username: string, key: PublicKey): PeerIdentityRecord => ({ username, identityKey: key, trustedKey: key, verifiedKey: null });
/** A peer identity record as serialized keys, to compare with toEqual. */
const plainIdentity = (record: PeerIdentityRecord | null) =>
  record && {
    username: record.username,
    identityKey: Buffer.from(record.identityKey.serialize()).toString('hex'),
    trustedKey: Buffer.from(record.trustedKey.serialize()).toString('hex'),
    verifiedKey: record.verifiedKey && Buffer.from(record.verifiedKey.serialize()).toString('hex'),
  };

function preKey(id: number): PreKeyRecord {
  const privateKey = PrivateKey.generate();
  return PreKeyRecord.new(id, privateKey.getPublicKey(), privateKey);
}

async function expectCode(promise: Promise<unknown>, code: SecureChatErrorCode): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(SecureChatError);
  expect((error as SecureChatError).code).toBe(code);
}

/** A responder whose keys live in `stores`, as after `register`. */
async function responder(stores: SecureChatStores, name: string, options: { oneTime: boolean; lastResortKyber?: boolean }) {
  const identity = IdentityKeyPair.generate();
  await stores.identity.saveLocalIdentity({ identityKeyPair: identity, registrationId: asRegistrationId(4242) });
  const signed = signedPreKey(identity, 7);
  await stores.signedPreKey.saveSignedPreKey(7, signed);
  const kyber = kyberPreKey(identity, 11);
  if (options.lastResortKyber) await stores.kyberPreKey.saveLastResortKyberPreKey(11, kyber);
  else await stores.kyberPreKey.saveKyberPreKey(11, kyber);
  const oneTime = preKey(5);
  if (options.oneTime) await stores.preKey.savePreKey(5, oneTime);
  const bundle = PreKeyBundle.new(
    4242,
    1,
    options.oneTime ? 5 : null,
    options.oneTime ? oneTime.publicKey() : null,
    7,
    signed.publicKey(),
    signed.signature(),
    identity.publicKey,
    11,
    kyber.publicKey(),
    kyber.signature(),
  );
  return { identity, bundle, address: ProtocolAddress.new(name, 1) };
}

/** A peer on memory stores that opens a session to `to` from its bundle and sends a first (PreKey) message. */
async function initiator(name: string, to: { bundle: PreKeyBundle; address: ProtocolAddress }) {
  const stores = createMemoryStores();
  await stores.identity.saveLocalIdentity({ identityKeyPair: IdentityKeyPair.generate(), registrationId: asRegistrationId(77) });
  const address = ProtocolAddress.new(name, 1);
  await processPreKeyBundle(to.bundle, to.address, address, stores.session, stores.identity);
  const send = async (body: string) => signalEncrypt(utf8(body), to.address, address, stores.session, stores.identity);
  const receive = async (message: Uint8Array<ArrayBuffer>) =>
    text(await signalDecrypt(SignalMessage.deserialize(message), to.address, address, stores.session, stores.identity));
  return { stores, address, send, receive };
}

/** The subject's side of a session: decrypts through `stores`, as the client does. */
function responderSide(stores: () => SecureChatStores, self: ProtocolAddress, peer: ProtocolAddress) {
  return {
    receivePreKey: async (message: Uint8Array<ArrayBuffer>) => {
      const s = stores();
      const plaintext = await signalDecryptPreKey(
        PreKeySignalMessage.deserialize(message),
        peer,
        self,
        s.session,
        s.identity,
        s.preKey,
        s.signedPreKey,
        s.kyberPreKey,
      );
      return text(plaintext);
    },
    receive: async (message: Uint8Array<ArrayBuffer>) => {
      const s = stores();
      return text(await signalDecrypt(SignalMessage.deserialize(message), peer, self, s.session, s.identity));
    },
    send: async (body: string) => {
      const s = stores();
      return signalEncrypt(utf8(body), peer, self, s.session, s.identity);
    },
  };
}

/**
 * Registers a Jest `describe` block that checks `createStores()`'s stores
 * against the contract of `SecureChatStores`: what libsignal expects of each
 * store method (void methods resolve to `undefined`, unknown ids reject with
 * `RecordNotFound` or resolve to null), the PQXDH key rules, the metadata and
 * pending-message rules the client relies on, and `transaction`. The client
 * works with stores that have no `transaction`, but they fail this suite: a
 * crash could leave a one-time prekey consumed without the session it made.
 * With `{ persistent: true }`, also persistence across `subject.reopen()`.
 */
export function describeStoreConformance(
  name: string,
  createStores: () => Promise<StoreConformanceSubject>,
  options: StoreConformanceOptions = {},
): void {
  describe(`${name} conforms to SecureChatStores`, () => {
    let subject: StoreConformanceSubject;
    let stores: SecureChatStores;

    beforeEach(async () => {
      subject = await createStores();
      stores = subject.stores;
    });

    afterEach(async () => {
      await subject.close();
    });

    const reopen = async () => {
      if (!subject.reopen) throw new Error('a persistent subject must have reopen()');
      stores = await subject.reopen();
    };

    it('holds no local identity at first, then returns the saved one; getIdentityKey follows it', async () => {
      await expect(stores.identity.getLocalIdentity()).resolves.toBeNull();
      await expect(stores.identity.getIdentityKey()).rejects.toBeDefined();
      await expect(stores.identity.getLocalRegistrationId()).rejects.toBeDefined();
      const identityKeyPair = IdentityKeyPair.generate();
      await stores.identity.saveLocalIdentity({ identityKeyPair, registrationId: asRegistrationId(16_000) });
      const local = await stores.identity.getLocalIdentity();
      expect(local?.registrationId).toBe(16_000);
      expect(same(local!.identityKeyPair.serialize(), identityKeyPair.serialize())).toBe(true);
      expect(same((await stores.identity.getIdentityKey()).serialize(), identityKeyPair.privateKey.serialize())).toBe(true);
      await expect(stores.identity.getLocalRegistrationId()).resolves.toBe(16_000);
    });

    it('resolves every void method to undefined (libsignal fails to downcast anything else)', async () => {
      const identity = IdentityKeyPair.generate();
      const address = ProtocolAddress.new('bob', 1);
      const results = [
        await stores.identity.saveLocalIdentity({ identityKeyPair: identity, registrationId: asRegistrationId(1) }),
        await stores.preKey.savePreKey(1, preKey(1)),
        await stores.preKey.removePreKey(1),
        await stores.preKey.removePreKey(999),
        await stores.signedPreKey.saveSignedPreKey(1, signedPreKey(identity, 1)),
        await stores.signedPreKey.removeSignedPreKey(1),
        await stores.signedPreKey.removeSignedPreKey(999),
        await stores.kyberPreKey.saveKyberPreKey(1, kyberPreKey(identity, 1)),
        await stores.kyberPreKey.saveLastResortKyberPreKey(2, kyberPreKey(identity, 2)),
        await stores.kyberPreKey.markKyberPreKeyUsed(1, 1, PrivateKey.generate().getPublicKey()),
        await stores.kyberPreKey.markKyberPreKeyUsed(2, 1, PrivateKey.generate().getPublicKey()),
        await stores.kyberPreKey.removeKyberPreKey(2),
        await stores.kyberPreKey.removeKyberPreKey(999),
        await stores.identity.savePeerIdentity(peerIdentity('carol', identity.publicKey)),
        await stores.metadata.saveAccount({ username: 'alice', deviceId: asDeviceId(1) }),
        await stores.metadata.saveSignedKeysState({ active: { signedPreKeyId: 1, kyberLastResortPreKeyId: 2 }, pending: null }),
        await stores.metadata.savePeerDevices('bob', [asDeviceId(1)]),
        await stores.metadata.saveRefreshToken('token'),
        await stores.metadata.saveRefreshToken(null),
        await stores.metadata.savePendingMessage('envelope-1', pending('hi')),
        await stores.metadata.removePendingMessage('envelope-1'),
        await stores.metadata.removePendingMessage('never-saved'),
        await stores.metadata.saveSentMessage(sent('bob', 1, 10)),
        await stores.metadata.saveReceivedMessage(received('bob', 1, 10)),
        await stores.metadata.pruneMessageLogs(0),
        await stores.metadata.saveProcessedEnvelope(randomUUID(), 1_000),
        await stores.metadata.saveOutgoing(outgoing(randomUUID(), 'queued')),
        await stores.metadata.removeOutgoing(randomUUID()),
      ];
      expect(results).toEqual(new Array(results.length).fill(undefined));

      const peer = await responder(createMemoryStores(), 'bob', { oneTime: false });
      await processPreKeyBundle(peer.bundle, address, ProtocolAddress.new('alice', 1), stores.session, stores.identity);
      const session = await stores.session.getSession(address);
      await expect(stores.session.saveSession(address, session!)).resolves.toBeUndefined();
      const alice = ProtocolAddress.new('alice', 1);
      const distribution = randomUUID();
      await SenderKeyDistributionMessage.create(alice, distribution, stores.senderKey);
      const senderKey = await stores.senderKey.getSenderKey(alice, distribution);
      await expect(stores.senderKey.saveSenderKey(alice, distribution, senderKey!)).resolves.toBeUndefined();
    });

    it('resolves unknown ids to null where libsignal expects null, and rejects with RecordNotFound where it expects a rejection', async () => {
      const address = ProtocolAddress.new('nobody', 3);
      await expect(stores.session.getSession(address)).resolves.toBeNull();
      await expect(stores.identity.getIdentity(address)).resolves.toBeNull();
      await expect(stores.senderKey.getSenderKey(address, randomUUID())).resolves.toBeNull();
      await expect(stores.metadata.getAccount()).resolves.toBeNull();
      await expect(stores.metadata.getRefreshToken()).resolves.toBeNull();
      await expect(stores.metadata.getPendingMessage('nothing')).resolves.toBeNull();
      await expect(stores.metadata.getPeerDevices('nobody')).resolves.toEqual([]);
      await expect(stores.identity.getTrustedIdentities()).resolves.toEqual([]);
      await expect(stores.identity.getPeerIdentity('nobody')).resolves.toBeNull();
      await expect(stores.identity.getPeerIdentities()).resolves.toEqual([]);
      await expect(stores.signedPreKey.getSignedPreKeys()).resolves.toEqual([]);
      await expect(stores.kyberPreKey.getLastResortKyberPreKeys()).resolves.toEqual([]);
      await expect(stores.metadata.getSignedKeysState()).resolves.toBeNull();
      await expect(stores.metadata.getSentMessages('nobody', asDeviceId(1), 0)).resolves.toEqual([]);
      await expect(stores.metadata.hasReceivedMessage(received('nobody', 1, 1))).resolves.toBe(false);
      await expectCode(stores.preKey.getPreKey(404), SecureChatErrorCode.RecordNotFound);
      await expectCode(stores.signedPreKey.getSignedPreKey(404), SecureChatErrorCode.RecordNotFound);
      await expectCode(stores.kyberPreKey.getKyberPreKey(404), SecureChatErrorCode.RecordNotFound);
      await expectCode(stores.session.getExistingSessions([address]), SecureChatErrorCode.RecordNotFound);
    });

    it('keeps prekeys and signed prekeys by id, and forgets a removed one-time prekey', async () => {
      const identity = IdentityKeyPair.generate();
      const one = preKey(1);
      const two = preKey(2);
      await stores.preKey.savePreKey(1, one);
      await stores.preKey.savePreKey(2, two);
      expect(same((await stores.preKey.getPreKey(1)).serialize(), one.serialize())).toBe(true);
      expect(same((await stores.preKey.getPreKey(2)).serialize(), two.serialize())).toBe(true);
      await stores.preKey.removePreKey(1);
      await expectCode(stores.preKey.getPreKey(1), SecureChatErrorCode.RecordNotFound);
      expect((await stores.preKey.getPreKey(2)).id()).toBe(2);

      const signed = signedPreKey(identity, 9);
      await stores.signedPreKey.saveSignedPreKey(9, signed);
      expect(same((await stores.signedPreKey.getSignedPreKey(9)).serialize(), signed.serialize())).toBe(true);
    });

    it('deletes a one-time Kyber prekey once used, keeps a last-resort one, and refuses the same last-resort use twice (PQXDH)', async () => {
      const identity = IdentityKeyPair.generate();
      const oneTime = kyberPreKey(identity, 1);
      const lastResort = kyberPreKey(identity, 2);
      await stores.kyberPreKey.saveKyberPreKey(1, oneTime);
      await stores.kyberPreKey.saveLastResortKyberPreKey(2, lastResort);
      expect(same((await stores.kyberPreKey.getKyberPreKey(1)).serialize(), oneTime.serialize())).toBe(true);

      await stores.kyberPreKey.markKyberPreKeyUsed(1, 7, PrivateKey.generate().getPublicKey());
      await expectCode(stores.kyberPreKey.getKyberPreKey(1), SecureChatErrorCode.RecordNotFound);

      const baseKey = PrivateKey.generate().getPublicKey();
      await stores.kyberPreKey.markKyberPreKeyUsed(2, 7, baseKey);
      expect(same((await stores.kyberPreKey.getKyberPreKey(2)).serialize(), lastResort.serialize())).toBe(true);
      await expectCode(stores.kyberPreKey.markKyberPreKeyUsed(2, 7, baseKey), SecureChatErrorCode.PreKeyReused);
      await stores.kyberPreKey.markKyberPreKeyUsed(2, 7, PrivateKey.generate().getPublicKey());
      await stores.kyberPreKey.markKyberPreKeyUsed(2, 8, baseKey);
      expect((await stores.kyberPreKey.getKyberPreKey(2)).id()).toBe(2);
    });

    it('carries a PQXDH session and the Double Ratchet both ways, consuming the one-time prekeys it used', async () => {
      const self = await responder(stores, 'alice', { oneTime: true });
      const bob = await initiator('bob', self);
      const alice = responderSide(() => stores, self.address, bob.address);

      const first = await bob.send('hello alice');
      expect(await alice.receivePreKey(first.serialize() as Uint8Array<ArrayBuffer>)).toBe('hello alice');
      await expectCode(stores.preKey.getPreKey(5), SecureChatErrorCode.RecordNotFound);
      await expectCode(stores.kyberPreKey.getKyberPreKey(11), SecureChatErrorCode.RecordNotFound);
      expect((await stores.signedPreKey.getSignedPreKey(7)).id()).toBe(7);

      for (let i = 0; i < 3; i++) {
        expect(await bob.receive((await alice.send(`reply ${i}`)).serialize())).toBe(`reply ${i}`);
        expect(await alice.receive((await bob.send(`again ${i}`)).serialize())).toBe(`again ${i}`);
      }
      const [record] = await stores.session.getExistingSessions([bob.address]);
      expect(record?.hasCurrentState()).toBe(true);
      expect(same(record!.serialize(), (await stores.session.getSession(bob.address))!.serialize())).toBe(true);
      await expect(stores.session.getSession(ProtocolAddress.new('bob', 2))).resolves.toBeNull();
    });

    it('trusts a first key on first use; records a changed key as seen but not trusted for sending until trustedKey follows; always trusts receiving', async () => {
      const bob = ProtocolAddress.new('bob', 1);
      const bobOtherDevice = ProtocolAddress.new('bob', 2);
      const key = PrivateKey.generate().getPublicKey();
      const changed = PrivateKey.generate().getPublicKey();

      await expect(stores.identity.isTrustedIdentity(bob, key, Direction.Sending)).resolves.toBe(true);
      await expect(stores.identity.saveIdentity(bob, key)).resolves.toBe(IdentityChange.NewOrUnchanged);
      await expect(stores.identity.saveIdentity(bobOtherDevice, key)).resolves.toBe(IdentityChange.NewOrUnchanged);
      expect((await stores.identity.getIdentity(bobOtherDevice))?.equals(key)).toBe(true);
      expect(plainIdentity(await stores.identity.getPeerIdentity('bob'))).toEqual(plainIdentity(peerIdentity('bob', key)));
      await expect(stores.identity.isTrustedIdentity(bob, key, Direction.Sending)).resolves.toBe(true);
      await expect(stores.identity.isTrustedIdentity(bob, changed, Direction.Sending)).resolves.toBe(false);
      await expect(stores.identity.isTrustedIdentity(bob, changed, Direction.Receiving)).resolves.toBe(true);

      await expect(stores.identity.saveIdentity(bob, changed)).resolves.toBe(IdentityChange.ReplacedExisting);
      expect((await stores.identity.getIdentity(bob))?.equals(changed)).toBe(true);
      expect(plainIdentity(await stores.identity.getPeerIdentity('bob'))).toEqual(plainIdentity({ ...peerIdentity('bob', key), identityKey: changed }));
      // Neither key is trusted for sending while the change is not accepted.
      await expect(stores.identity.isTrustedIdentity(bob, changed, Direction.Sending)).resolves.toBe(false);
      await expect(stores.identity.isTrustedIdentity(bob, key, Direction.Sending)).resolves.toBe(false);
      await expect(stores.identity.isTrustedIdentity(bob, changed, Direction.Receiving)).resolves.toBe(true);
      // A backup carries the trusted key, not the unaccepted one.
      expect((await stores.identity.getTrustedIdentities()).find((t) => t.username === 'bob')?.identityKey.equals(key)).toBe(true);

      await stores.identity.savePeerIdentity({ ...peerIdentity('bob', changed), verifiedKey: changed });
      await expect(stores.identity.isTrustedIdentity(bob, changed, Direction.Sending)).resolves.toBe(true);
      await expect(stores.identity.saveIdentity(bob, changed)).resolves.toBe(IdentityChange.NewOrUnchanged);
      expect((await stores.identity.getPeerIdentity('bob'))?.verifiedKey?.equals(changed)).toBe(true);

      await stores.identity.saveIdentity(ProtocolAddress.new('carol', 1), key);
      const trusted = await stores.identity.getTrustedIdentities();
      expect(trusted.map((t) => [t.username, t.verified]).sort()).toEqual([
        ['bob', true],
        ['carol', false],
      ]);
      expect((await stores.identity.getPeerIdentities()).map((p) => p.username).sort()).toEqual(['bob', 'carol']);
    });

    it('lists signed prekeys with their timestamps and forgets a removed one', async () => {
      const identity = IdentityKeyPair.generate();
      await stores.signedPreKey.saveSignedPreKey(3, signedPreKey(identity, 3, 1_000));
      await stores.signedPreKey.saveSignedPreKey(4, signedPreKey(identity, 4, 2_000));
      const listed = (await stores.signedPreKey.getSignedPreKeys()).map((r) => [r.id(), r.timestamp()]).sort();
      expect(listed).toEqual([
        [3, 1_000],
        [4, 2_000],
      ]);
      await stores.signedPreKey.removeSignedPreKey(3);
      await expectCode(stores.signedPreKey.getSignedPreKey(3), SecureChatErrorCode.RecordNotFound);
      expect((await stores.signedPreKey.getSignedPreKeys()).map((r) => r.id())).toEqual([4]);
    });

    it('lists only last-resort Kyber prekeys, and removing one forgets its recorded uses', async () => {
      const identity = IdentityKeyPair.generate();
      await stores.kyberPreKey.saveKyberPreKey(1, kyberPreKey(identity, 1, 500));
      await stores.kyberPreKey.saveLastResortKyberPreKey(2, kyberPreKey(identity, 2, 1_000));
      await stores.kyberPreKey.saveLastResortKyberPreKey(3, kyberPreKey(identity, 3, 2_000));
      expect((await stores.kyberPreKey.getLastResortKyberPreKeys()).map((r) => [r.id(), r.timestamp()]).sort()).toEqual([
        [2, 1_000],
        [3, 2_000],
      ]);
      const baseKey = PrivateKey.generate().getPublicKey();
      await stores.kyberPreKey.markKyberPreKeyUsed(2, 7, baseKey);
      await stores.kyberPreKey.markKyberPreKeyUsed(3, 7, baseKey);

      await stores.kyberPreKey.removeKyberPreKey(2);
      await expectCode(stores.kyberPreKey.getKyberPreKey(2), SecureChatErrorCode.RecordNotFound);
      expect((await stores.kyberPreKey.getLastResortKyberPreKeys()).map((r) => r.id())).toEqual([3]);
      expect((await stores.kyberPreKey.getKyberPreKey(1)).id()).toBe(1);
      // A later key under the same id starts with no recorded uses; the other key keeps its own.
      await stores.kyberPreKey.saveLastResortKyberPreKey(2, kyberPreKey(identity, 2));
      await expect(stores.kyberPreKey.markKyberPreKeyUsed(2, 7, baseKey)).resolves.toBeUndefined();
      await expectCode(stores.kyberPreKey.markKyberPreKeyUsed(3, 7, baseKey), SecureChatErrorCode.PreKeyReused);
    });

    it('keeps sender keys per (sender, distribution id)', async () => {
      const alice = ProtocolAddress.new('alice', 1);
      const distribution = randomUUID();
      await SenderKeyDistributionMessage.create(alice, distribution, stores.senderKey);
      const record = await stores.senderKey.getSenderKey(alice, distribution);
      expect(record).not.toBeNull();
      await stores.senderKey.saveSenderKey(alice, distribution, record!);
      expect(same((await stores.senderKey.getSenderKey(alice, distribution))!.serialize(), record!.serialize())).toBe(true);
      await expect(stores.senderKey.getSenderKey(alice, randomUUID())).resolves.toBeNull();
      await expect(stores.senderKey.getSenderKey(ProtocolAddress.new('alice', 2), distribution)).resolves.toBeNull();
    });

    it('keeps the signed keys state as saved, replaced whole', async () => {
      const first = { active: { signedPreKeyId: 1, kyberLastResortPreKeyId: 1 }, pending: null };
      await stores.metadata.saveSignedKeysState(first);
      await expect(stores.metadata.getSignedKeysState()).resolves.toEqual(first);
      const rotating = { active: { signedPreKeyId: 1, kyberLastResortPreKeyId: 1 }, pending: { signedPreKeyId: 2, kyberLastResortPreKeyId: 205 } };
      await stores.metadata.saveSignedKeysState(rotating);
      await expect(stores.metadata.getSignedKeysState()).resolves.toEqual(rotating);
    });

    it('keeps the account, the peer devices per username and the refresh token (replaced, then cleared)', async () => {
      await stores.metadata.saveAccount({ username: 'alice', deviceId: asDeviceId(3) });
      await expect(stores.metadata.getAccount()).resolves.toEqual({ username: 'alice', deviceId: 3 });
      await stores.metadata.savePeerDevices('bob', [asDeviceId(1), asDeviceId(4)]);
      await stores.metadata.savePeerDevices('carol', [asDeviceId(2)]);
      await expect(stores.metadata.getPeerDevices('bob')).resolves.toEqual([1, 4]);
      await expect(stores.metadata.getPeerDevices('carol')).resolves.toEqual([2]);
      await stores.metadata.saveRefreshToken('first-token');
      await stores.metadata.saveRefreshToken('second-token');
      await expect(stores.metadata.getRefreshToken()).resolves.toBe('second-token');
      await stores.metadata.saveRefreshToken(null);
      await expect(stores.metadata.getRefreshToken()).resolves.toBeNull();
    });

    it('allocates key ids that never repeat, per kind', async () => {
      const seen = new Map<KeyIdKind, Set<number>>();
      for (const kind of [KeyIdKind.PreKey, KeyIdKind.KyberPreKey, KeyIdKind.SignedPreKey]) seen.set(kind, new Set());
      for (const [kind, count] of [
        [KeyIdKind.PreKey, 100],
        [KeyIdKind.KyberPreKey, 1],
        [KeyIdKind.PreKey, 3],
        [KeyIdKind.SignedPreKey, 1],
        [KeyIdKind.KyberPreKey, 100],
        [KeyIdKind.SignedPreKey, 1],
      ] as const) {
        const first = await stores.metadata.allocateKeyIds(kind, count);
        expect(first).toBeGreaterThanOrEqual(1);
        for (let id = first; id < first + count; id++) {
          expect(seen.get(kind)!.has(id)).toBe(false);
          seen.get(kind)!.add(id);
        }
      }
    });

    it('keeps a pending message until removed, returns copies, and drops the oldest beyond MAX_PENDING_MESSAGES', async () => {
      await stores.metadata.savePendingMessage('envelope-a', pending('first'));
      const got = await stores.metadata.getPendingMessage('envelope-a');
      expect(got && { ...got, content: text(got.content) }).toEqual({ sender: 'bob', senderDevice: 2, content: 'first' });
      got!.content.fill(0);
      expect(text((await stores.metadata.getPendingMessage('envelope-a'))!.content)).toBe('first');
      await stores.metadata.removePendingMessage('envelope-a');
      await expect(stores.metadata.getPendingMessage('envelope-a')).resolves.toBeNull();

      const fill = async (s: SecureChatStores) => {
        for (let i = 0; i <= MAX_PENDING_MESSAGES; i++) await s.metadata.savePendingMessage(`envelope-${i}`, pending(`body ${i}`));
      };
      // In one transaction where there is one: a thousand commits would make a durable store slow.
      await (stores.transaction ? stores.transaction(fill) : fill(stores));
      await expect(stores.metadata.getPendingMessage('envelope-0')).resolves.toBeNull();
      expect(text((await stores.metadata.getPendingMessage('envelope-1'))!.content)).toBe('body 1');
      expect(text((await stores.metadata.getPendingMessage(`envelope-${MAX_PENDING_MESSAGES}`))!.content)).toBe(
        `body ${MAX_PENDING_MESSAGES}`,
      );
    }, 20_000);

    describe('session repair logs', () => {
      it('returns the sent messages of one recipient device whose serverTimestamp is at or after since, in the order first sent, as copies', async () => {
        await stores.metadata.saveSentMessage(sent('bob', 1, 300, 310));
        await stores.metadata.saveSentMessage(sent('bob', 1, 100, 110));
        await stores.metadata.saveSentMessage(sent('bob', 1, 200, 210));
        await stores.metadata.saveSentMessage(sent('bob', 2, 200, 210));
        await stores.metadata.saveSentMessage(sent('carol', 1, 200, 210));

        const all = await stores.metadata.getSentMessages('bob', asDeviceId(1), 0);
        expect(all.map(plainSent)).toEqual([sent('bob', 1, 100, 110), sent('bob', 1, 200, 210), sent('bob', 1, 300, 310)].map(plainSent));
        const since = await stores.metadata.getSentMessages('bob', asDeviceId(1), 210);
        expect(since.map((m) => m.timestamp)).toEqual([200, 300]);
        expect((await stores.metadata.getSentMessages('bob', asDeviceId(1), 311)).length).toBe(0);
        expect((await stores.metadata.getSentMessages('bob', asDeviceId(2), 0)).map((m) => m.timestamp)).toEqual([200]);
        expect((await stores.metadata.getSentMessages('carol', asDeviceId(1), 0)).map(plainSent)).toEqual([plainSent(sent('carol', 1, 200, 210))]);

        since[0]!.content.fill(0);
        expect(text((await stores.metadata.getSentMessages('bob', asDeviceId(1), 210))[0]!.content)).toBe('to bob.1 at 200');
      });

      it('replaces the sent message of the same recipient, device and timestamp: a resend moves its serverTimestamp', async () => {
        await stores.metadata.saveSentMessage(sent('bob', 1, 100, 110));
        await stores.metadata.saveSentMessage(sent('bob', 1, 200, 210));
        await stores.metadata.saveSentMessage({ ...sent('bob', 1, 100), serverTimestamp: 500 });
        expect((await stores.metadata.getSentMessages('bob', asDeviceId(1), 0)).map((m) => [m.timestamp, m.serverTimestamp])).toEqual([
          [100, 500],
          [200, 210],
        ]);
        expect((await stores.metadata.getSentMessages('bob', asDeviceId(1), 300)).map((m) => m.timestamp)).toEqual([100]);
      });

      it(`keeps at most MAX_SENT_MESSAGES_PER_PEER (${MAX_SENT_MESSAGES_PER_PEER}) per recipient, dropping the oldest; other recipients keep theirs`, async () => {
        const fill = async (s: SecureChatStores) => {
          await s.metadata.saveSentMessage(sent('carol', 1, 1));
          // Devices alternate: the bound is per username, over all its devices.
          for (let i = 1; i <= MAX_SENT_MESSAGES_PER_PEER + 2; i++) await s.metadata.saveSentMessage(sent('bob', 1 + (i % 2), 1000 + i));
        };
        await (stores.transaction ? stores.transaction(fill) : fill(stores));
        const kept = [
          ...(await stores.metadata.getSentMessages('bob', asDeviceId(1), 0)),
          ...(await stores.metadata.getSentMessages('bob', asDeviceId(2), 0)),
        ].map((m) => m.timestamp);
        expect(kept.length).toBe(MAX_SENT_MESSAGES_PER_PEER);
        expect(Math.min(...kept)).toBe(1003);
        expect(Math.max(...kept)).toBe(1000 + MAX_SENT_MESSAGES_PER_PEER + 2);
        expect((await stores.metadata.getSentMessages('carol', asDeviceId(1), 0)).map((m) => m.timestamp)).toEqual([1]);
      });

      it('recognises a received message by sender, device, timestamp and content digest only', async () => {
        await stores.metadata.saveReceivedMessage(received('bob', 1, 100, 'hello', 5_000));
        await expect(stores.metadata.hasReceivedMessage(received('bob', 1, 100, 'hello', 9_999))).resolves.toBe(true);
        for (const other of [
          received('carol', 1, 100, 'hello'),
          received('bob', 2, 100, 'hello'),
          received('bob', 1, 101, 'hello'),
          received('bob', 1, 100, 'another message with the same timestamp'),
        ]) {
          await expect(stores.metadata.hasReceivedMessage(other)).resolves.toBe(false);
        }
      });

      it(`remembers at most MAX_RECEIVED_MESSAGES (${MAX_RECEIVED_MESSAGES}) received messages, forgetting the first saved`, async () => {
        const fill = async (s: SecureChatStores) => {
          for (let i = 0; i <= MAX_RECEIVED_MESSAGES; i++) await s.metadata.saveReceivedMessage(received('bob', 1, i));
        };
        await (stores.transaction ? stores.transaction(fill) : fill(stores));
        await expect(stores.metadata.hasReceivedMessage(received('bob', 1, 0))).resolves.toBe(false);
        await expect(stores.metadata.hasReceivedMessage(received('bob', 1, 1))).resolves.toBe(true);
        await expect(stores.metadata.hasReceivedMessage(received('bob', 1, MAX_RECEIVED_MESSAGES))).resolves.toBe(true);
      }, 30_000);

      it('prunes sent messages by their timestamp and received ones by receivedAt', async () => {
        await stores.metadata.saveSentMessage(sent('bob', 1, 100));
        await stores.metadata.saveSentMessage(sent('bob', 1, 200));
        await stores.metadata.saveSentMessage(sent('carol', 1, 150));
        await stores.metadata.saveReceivedMessage(received('bob', 1, 1, 'old', 100));
        await stores.metadata.saveReceivedMessage(received('bob', 1, 2, 'new', 200));

        await stores.metadata.pruneMessageLogs(200);

        expect((await stores.metadata.getSentMessages('bob', asDeviceId(1), 0)).map((m) => m.timestamp)).toEqual([200]);
        await expect(stores.metadata.getSentMessages('carol', asDeviceId(1), 0)).resolves.toEqual([]);
        await expect(stores.metadata.hasReceivedMessage(received('bob', 1, 1, 'old'))).resolves.toBe(false);
        await expect(stores.metadata.hasReceivedMessage(received('bob', 1, 2, 'new'))).resolves.toBe(true);
        // A recipient pruned empty takes new messages again.
        await stores.metadata.saveSentMessage(sent('carol', 1, 300));
        expect((await stores.metadata.getSentMessages('carol', asDeviceId(1), 0)).map((m) => m.timestamp)).toEqual([300]);
      });
    });

    describe('processed envelopes', () => {
      it('knows an envelope id only once saved; saving it again resolves and keeps it', async () => {
        const id = randomUUID();
        await expect(stores.metadata.hasProcessedEnvelope(id)).resolves.toBe(false);
        await expect(stores.metadata.saveProcessedEnvelope(id, 1_000)).resolves.toBeUndefined();
        await expect(stores.metadata.saveProcessedEnvelope(id, 2_000)).resolves.toBeUndefined();
        await expect(stores.metadata.hasProcessedEnvelope(id)).resolves.toBe(true);
        await expect(stores.metadata.hasProcessedEnvelope(randomUUID())).resolves.toBe(false);
      });

      it('prunes ids processed before the cut-off, keeping a re-saved id at its first processedAt', async () => {
        const [old, resaved, recent] = [randomUUID(), randomUUID(), randomUUID()];
        await stores.metadata.saveProcessedEnvelope(old, 100);
        await stores.metadata.saveProcessedEnvelope(resaved, 150);
        await stores.metadata.saveProcessedEnvelope(resaved, 900);
        await stores.metadata.saveProcessedEnvelope(recent, 200);

        await stores.metadata.pruneMessageLogs(200);

        await expect(stores.metadata.hasProcessedEnvelope(old)).resolves.toBe(false);
        await expect(stores.metadata.hasProcessedEnvelope(resaved)).resolves.toBe(false);
        await expect(stores.metadata.hasProcessedEnvelope(recent)).resolves.toBe(true);
      });

      it(`remembers at most MAX_PROCESSED_ENVELOPES (${MAX_PROCESSED_ENVELOPES}), forgetting the first saved`, async () => {
        const id = (i: number) => `envelope-${i}`;
        const fill = async (s: SecureChatStores) => {
          for (let i = 0; i <= MAX_PROCESSED_ENVELOPES; i++) await s.metadata.saveProcessedEnvelope(id(i), 1_000 + i);
        };
        await (stores.transaction ? stores.transaction(fill) : fill(stores));
        await expect(stores.metadata.hasProcessedEnvelope(id(0))).resolves.toBe(false);
        await expect(stores.metadata.hasProcessedEnvelope(id(1))).resolves.toBe(true);
        await expect(stores.metadata.hasProcessedEnvelope(id(MAX_PROCESSED_ENVELOPES))).resolves.toBe(true);
      }, 60_000);

      it('rolls a processed id back with a failed transaction', async () => {
        const id = randomUUID();
        const failure = new Error('crash after recording the envelope');
        await expect(
          stores.transaction!(async (tx) => {
            await tx.metadata.saveProcessedEnvelope(id, 1_000);
            throw failure;
          }),
        ).rejects.toBe(failure);
        await expect(stores.metadata.hasProcessedEnvelope(id)).resolves.toBe(false);
      });
    });

    describe('outbox', () => {
      it('returns queued sends oldest first, as copies, and forgets a removed one', async () => {
        await expect(stores.metadata.getOutgoing()).resolves.toEqual([]);
        const ids = [randomUUID(), randomUUID(), randomUUID()];
        for (const [i, id] of ids.entries()) await stores.metadata.saveOutgoing(outgoing(id, `message ${i}`, 1_000 + i));
        const queued = await stores.metadata.getOutgoing();
        expect(queued.map(plainOutgoing)).toEqual(ids.map((id, i) => plainOutgoing(outgoing(id, `message ${i}`, 1_000 + i))));
        queued[0]!.content.fill(0);
        expect(text((await stores.metadata.getOutgoing())[0]!.content)).toBe('message 0');

        await expect(stores.metadata.removeOutgoing(ids[1]!)).resolves.toBeUndefined();
        await expect(stores.metadata.removeOutgoing(randomUUID())).resolves.toBeUndefined();
        expect((await stores.metadata.getOutgoing()).map((m) => m.id)).toEqual([ids[0], ids[2]]);
      });

      it('replaces a send saved again under its id in place: it keeps its position in the queue', async () => {
        const [first, second] = [randomUUID(), randomUUID()];
        await stores.metadata.saveOutgoing(outgoing(first, 'first'));
        await stores.metadata.saveOutgoing(outgoing(second, 'second'));
        await stores.metadata.saveOutgoing(outgoing(first, 'first, replaced', 5_000));
        expect((await stores.metadata.getOutgoing()).map(plainOutgoing)).toEqual([
          plainOutgoing(outgoing(first, 'first, replaced', 5_000)),
          plainOutgoing(outgoing(second, 'second')),
        ]);
      });

      it('rolls the outbox back with a failed transaction', async () => {
        const kept = randomUUID();
        await stores.metadata.saveOutgoing(outgoing(kept, 'kept'));
        const failure = new Error('fails after touching the outbox');
        await expect(
          stores.transaction!(async (tx) => {
            await tx.metadata.removeOutgoing(kept);
            await tx.metadata.saveOutgoing(outgoing(randomUUID(), 'never queued'));
            throw failure;
          }),
        ).rejects.toBe(failure);
        expect((await stores.metadata.getOutgoing()).map(plainOutgoing)).toEqual([plainOutgoing(outgoing(kept, 'kept'))]);
      });
    });

    describe('sealed sender metadata', () => {
      const key = (fill: number) => new Uint8Array(32).fill(fill);

      it('keeps the own profile key, as a copy', async () => {
        await expect(stores.metadata.getOwnProfileKey()).resolves.toBeNull();
        const own = key(1);
        await stores.metadata.saveOwnProfileKey(own);
        own.fill(9);
        const read = (await stores.metadata.getOwnProfileKey())!;
        expect(same(read, key(1))).toBe(true);
        read.fill(9);
        expect(same((await stores.metadata.getOwnProfileKey())!, key(1))).toBe(true);
      });

      it('keeps, replaces and forgets peer profile keys per username', async () => {
        await expect(stores.metadata.getPeerProfileKey('bob')).resolves.toBeNull();
        await stores.metadata.savePeerProfileKey('bob', key(2));
        await stores.metadata.savePeerProfileKey('carol', key(3));
        await stores.metadata.savePeerProfileKey('bob', key(4));
        expect(same((await stores.metadata.getPeerProfileKey('bob'))!, key(4))).toBe(true);
        await stores.metadata.savePeerProfileKey('bob', null);
        await expect(stores.metadata.getPeerProfileKey('bob')).resolves.toBeNull();
        expect(same((await stores.metadata.getPeerProfileKey('carol'))!, key(3))).toBe(true);
      });

      it('remembers with whom the profile key was shared', async () => {
        await expect(stores.metadata.hasSharedProfileKey('bob')).resolves.toBe(false);
        await stores.metadata.saveSharedProfileKey('bob', true);
        await expect(stores.metadata.hasSharedProfileKey('bob')).resolves.toBe(true);
        await expect(stores.metadata.hasSharedProfileKey('carol')).resolves.toBe(false);
        await stores.metadata.saveSharedProfileKey('bob', false);
        await expect(stores.metadata.hasSharedProfileKey('bob')).resolves.toBe(false);
      });

      it('maps usernames and account ids both ways; a username saved with a new id drops the old id', async () => {
        const [first, second] = [randomUUID(), randomUUID()];
        await expect(stores.metadata.getAccountId('bob')).resolves.toBeNull();
        await expect(stores.metadata.getUsernameOfAccount(first)).resolves.toBeNull();
        await stores.metadata.saveAccountId('bob', first);
        await expect(stores.metadata.getAccountId('bob')).resolves.toBe(first);
        await expect(stores.metadata.getUsernameOfAccount(first)).resolves.toBe('bob');
        await stores.metadata.saveAccountId('bob', second);
        await expect(stores.metadata.getAccountId('bob')).resolves.toBe(second);
        await expect(stores.metadata.getUsernameOfAccount(second)).resolves.toBe('bob');
        await expect(stores.metadata.getUsernameOfAccount(first)).resolves.toBeNull();
      });

      it('rolls profile keys and account ids back with a failed transaction', async () => {
        const id = randomUUID();
        const failure = new Error('fails after the sealed-sender writes');
        await expect(
          stores.transaction!(async (tx) => {
            await tx.metadata.saveOwnProfileKey(key(5));
            await tx.metadata.savePeerProfileKey('bob', key(6));
            await tx.metadata.saveSharedProfileKey('bob', true);
            await tx.metadata.saveAccountId('bob', id);
            throw failure;
          }),
        ).rejects.toBe(failure);
        await expect(stores.metadata.getOwnProfileKey()).resolves.toBeNull();
        await expect(stores.metadata.getPeerProfileKey('bob')).resolves.toBeNull();
        await expect(stores.metadata.hasSharedProfileKey('bob')).resolves.toBe(false);
        await expect(stores.metadata.getAccountId('bob')).resolves.toBeNull();
        await expect(stores.metadata.getUsernameOfAccount(id)).resolves.toBeNull();
      });
    });

    describe('groups', () => {
      const record = (fill: number, revision = 1): GroupRecord => ({
        state: {
          id: new Uint8Array(32).fill(fill),
          title: `group ${fill}`,
          revision,
          members: [
            { username: 'alice', accountId: '00000000-0000-4000-8000-000000000001' },
            { username: 'bob', accountId: '00000000-0000-4000-8000-000000000002' },
          ],
          admins: ['alice'],
        },
        distributionId: randomUUID(),
        sharedWith: ['bob.1'],
      });
      const idOf = (r: GroupRecord) => Buffer.from(r.state.id).toString('base64url');
      const plain = (r: GroupRecord | null) => r && { ...r, state: { ...r.state, id: [...r.state.id] } };

      it('keeps a group record by its base64url id, replaced whole, and lists every group, as copies', async () => {
        const first = record(1);
        const second = record(2);
        await expect(stores.metadata.getGroup(idOf(first))).resolves.toBeNull();
        await expect(stores.metadata.getGroups()).resolves.toEqual([]);
        await expect(stores.metadata.saveGroup(first)).resolves.toBeUndefined();
        await stores.metadata.saveGroup(second);
        expect(plain(await stores.metadata.getGroup(idOf(first)))).toEqual(plain(first));

        const replaced: GroupRecord = { ...record(1, 5), sharedWith: [] };
        await stores.metadata.saveGroup(replaced);
        expect(plain(await stores.metadata.getGroup(idOf(first)))).toEqual(plain(replaced));
        const all = (await stores.metadata.getGroups()).map(plain).sort((a, b) => a!.state.id[0]! - b!.state.id[0]!);
        expect(all).toEqual([plain(replaced), plain(second)]);

        const copy = (await stores.metadata.getGroup(idOf(second)))!;
        copy.state.members.pop();
        copy.sharedWith.push('mallory.1');
        expect(plain(await stores.metadata.getGroup(idOf(second)))).toEqual(plain(second));
      });

      it('rolls a group record back with a failed transaction', async () => {
        const kept = record(3);
        await stores.metadata.saveGroup(kept);
        const failure = new Error('fails after touching a group');
        await expect(
          stores.transaction!(async (tx) => {
            await tx.metadata.saveGroup(record(3, 9));
            await tx.metadata.saveGroup(record(4));
            throw failure;
          }),
        ).rejects.toBe(failure);
        expect(plain(await stores.metadata.getGroup(idOf(kept)))).toEqual(plain(kept));
        await expect(stores.metadata.getGroup(idOf(record(4)))).resolves.toBeNull();
      });

      it('rolls a sender key back with a failed transaction', async () => {
        const sender = ProtocolAddress.new('alice', 1);
        const distribution = randomUUID();
        const failure = new Error('fails after making a sender key');
        await expect(
          stores.transaction!(async (tx) => {
            await SenderKeyDistributionMessage.create(sender, distribution, tx.senderKey);
            throw failure;
          }),
        ).rejects.toBe(failure);
        await expect(stores.senderKey.getSenderKey(sender, distribution)).resolves.toBeNull();
      });
    });

    it('removes one session and leaves the others; removing a missing one resolves', async () => {
      const peer = await responder(createMemoryStores(), 'bob', { oneTime: false });
      const bob1 = ProtocolAddress.new('bob', 1);
      const bob2 = ProtocolAddress.new('bob', 2);
      const maker = createMemoryStores();
      await maker.identity.saveLocalIdentity({ identityKeyPair: IdentityKeyPair.generate(), registrationId: asRegistrationId(7) });
      await processPreKeyBundle(peer.bundle, bob1, ProtocolAddress.new('alice', 1), maker.session, maker.identity);
      const record = (await maker.session.getSession(bob1))!;
      await stores.session.saveSession(bob1, record);
      await stores.session.saveSession(bob2, record);

      await expect(stores.session.removeSession(bob1)).resolves.toBeUndefined();
      await expect(stores.session.removeSession(ProtocolAddress.new('nobody', 9))).resolves.toBeUndefined();

      await expect(stores.session.getSession(bob1)).resolves.toBeNull();
      expect((await stores.session.getSession(bob2))?.hasCurrentState()).toBe(true);
    });

    describe('gap detection', () => {
      const track = (sender: string, device: number, recipient: string, highest: number, missing: SequenceRange[] = []): SequenceTrack => ({
        sender,
        senderDevice: asDeviceId(device),
        recipient,
        stream: 77,
        highest,
        missing,
      });

      it('keeps the last send sequence position per recipient, replaced on save, as copies', async () => {
        await expect(stores.metadata.getSendSequence('bob')).resolves.toBeNull();
        await expect(stores.metadata.saveSendSequence('bob', { stream: 5, number: 1 })).resolves.toBeUndefined();
        await stores.metadata.saveSendSequence('carol', { stream: 6, number: 9 });
        await stores.metadata.saveSendSequence('bob', { stream: 5, number: 2 });
        await expect(stores.metadata.getSendSequence('bob')).resolves.toEqual({ stream: 5, number: 2 });
        const copy = (await stores.metadata.getSendSequence('carol'))!;
        copy.number = 100;
        await expect(stores.metadata.getSendSequence('carol')).resolves.toEqual({ stream: 6, number: 9 });
      });

      it('keeps a sequence track per sender, device and recipient, replaced whole, and lists them, as copies', async () => {
        await expect(stores.metadata.getSequenceTrack('bob', asDeviceId(1), 'alice')).resolves.toBeNull();
        await expect(stores.metadata.getSequenceTracks()).resolves.toEqual([]);
        // Usernames may hold dots: these three must not collide.
        const tracks = [track('bob', 1, 'alice', 3, [{ from: 2, to: 2 }]), track('bob', 2, 'alice', 9), track('bob.1', 1, 'alice', 4), track('bob', 1, 'carol', 5)];
        for (const t of tracks) await expect(stores.metadata.saveSequenceTrack(t)).resolves.toBeUndefined();
        await expect(stores.metadata.getSequenceTrack('bob', asDeviceId(1), 'alice')).resolves.toEqual(tracks[0]);
        await expect(stores.metadata.getSequenceTrack('bob.1', asDeviceId(1), 'alice')).resolves.toEqual(tracks[2]);
        const replaced = track('bob', 1, 'alice', 8, [{ from: 4, to: 5 }, { from: 7, to: 7 }]);
        await stores.metadata.saveSequenceTrack(replaced);
        await expect(stores.metadata.getSequenceTrack('bob', asDeviceId(1), 'alice')).resolves.toEqual(replaced);
        const key = (t: SequenceTrack) => `${t.sender} ${t.senderDevice} ${t.recipient}`;
        const all = (await stores.metadata.getSequenceTracks()).sort((a, b) => key(a).localeCompare(key(b)));
        expect(all).toEqual([replaced, tracks[3], tracks[1], tracks[2]].sort((a, b) => key(a).localeCompare(key(b))));

        const copy = (await stores.metadata.getSequenceTrack('bob', asDeviceId(1), 'alice'))!;
        copy.missing.push({ from: 100, to: 200 });
        copy.highest = 1_000;
        await expect(stores.metadata.getSequenceTrack('bob', asDeviceId(1), 'alice')).resolves.toEqual(replaced);
      });

      it("deletes every track of one recipient (a group's key), and only those, also rolled back with a failed transaction", async () => {
        const group = 'group:' + 'G'.repeat(43);
        const kept = [track('bob', 1, 'alice', 2), track('bob', 1, 'group:' + 'H'.repeat(43), 5)];
        const gone = [track('bob', 1, group, 3), track('bob', 2, group, 4), track('carol', 1, group, 1)];
        for (const t of [...kept, ...gone]) await stores.metadata.saveSequenceTrack(t);
        const failure = new Error('fails after deleting');
        await expect(
          stores.transaction!(async (tx) => {
            await tx.metadata.deleteSequenceTracks(group);
            throw failure;
          }),
        ).rejects.toBe(failure);
        await expect(stores.metadata.getSequenceTracks()).resolves.toHaveLength(5);
        await expect(stores.metadata.deleteSequenceTracks(group)).resolves.toBeUndefined();
        const key = (t: SequenceTrack) => `${t.sender} ${t.senderDevice} ${t.recipient}`;
        expect((await stores.metadata.getSequenceTracks()).sort((a, b) => key(a).localeCompare(key(b)))).toEqual(kept);
        await expect(stores.metadata.getSequenceTrack('bob', asDeviceId(1), group)).resolves.toBeNull();
        await expect(stores.metadata.deleteSequenceTracks('nobody')).resolves.toBeUndefined();
      });

      it('rolls sequence positions and tracks back with a failed transaction', async () => {
        await stores.metadata.saveSendSequence('bob', { stream: 5, number: 1 });
        await stores.metadata.saveSequenceTrack(track('bob', 1, 'alice', 3));
        const failure = new Error('fails after numbering a message');
        await expect(
          stores.transaction!(async (tx) => {
            await tx.metadata.saveSendSequence('bob', { stream: 5, number: 2 });
            await tx.metadata.saveSequenceTrack(track('bob', 1, 'alice', 6, [{ from: 4, to: 5 }]));
            await tx.metadata.saveSequenceTrack(track('carol', 1, 'alice', 1));
            throw failure;
          }),
        ).rejects.toBe(failure);
        await expect(stores.metadata.getSendSequence('bob')).resolves.toEqual({ stream: 5, number: 1 });
        await expect(stores.metadata.getSequenceTrack('bob', asDeviceId(1), 'alice')).resolves.toEqual(track('bob', 1, 'alice', 3));
        await expect(stores.metadata.getSequenceTrack('carol', asDeviceId(1), 'alice')).resolves.toBeNull();
      });
    });

    describe('transaction', () => {
      const transaction = <T>(fn: (s: SecureChatStores) => Promise<T>) => {
        if (!stores.transaction) throw new Error('these stores have no transaction()');
        return stores.transaction(fn);
      };

      it('commits what the function wrote and resolves with its result', async () => {
        const result = await transaction(async (tx) => {
          await tx.preKey.savePreKey(1, preKey(1));
          await tx.metadata.savePendingMessage('envelope-1', pending('kept'));
          return 'done';
        });
        expect(result).toBe('done');
        expect((await stores.preKey.getPreKey(1)).id()).toBe(1);
        expect(text((await stores.metadata.getPendingMessage('envelope-1'))!.content)).toBe('kept');
      });

      it('rolls everything back when the function throws, and rejects with its error', async () => {
        const self = await responder(stores, 'alice', { oneTime: true });
        const bob = await initiator('bob', self);
        const first = (await bob.send('never kept')).serialize() as Uint8Array<ArrayBuffer>;
        await stores.metadata.saveRefreshToken('before');
        const idBefore = await stores.metadata.allocateKeyIds(KeyIdKind.PreKey, 1);
        const failure = new Error('crash after the decryption');

        const outcome = transaction(async (tx) => {
          const alice = responderSide(() => tx, self.address, bob.address);
          expect(await alice.receivePreKey(first)).toBe('never kept');
          await tx.metadata.savePendingMessage('envelope-1', pending('never kept'));
          await tx.metadata.saveSentMessage(sent('bob', 1, 10));
          await tx.metadata.saveReceivedMessage(received('bob', 1, 10));
          await tx.metadata.saveRefreshToken('after');
          await tx.metadata.allocateKeyIds(KeyIdKind.PreKey, 10);
          throw failure;
        });
        await expect(outcome).rejects.toBe(failure);

        await expect(stores.session.getSession(bob.address)).resolves.toBeNull();
        await expect(stores.identity.getIdentity(bob.address)).resolves.toBeNull();
        expect((await stores.preKey.getPreKey(5)).id()).toBe(5);
        expect((await stores.kyberPreKey.getKyberPreKey(11)).id()).toBe(11);
        await expect(stores.metadata.getPendingMessage('envelope-1')).resolves.toBeNull();
        await expect(stores.metadata.getSentMessages('bob', asDeviceId(1), 0)).resolves.toEqual([]);
        await expect(stores.metadata.hasReceivedMessage(received('bob', 1, 10))).resolves.toBe(false);
        await expect(stores.metadata.getRefreshToken()).resolves.toBe('before');
        await expect(stores.metadata.allocateKeyIds(KeyIdKind.PreKey, 1)).resolves.toBe(idBefore + 1);
        // The rolled-back message still decrypts: nothing of it was consumed.
        const alice = responderSide(() => stores, self.address, bob.address);
        expect(await alice.receivePreKey(first)).toBe('never kept');
      });

      it('makes calls from outside wait until the transaction ends, then shows them its result', async () => {
        let release!: () => void;
        const gate = new Promise<void>((resolve) => (release = resolve));
        let written!: () => void;
        const wrote = new Promise<void>((resolve) => (written = resolve));
        const open = transaction(async (tx) => {
          await tx.metadata.saveRefreshToken('inside');
          written();
          await gate;
        });
        await wrote;
        let outsideRead: string | null | undefined;
        const read = stores.metadata.getRefreshToken().then((token) => (outsideRead = token));
        const write = stores.metadata.saveRefreshToken('outside');
        await new Promise((resolve) => setTimeout(resolve, 30));
        expect(outsideRead).toBeUndefined();
        release();
        await open;
        await read;
        await write;
        expect(outsideRead).toBe('inside');
        await expect(stores.metadata.getRefreshToken()).resolves.toBe('outside');
      });

      it('joins a nested transaction to the open one', async () => {
        const failure = new Error('outer fails after the inner finished');
        await expect(
          transaction(async (tx) => {
            await tx.transaction!(async (inner) => inner.metadata.saveRefreshToken('from the inner transaction'));
            throw failure;
          }),
        ).rejects.toBe(failure);
        await expect(stores.metadata.getRefreshToken()).resolves.toBeNull();
      });
    });

    if (!options.persistent) return;

    describe('persistence', () => {
      it('keeps processed envelope ids across reopen', async () => {
        const id = randomUUID();
        await stores.metadata.saveProcessedEnvelope(id, 1_000);
        await reopen();
        await expect(stores.metadata.hasProcessedEnvelope(id)).resolves.toBe(true);
        await expect(stores.metadata.hasProcessedEnvelope(randomUUID())).resolves.toBe(false);
      });

      it('keeps the outbox, in its order, across reopen', async () => {
        const ids = [randomUUID(), randomUUID()];
        await stores.metadata.saveOutgoing(outgoing(ids[0]!, 'first', 10));
        await stores.metadata.saveOutgoing(outgoing(ids[1]!, 'second', 20));
        await reopen();
        expect((await stores.metadata.getOutgoing()).map(plainOutgoing)).toEqual([
          plainOutgoing(outgoing(ids[0]!, 'first', 10)),
          plainOutgoing(outgoing(ids[1]!, 'second', 20)),
        ]);
      });

      it('keeps profile keys and account ids across reopen', async () => {
        const id = randomUUID();
        await stores.metadata.saveOwnProfileKey(new Uint8Array(32).fill(7));
        await stores.metadata.savePeerProfileKey('bob', new Uint8Array(32).fill(8));
        await stores.metadata.saveSharedProfileKey('bob', true);
        await stores.metadata.saveAccountId('bob', id);
        await reopen();
        expect(same((await stores.metadata.getOwnProfileKey())!, new Uint8Array(32).fill(7))).toBe(true);
        expect(same((await stores.metadata.getPeerProfileKey('bob'))!, new Uint8Array(32).fill(8))).toBe(true);
        await expect(stores.metadata.hasSharedProfileKey('bob')).resolves.toBe(true);
        await expect(stores.metadata.getAccountId('bob')).resolves.toBe(id);
        await expect(stores.metadata.getUsernameOfAccount(id)).resolves.toBe('bob');
      });

      it('keeps send sequence positions and sequence tracks across reopen', async () => {
        const kept: SequenceTrack = { sender: 'bob', senderDevice: asDeviceId(2), recipient: 'alice', stream: 9, highest: 12, missing: [{ from: 3, to: 4 }] };
        await stores.metadata.saveSendSequence('bob', { stream: 8, number: 41 });
        await stores.metadata.saveSequenceTrack(kept);
        await reopen();
        await expect(stores.metadata.getSendSequence('bob')).resolves.toEqual({ stream: 8, number: 41 });
        await expect(stores.metadata.getSequenceTrack('bob', asDeviceId(2), 'alice')).resolves.toEqual(kept);
        await expect(stores.metadata.getSequenceTracks()).resolves.toEqual([kept]);
      });

      it('keeps group records across reopen', async () => {
        const group: GroupRecord = {
          state: {
            id: new Uint8Array(32).fill(5),
            title: 'kept',
            revision: 3,
            members: [{ username: 'alice', accountId: '00000000-0000-4000-8000-000000000001' }],
            admins: ['alice'],
          },
          distributionId: randomUUID(),
          sharedWith: ['alice.2'],
          sendSequence: { distributionId: randomUUID(), stream: 77, number: 4, recent: [{ id: 'send-a', stream: 70, number: 12 }, { id: 'send-b', stream: 77, number: 4 }] },
        };
        await stores.metadata.saveGroup(group);
        await reopen();
        const kept = (await stores.metadata.getGroup(Buffer.from(group.state.id).toString('base64url')))!;
        expect({ ...kept, state: { ...kept.state, id: [...kept.state.id] } }).toEqual({ ...group, state: { ...group.state, id: [...group.state.id] } });
        expect(await stores.metadata.getGroups()).toHaveLength(1);
      });

      it('keeps every kind of record across reopen, and a session continues', async () => {
        const self = await responder(stores, 'alice', { oneTime: true, lastResortKyber: true });
        await stores.preKey.savePreKey(6, preKey(6));
        const bob = await initiator('bob', self);
        const alice = responderSide(() => stores, self.address, bob.address);
        expect(await alice.receivePreKey((await bob.send('before')).serialize() as Uint8Array<ArrayBuffer>)).toBe('before');
        expect(await bob.receive((await alice.send('ack')).serialize())).toBe('ack');
        const distribution = randomUUID();
        await SenderKeyDistributionMessage.create(self.address, distribution, stores.senderKey);
        const senderKey = (await stores.senderKey.getSenderKey(self.address, distribution))!.serialize();
        await stores.metadata.saveAccount({ username: 'alice', deviceId: asDeviceId(1) });
        await stores.metadata.savePeerDevices('bob', [asDeviceId(1)]);
        await stores.metadata.saveRefreshToken('kept token');
        await stores.metadata.savePendingMessage('envelope-1', pending('kept message'));
        await stores.metadata.saveSentMessage(sent('bob', 1, 100, 110));
        await stores.metadata.saveReceivedMessage(received('bob', 1, 42, 'kept'));
        const lastIds = await stores.metadata.allocateKeyIds(KeyIdKind.PreKey, 100);
        const signedKeys = { active: { signedPreKeyId: 7, kyberLastResortPreKeyId: 11 }, pending: { signedPreKeyId: 8, kyberLastResortPreKeyId: 12 } };
        await stores.metadata.saveSignedKeysState(signedKeys);
        const carol = { old: PrivateKey.generate().getPublicKey(), now: PrivateKey.generate().getPublicKey() };
        const carolRecord = { username: 'carol', identityKey: carol.now, trustedKey: carol.old, verifiedKey: carol.old };
        await stores.identity.savePeerIdentity(carolRecord);

        await reopen();

        const local = await stores.identity.getLocalIdentity();
        expect(same(local!.identityKeyPair.serialize(), self.identity.serialize())).toBe(true);
        expect(local!.registrationId).toBe(4242);
        expect((await stores.preKey.getPreKey(6)).id()).toBe(6);
        await expectCode(stores.preKey.getPreKey(5), SecureChatErrorCode.RecordNotFound);
        expect((await stores.signedPreKey.getSignedPreKey(7)).id()).toBe(7);
        // The last-resort flag survived: using it again keeps it.
        await stores.kyberPreKey.markKyberPreKeyUsed(11, 7, PrivateKey.generate().getPublicKey());
        expect((await stores.kyberPreKey.getKyberPreKey(11)).id()).toBe(11);
        expect((await stores.identity.getIdentity(bob.address))?.serialize()).toEqual(
          (await bob.stores.identity.getLocalIdentity())!.identityKeyPair.publicKey.serialize(),
        );
        expect(same((await stores.senderKey.getSenderKey(self.address, distribution))!.serialize(), senderKey)).toBe(true);
        await expect(stores.metadata.getAccount()).resolves.toEqual({ username: 'alice', deviceId: 1 });
        await expect(stores.metadata.getPeerDevices('bob')).resolves.toEqual([1]);
        await expect(stores.metadata.getRefreshToken()).resolves.toBe('kept token');
        expect(text((await stores.metadata.getPendingMessage('envelope-1'))!.content)).toBe('kept message');
        expect((await stores.metadata.getSentMessages('bob', asDeviceId(1), 0)).map(plainSent)).toEqual([plainSent(sent('bob', 1, 100, 110))]);
        await expect(stores.metadata.hasReceivedMessage(received('bob', 1, 42, 'kept'))).resolves.toBe(true);
        expect(await stores.metadata.allocateKeyIds(KeyIdKind.PreKey, 1)).toBeGreaterThanOrEqual(lastIds + 100);
        await expect(stores.metadata.getSignedKeysState()).resolves.toEqual(signedKeys);
        expect(plainIdentity(await stores.identity.getPeerIdentity('carol'))).toEqual(plainIdentity(carolRecord));
        expect((await stores.signedPreKey.getSignedPreKeys()).map((r) => r.id())).toEqual([7]);
        expect((await stores.kyberPreKey.getLastResortKyberPreKeys()).map((r) => r.id())).toEqual([11]);

        const resumed = responderSide(() => stores, self.address, bob.address);
        expect(await resumed.receive((await bob.send('after the restart')).serialize())).toBe('after the restart');
        expect(await bob.receive((await resumed.send('still here')).serialize())).toBe('still here');
      });
    });
  });
}

import {
  CiphertextMessageType,
  PrivateKey,
  ProtocolAddress,
  SenderCertificate,
  ServerCertificate,
  sealedSenderDecryptToUsmc,
} from '@signalapp/libsignal-client';
import SealedSenderMultiRecipientMessage from '@signalapp/libsignal-client/dist/SealedSenderMultiRecipientMessage.js';
import { randomUUID } from 'node:crypto';
import { MemorySenderKeyStore, createMemoryStores } from '../stores/memory-stores.js';
import { generateKeyUpload, generateLocalIdentity } from '../keys/prekeys.js';
import { PeerSessions } from '../session/peer-sessions.js';
import { asDeviceId } from '../ids.js';
import { failure } from '../test-support/spec-helpers.js';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { DuplicateGroupMessage, acceptDistribution, createDistribution, decryptFromGroup, encryptForGroup, sealForGroup } from './group-crypto.js';

const utf8 = (s: string) => new TextEncoder().encode(s);
const text = (b: Uint8Array) => new TextDecoder().decode(b);

describe('sender keys (libsignal)', () => {
  const alice = ProtocolAddress.new('alice', 1);
  const encrypt = async (store: MemorySenderKeyStore, distributionId: string, body: string) =>
    (await encryptForGroup(alice, distributionId, store, utf8(body))).serialize();

  it('gives a member added later the key from then on, not what was sent before it joined', async () => {
    const aliceKeys = new MemorySenderKeyStore();
    const bobKeys = new MemorySenderKeyStore();
    const daveKeys = new MemorySenderKeyStore();
    const epoch = randomUUID();
    await acceptDistribution(alice, await createDistribution(alice, epoch, aliceKeys), bobKeys);
    const before = await encrypt(aliceKeys, epoch, 'before dave');
    // dave is added: alice hands him her current distribution message, nothing else.
    await acceptDistribution(alice, await createDistribution(alice, epoch, aliceKeys), daveKeys);
    const after = await encrypt(aliceKeys, epoch, 'after dave');

    expect(text(await decryptFromGroup(alice, bobKeys, before))).toBe('before dave');
    expect(text(await decryptFromGroup(alice, bobKeys, after))).toBe('after dave');
    expect(text(await decryptFromGroup(alice, daveKeys, after))).toBe('after dave');
    // Older than the key dave holds: libsignal cannot tell it from one it already read (DuplicatedMessage),
    // so it is refused as a duplicate, which the client drops without a word (never shown either way).
    await expect(decryptFromGroup(alice, daveKeys, before)).rejects.toBeInstanceOf(DuplicateGroupMessage);
  });

  it('refuses a SenderKey message it decrypted before as a duplicate (DuplicateGroupMessage), not as a decryption failure', async () => {
    const aliceKeys = new MemorySenderKeyStore();
    const bobKeys = new MemorySenderKeyStore();
    const epoch = randomUUID();
    await acceptDistribution(alice, await createDistribution(alice, epoch, aliceKeys), bobKeys);
    const once = await encrypt(aliceKeys, epoch, 'once');
    expect(text(await decryptFromGroup(alice, bobKeys, once))).toBe('once');
    const replay = await decryptFromGroup(alice, bobKeys, once).then(
      () => null,
      (error: unknown) => error,
    );
    expect(replay).toBeInstanceOf(DuplicateGroupMessage);
    expect(SecureChatError.is(replay)).toBe(false);
    // A message that does not verify is still a decryption failure.
    const altered = await encrypt(aliceKeys, epoch, 'altered');
    altered[altered.length - 1]! ^= 1;
    expect((await failure(decryptFromGroup(alice, bobKeys, altered))).code).toBe(SecureChatErrorCode.DecryptionFailed);
  });

  it('locks a removed member out once the sender rotates to a new distribution id it is not given', async () => {
    const aliceKeys = new MemorySenderKeyStore();
    const bobKeys = new MemorySenderKeyStore();
    const carolKeys = new MemorySenderKeyStore();
    const first = randomUUID();
    const firstDistribution = await createDistribution(alice, first, aliceKeys);
    await acceptDistribution(alice, firstDistribution, bobKeys);
    await acceptDistribution(alice, firstDistribution, carolKeys);
    expect(text(await decryptFromGroup(alice, carolKeys, await encrypt(aliceKeys, first, 'all three')))).toBe('all three');

    // carol is removed: alice starts a new sender key and gives it to bob only.
    const second = randomUUID();
    await acceptDistribution(alice, await createDistribution(alice, second, aliceKeys), bobKeys);
    const secret = await encrypt(aliceKeys, second, 'without carol');
    expect(text(await decryptFromGroup(alice, bobKeys, secret))).toBe('without carol');
    expect((await failure(decryptFromGroup(alice, carolKeys, secret))).code).toBe(SecureChatErrorCode.DecryptionFailed);
  });
});

describe('sealForGroup', () => {
  it('makes one Sealed Sender v2 upload whose part for each recipient opens to the SenderKey message, the certificate and the group id', async () => {
    const trustRoot = PrivateKey.generate();
    const serverKey = PrivateKey.generate();
    const serverCertificate = ServerCertificate.new(1, serverKey.getPublicKey(), trustRoot);
    // Libsignal addresses multi-recipient recipients by service id: the stores here use account ids as names.
    const aliceId = randomUUID();
    const parties = await Promise.all(
      [aliceId, randomUUID(), randomUUID()].map(async (name) => {
        const stores = createMemoryStores();
        const identity = generateLocalIdentity();
        await stores.identity.saveLocalIdentity(identity);
        const upload = await generateKeyUpload(stores, identity, { oneTimePreKeys: 1, oneTimeKyberPreKeys: 1, now: Date.now() });
        return { name, stores, identity, upload, sessions: new PeerSessions(stores, () => ProtocolAddress.new(name, 1)) };
      }),
    );
    const [alice, ...recipients] = parties;
    for (const peer of recipients) {
      await alice.sessions.processBundle({
        username: peer.name,
        accountId: peer.name,
        identityKey: peer.upload.identityKey,
        devices: [
          {
            deviceId: asDeviceId(1),
            registrationId: peer.upload.registrationId,
            signedPreKey: peer.upload.signedPreKey!,
            preKey: peer.upload.preKeys![0]!,
            kyberPreKey: peer.upload.kyberPreKeys![0]!,
          },
        ],
      });
    }
    const certificate = SenderCertificate.new(aliceId, null, 1, alice.identity.identityKeyPair.publicKey, Date.now() + 60_000, serverCertificate, serverKey);
    const self = ProtocolAddress.new(aliceId, 1);
    const epoch = randomUUID();
    const distribution = await createDistribution(self, epoch, alice.stores.senderKey);
    const groupId = new Uint8Array(32).fill(9);
    const ciphertext = await encryptForGroup(self, epoch, alice.stores.senderKey, utf8('to everyone'));
    const upload = await sealForGroup({
      ciphertext,
      certificate,
      groupId,
      recipients: recipients.map((peer) => ProtocolAddress.new(peer.name, 1)),
      identityStore: alice.stores.identity,
      sessionStore: alice.stores.session,
    });

    // What the relay does: parse the one upload, store each recipient's part.
    const parsed = new SealedSenderMultiRecipientMessage(upload);
    const byServiceId = parsed.recipientsByServiceIdString();
    expect(Object.keys(byServiceId).sort()).toEqual(recipients.map((peer) => peer.name).sort());
    for (const peer of recipients) {
      await acceptDistribution(self, distribution, peer.stores.senderKey);
      const part = parsed.messageForRecipient(byServiceId[peer.name]!);
      const usmc = await sealedSenderDecryptToUsmc(part, peer.stores.identity);
      expect(usmc.msgType()).toBe(CiphertextMessageType.SenderKey);
      expect(usmc.senderCertificate().senderUuid()).toBe(aliceId);
      expect(usmc.senderCertificate().validate(trustRoot.getPublicKey(), Date.now())).toBe(true);
      expect(usmc.groupId()).toEqual(groupId);
      expect(text(await decryptFromGroup(self, peer.stores.senderKey, usmc.contents()))).toBe('to everyone');
    }
  });
});

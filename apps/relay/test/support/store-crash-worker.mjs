// A child process for persistent-store.e2e-spec.ts ("interrupted writes").
// It drives two SQLite stores the way SecureChatClient does: every encrypt
// and every decrypt in one store transaction, a decrypted message saved as
// pending in the same transaction, a PreKey message consuming one-time
// prekeys. The spec kills it with SIGKILL at random points and checks that
// each store holds its previous or its next state, never a mix.
//
//   node store-crash-worker.mjs setup '<config json>'   creates both stores and their session
//   node store-crash-worker.mjs run '<config json>'     loops until killed; prints "ready", then "round <n>"
//
// Plain JavaScript on the built SDK (`@chat/signal-sdk` dist): a child
// process cannot use Jest's TypeScript transform. The relay's `test` target
// builds its dependencies first (apps/relay/package.json, nx dependsOn).
import { randomUUID } from 'node:crypto';
import { appendFileSync } from 'node:fs';
import {
  IdentityKeyPair,
  KEMKeyPair,
  KyberPreKeyRecord,
  PreKeyBundle,
  PreKeyRecord,
  PreKeySignalMessage,
  PrivateKey,
  ProtocolAddress,
  SignalMessage,
  SignedPreKeyRecord,
  processPreKeyBundle,
  signalDecrypt,
  signalDecryptPreKey,
  signalEncrypt,
} from '@signalapp/libsignal-client';
import { KeyIdKind } from '@chat/signal-sdk';
import { SqliteStores } from '@chat/signal-sdk/sqlite';
import { createMemoryStores } from '@chat/signal-sdk/testing';

const [mode, configJson] = process.argv.slice(2);
/** @type {{ alicePath: string, bobPath: string, passphrase: string, kdf: { logN: number, r: number, p: number },
 *   alice: string, bob: string, oneTimeKeys: number, kyberIdOffset: number, aliceLog: string, bobLog: string }} */
const config = JSON.parse(configJson);
const alice = ProtocolAddress.new(config.alice, 1);
const bob = ProtocolAddress.new(config.bob, 1);
const utf8 = (text) => new TextEncoder().encode(text);
const open = (path) => SqliteStores.open({ path, passphrase: config.passphrase, kdf: config.kdf });

function signedPreKey(identity, id) {
  const key = PrivateKey.generate();
  return SignedPreKeyRecord.new(id, Date.now(), key.getPublicKey(), key, identity.privateKey.sign(key.getPublicKey().serialize()));
}

function kyberPreKey(identity, id) {
  const keyPair = KEMKeyPair.generate();
  return KyberPreKeyRecord.new(id, Date.now(), keyPair, identity.privateKey.sign(keyPair.getPublicKey().serialize()));
}

/** Alice's bundle as the relay would hand it out: one-time keys `oneTimeId`, or the last-resort Kyber key. */
async function bundleOf(stores, oneTimeId) {
  const local = await stores.identity.getLocalIdentity();
  const signed = await stores.signedPreKey.getSignedPreKey(1);
  const preKey = oneTimeId === null ? null : await stores.preKey.getPreKey(oneTimeId);
  const kyber = await stores.kyberPreKey.getKyberPreKey(oneTimeId === null ? 1 : config.kyberIdOffset + oneTimeId);
  return PreKeyBundle.new(
    local.registrationId,
    1,
    oneTimeId,
    preKey ? preKey.publicKey() : null,
    1,
    signed.publicKey(),
    signed.signature(),
    local.identityKeyPair.publicKey,
    kyber.id(),
    kyber.publicKey(),
    kyber.signature(),
  );
}

/** What the client does with an incoming message, in one transaction. */
function receive(stores, from, self, type, ciphertext, envelopeId) {
  return stores.transaction(async (tx) => {
    const plaintext =
      type === 'prekey'
        ? await signalDecryptPreKey(
            PreKeySignalMessage.deserialize(ciphertext),
            from,
            self,
            tx.session,
            tx.identity,
            tx.preKey,
            tx.signedPreKey,
            tx.kyberPreKey,
          )
        : await signalDecrypt(SignalMessage.deserialize(ciphertext), from, self, tx.session, tx.identity);
    await tx.metadata.savePeerDevices(from.name(), [1]);
    await tx.metadata.savePendingMessage(envelopeId, { sender: from.name(), senderDevice: 1, content: plaintext });
  });
}

function send(stores, self, to, text) {
  return stores.transaction(async (tx) => (await signalEncrypt(utf8(text), to, self, tx.session, tx.identity)).serialize());
}

async function setup() {
  const a = await open(config.alicePath);
  const aliceIdentity = IdentityKeyPair.generate();
  await a.transaction(async (tx) => {
    await tx.identity.saveLocalIdentity({ identityKeyPair: aliceIdentity, registrationId: 1001 });
    await tx.metadata.saveAccount({ username: config.alice, deviceId: 1 });
    await tx.signedPreKey.saveSignedPreKey(1, signedPreKey(aliceIdentity, 1));
    await tx.kyberPreKey.saveLastResortKyberPreKey(1, kyberPreKey(aliceIdentity, 1));
    await tx.metadata.allocateKeyIds(KeyIdKind.PreKey, config.oneTimeKeys);
    for (let id = 1; id <= config.oneTimeKeys; id++) {
      const key = PrivateKey.generate();
      await tx.preKey.savePreKey(id, PreKeyRecord.new(id, key.getPublicKey(), key));
      await tx.kyberPreKey.saveKyberPreKey(config.kyberIdOffset + id, kyberPreKey(aliceIdentity, config.kyberIdOffset + id));
    }
  });
  const b = await open(config.bobPath);
  await b.transaction(async (tx) => {
    await tx.identity.saveLocalIdentity({ identityKeyPair: IdentityKeyPair.generate(), registrationId: 1002 });
    await tx.metadata.saveAccount({ username: config.bob, deviceId: 1 });
    // Bob opens the session from Alice's last-resort bundle (no one-time key), as after the relay ran out.
    await processPreKeyBundle(await bundleOf(a, null), alice, bob, tx.session, tx.identity);
  });
  const first = await b.transaction(async (tx) => signalEncrypt(utf8('hello alice'), alice, bob, tx.session, tx.identity));
  await receive(a, bob, alice, 'prekey', first.serialize(), randomUUID());
  await receive(b, alice, bob, 'signal', await send(a, alice, bob, 'hello bob'), randomUUID());
  await a.close();
  await b.close();
}

async function run() {
  const a = await open(config.alicePath);
  const b = await open(config.bobPath);
  process.stdout.write('ready\n');
  let nextOneTime = 1;
  for (let round = 1; ; round++) {
    // Bob -> Alice: logged once Bob's ratchet step is committed, before Alice decrypts.
    const toAlice = await send(b, bob, alice, `bob round ${round}`);
    const toAliceId = randomUUID();
    appendFileSync(config.aliceLog, `${JSON.stringify({ id: toAliceId, ciphertext: Buffer.from(toAlice).toString('base64') })}\n`);
    await receive(a, bob, alice, 'signal', toAlice, toAliceId);

    const toBob = await send(a, alice, bob, `alice round ${round}`);
    const toBobId = randomUUID();
    appendFileSync(config.bobLog, `${JSON.stringify({ id: toBobId, ciphertext: Buffer.from(toBob).toString('base64') })}\n`);
    await receive(b, alice, bob, 'signal', toBob, toBobId);

    // A new peer opens a session with Alice's next one-time EC and Kyber prekeys (PQXDH).
    while (nextOneTime <= config.oneTimeKeys && !(await a.preKey.getPreKey(nextOneTime).then(() => true, () => false))) nextOneTime++;
    if (nextOneTime <= config.oneTimeKeys) {
      const carol = ProtocolAddress.new(`carol-${nextOneTime}`, 1);
      const carolStores = createMemoryStores();
      await carolStores.identity.saveLocalIdentity({ identityKeyPair: IdentityKeyPair.generate(), registrationId: 1003 });
      await processPreKeyBundle(await bundleOf(a, nextOneTime), alice, carol, carolStores.session, carolStores.identity);
      const hello = await signalEncrypt(utf8('hello from carol'), alice, carol, carolStores.session, carolStores.identity);
      await receive(a, carol, alice, 'prekey', hello.serialize(), `carol-${nextOneTime}`);
    }

    // A top-up, as the client's key upload: ids and keys in one transaction.
    await a.transaction(async (tx) => {
      const first = await tx.metadata.allocateKeyIds(KeyIdKind.PreKey, 2);
      for (const id of [first, first + 1]) {
        const key = PrivateKey.generate();
        await tx.preKey.savePreKey(id, PreKeyRecord.new(id, key.getPublicKey(), key));
      }
    });
    process.stdout.write(`round ${round}\n`);
  }
}

if (mode === 'setup') await setup();
else if (mode === 'run') await run();
else throw new Error(`unknown mode ${mode}`);

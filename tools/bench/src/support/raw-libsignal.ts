// Raw libsignal, for the baselines: one party's memory stores (the SDK's own
// memory stores, so that the stores cost the same on both sides of a
// comparison), its identity, and fresh prekey bundles for PQXDH.
import { randomInt } from 'node:crypto';
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
  CiphertextMessageType,
} from '@signalapp/libsignal-client';
import type { RegistrationId, SecureChatStores } from '@chat/signal-sdk';
import { createMemoryStores } from '@chat/signal-sdk/testing';

export interface RawParty {
  readonly address: ProtocolAddress;
  readonly stores: SecureChatStores;
  readonly identity: IdentityKeyPair;
  readonly registrationId: number;
}

export async function rawParty(name: string, deviceId = 1): Promise<RawParty> {
  const stores = createMemoryStores();
  const identity = IdentityKeyPair.generate();
  const registrationId = randomInt(1, 16_380);
  await stores.identity.saveLocalIdentity({ identityKeyPair: identity, registrationId: registrationId as RegistrationId });
  return { address: ProtocolAddress.new(name, deviceId), stores, identity, registrationId };
}

/** New signed, Kyber and one-time EC prekeys with id `keyId`, saved in the party's stores, as a bundle. */
export async function rawBundle(party: RawParty, keyId: number): Promise<PreKeyBundle> {
  const now = Date.now();
  const signed = PrivateKey.generate();
  const signedSignature = party.identity.privateKey.sign(signed.getPublicKey().serialize());
  await party.stores.signedPreKey.saveSignedPreKey(keyId, SignedPreKeyRecord.new(keyId, now, signed.getPublicKey(), signed, signedSignature));
  const kyber = KEMKeyPair.generate();
  const kyberSignature = party.identity.privateKey.sign(kyber.getPublicKey().serialize());
  await party.stores.kyberPreKey.saveKyberPreKey(keyId, KyberPreKeyRecord.new(keyId, now, kyber, kyberSignature));
  const oneTime = PrivateKey.generate();
  await party.stores.preKey.savePreKey(keyId, PreKeyRecord.new(keyId, oneTime.getPublicKey(), oneTime));
  return PreKeyBundle.new(
    party.registrationId,
    party.address.deviceId(),
    keyId,
    oneTime.getPublicKey(),
    keyId,
    signed.getPublicKey(),
    signedSignature,
    party.identity.publicKey,
    keyId,
    kyber.getPublicKey(),
    kyberSignature,
  );
}

/** PQXDH (initiator side) from `from` to `to`'s bundle. */
export async function rawProcessBundle(from: RawParty, to: RawParty, bundle: PreKeyBundle): Promise<void> {
  await processPreKeyBundle(bundle, to.address, from.address, from.stores.session, from.stores.identity);
}

/** One message from `from` to `to`, encrypted, serialized, parsed and decrypted (a PreKey message opens `to`'s session). */
export async function rawEncryptDecrypt(from: RawParty, to: RawParty, plaintext: Uint8Array<ArrayBuffer>): Promise<Uint8Array> {
  const message = await signalEncrypt(plaintext, to.address, from.address, from.stores.session, from.stores.identity);
  const bytes = message.serialize();
  if (message.type() === CiphertextMessageType.PreKey) {
    const { session, identity, preKey, signedPreKey, kyberPreKey } = to.stores;
    return signalDecryptPreKey(PreKeySignalMessage.deserialize(bytes), from.address, to.address, session, identity, preKey, signedPreKey, kyberPreKey);
  }
  return signalDecrypt(SignalMessage.deserialize(bytes), from.address, to.address, to.stores.session, to.stores.identity);
}

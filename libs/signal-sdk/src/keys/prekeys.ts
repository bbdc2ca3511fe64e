import { randomInt } from 'node:crypto';
import {
  IdentityKeyPair,
  KEMKeyPair,
  KyberPreKeyRecord,
  PreKeyRecord,
  PrivateKey,
  SignedPreKeyRecord,
} from '@signalapp/libsignal-client';
import type { KyberPreKeyDto, PreKeyDto, SignedPreKeyDto, UploadKeysRequest } from '@chat/protocol';
import { REGISTRATION_ID_MAX, REGISTRATION_ID_MIN } from '@chat/protocol';
import { asRegistrationId } from '../ids.js';
import { KeyIdKind, type LocalIdentity, type SecureChatStores, type SignedKeyIds } from '../stores/stores.js';

const base64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');

/** A new identity key pair and a random 14-bit registration id. */
export function generateLocalIdentity(): LocalIdentity {
  return {
    identityKeyPair: IdentityKeyPair.generate(),
    registrationId: asRegistrationId(randomInt(REGISTRATION_ID_MIN, REGISTRATION_ID_MAX + 1)),
  };
}

/** The public halves of a signed EC prekey and a Kyber last-resort prekey, as uploaded together. */
export interface SignedKeysUpload {
  signedPreKey: SignedPreKeyDto;
  kyberLastResortPreKey: KyberPreKeyDto;
}

/**
 * Makes a signed EC prekey and a Kyber last-resort prekey under fresh ids,
 * both signed by the identity key over the serialized public key (PQXDH
 * section 3.3), and saves their private halves in `stores`.
 */
export async function generateSignedKeys(
  stores: SecureChatStores,
  identity: LocalIdentity,
  now: number,
): Promise<{ ids: SignedKeyIds } & SignedKeysUpload> {
  const identityPrivate = identity.identityKeyPair.privateKey;
  const signedPreKeyId = await stores.metadata.allocateKeyIds(KeyIdKind.SignedPreKey, 1);
  const signedPrivate = PrivateKey.generate();
  const signedPublic = signedPrivate.getPublicKey();
  const signed = SignedPreKeyRecord.new(signedPreKeyId, now, signedPublic, signedPrivate, identityPrivate.sign(signedPublic.serialize()));
  await stores.signedPreKey.saveSignedPreKey(signedPreKeyId, signed);

  const kyberLastResortPreKeyId = await stores.metadata.allocateKeyIds(KeyIdKind.KyberPreKey, 1);
  const lastResort = kyberPreKey(kyberLastResortPreKeyId, identityPrivate, now);
  await stores.kyberPreKey.saveLastResortKyberPreKey(kyberLastResortPreKeyId, lastResort);
  return { ids: { signedPreKeyId, kyberLastResortPreKeyId }, ...signedKeysUpload(signed, lastResort) };
}

export function signedKeysUpload(signed: SignedPreKeyRecord, lastResort: KyberPreKeyRecord): SignedKeysUpload {
  return {
    signedPreKey: { keyId: signed.id(), publicKey: base64(signed.publicKey().serialize()), signature: base64(signed.signature()) },
    kyberLastResortPreKey: kyberDto(lastResort),
  };
}

export interface OneTimeBatch {
  preKeys: number;
  kyberPreKeys: number;
  now: number;
}

/**
 * Makes one-time EC and one-time Kyber prekeys under fresh ids, saves their
 * private halves in `stores` and returns the public halves (a kind with a
 * count of 0 is left out).
 */
export async function generateOneTimeKeys(
  stores: SecureChatStores,
  identity: LocalIdentity,
  batch: OneTimeBatch,
): Promise<Pick<UploadKeysRequest, 'preKeys' | 'kyberPreKeys'>> {
  const upload: Pick<UploadKeysRequest, 'preKeys' | 'kyberPreKeys'> = {};
  if (batch.preKeys > 0) {
    const firstId = await stores.metadata.allocateKeyIds(KeyIdKind.PreKey, batch.preKeys);
    const preKeys: PreKeyDto[] = [];
    for (let keyId = firstId; keyId < firstId + batch.preKeys; keyId++) {
      const privateKey = PrivateKey.generate();
      const publicKey = privateKey.getPublicKey();
      await stores.preKey.savePreKey(keyId, PreKeyRecord.new(keyId, publicKey, privateKey));
      preKeys.push({ keyId, publicKey: base64(publicKey.serialize()) });
    }
    upload.preKeys = preKeys;
  }
  if (batch.kyberPreKeys > 0) {
    const firstId = await stores.metadata.allocateKeyIds(KeyIdKind.KyberPreKey, batch.kyberPreKeys);
    const kyberPreKeys: KyberPreKeyDto[] = [];
    for (let keyId = firstId; keyId < firstId + batch.kyberPreKeys; keyId++) {
      const record = kyberPreKey(keyId, identity.identityKeyPair.privateKey, batch.now);
      await stores.kyberPreKey.saveKyberPreKey(keyId, record);
      kyberPreKeys.push(kyberDto(record));
    }
    upload.kyberPreKeys = kyberPreKeys;
  }
  return upload;
}

/**
 * A whole first upload at once: signed keys and one-time batches, private
 * halves saved in `stores`. Public keys and signatures only in the result.
 */
export async function generateKeyUpload(
  stores: SecureChatStores,
  identity: LocalIdentity,
  options: { oneTimePreKeys: number; oneTimeKyberPreKeys: number; now: number },
): Promise<UploadKeysRequest> {
  const { signedPreKey, kyberLastResortPreKey } = await generateSignedKeys(stores, identity, options.now);
  const oneTime = await generateOneTimeKeys(stores, identity, {
    preKeys: options.oneTimePreKeys,
    kyberPreKeys: options.oneTimeKyberPreKeys,
    now: options.now,
  });
  return { ...uploadHeader(identity), signedPreKey, kyberLastResortPreKey, ...oneTime };
}

/** The fields every upload carries. */
export function uploadHeader(identity: LocalIdentity): Pick<UploadKeysRequest, 'identityKey' | 'registrationId'> {
  return { identityKey: base64(identity.identityKeyPair.publicKey.serialize()), registrationId: identity.registrationId };
}

function kyberPreKey(keyId: number, identityPrivate: PrivateKey, now: number): KyberPreKeyRecord {
  const keyPair = KEMKeyPair.generate();
  const signature = identityPrivate.sign(keyPair.getPublicKey().serialize());
  return KyberPreKeyRecord.new(keyId, now, keyPair, signature);
}

function kyberDto(record: KyberPreKeyRecord): KyberPreKeyDto {
  return { keyId: record.id(), publicKey: base64(record.publicKey().serialize()), signature: base64(record.signature()) };
}

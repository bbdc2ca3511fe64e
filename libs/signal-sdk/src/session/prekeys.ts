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
import { KeyIdKind, type LocalIdentity, type SecureChatStores } from '../stores/stores.js';

const base64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');

/** A new identity key pair and a random 14-bit registration id. */
export function generateLocalIdentity(): LocalIdentity {
  return {
    identityKeyPair: IdentityKeyPair.generate(),
    registrationId: asRegistrationId(randomInt(REGISTRATION_ID_MIN, REGISTRATION_ID_MAX + 1)),
  };
}

export interface KeyBatchOptions {
  /** Also make a new signed EC prekey and a new Kyber last-resort prekey (needed on a first upload). */
  withSignedKeys: boolean;
  oneTimePreKeys: number;
  oneTimeKyberPreKeys: number;
  now: number;
}

/**
 * Makes prekeys for PQXDH, saves the private parts in the stores and returns
 * the upload, which holds public keys and signatures only. Both the signed EC
 * prekey and every Kyber prekey are signed by the identity key over the
 * serialized public key (PQXDH section 3.3).
 */
export async function generateKeyUpload(
  stores: SecureChatStores,
  identity: LocalIdentity,
  options: KeyBatchOptions,
): Promise<UploadKeysRequest> {
  const identityPrivate = identity.identityKeyPair.privateKey;
  const upload: UploadKeysRequest = {
    identityKey: base64(identity.identityKeyPair.publicKey.serialize()),
    registrationId: identity.registrationId,
  };

  if (options.withSignedKeys) {
    const signedId = await stores.metadata.allocateKeyIds(KeyIdKind.SignedPreKey, 1);
    const signedPrivate = PrivateKey.generate();
    const signedPublic = signedPrivate.getPublicKey();
    const signature = identityPrivate.sign(signedPublic.serialize());
    await stores.signedPreKey.saveSignedPreKey(
      signedId,
      SignedPreKeyRecord.new(signedId, options.now, signedPublic, signedPrivate, signature),
    );
    upload.signedPreKey = { keyId: signedId, publicKey: base64(signedPublic.serialize()), signature: base64(signature) } satisfies SignedPreKeyDto;

    const lastResortId = await stores.metadata.allocateKeyIds(KeyIdKind.KyberPreKey, 1);
    const lastResort = kyberPreKey(lastResortId, identityPrivate, options.now);
    await stores.kyberPreKey.saveLastResortKyberPreKey(lastResortId, lastResort);
    upload.kyberLastResortPreKey = kyberDto(lastResort);
  }

  if (options.oneTimePreKeys > 0) {
    const firstId = await stores.metadata.allocateKeyIds(KeyIdKind.PreKey, options.oneTimePreKeys);
    const preKeys: PreKeyDto[] = [];
    for (let keyId = firstId; keyId < firstId + options.oneTimePreKeys; keyId++) {
      const privateKey = PrivateKey.generate();
      const publicKey = privateKey.getPublicKey();
      await stores.preKey.savePreKey(keyId, PreKeyRecord.new(keyId, publicKey, privateKey));
      preKeys.push({ keyId, publicKey: base64(publicKey.serialize()) });
    }
    upload.preKeys = preKeys;
  }

  if (options.oneTimeKyberPreKeys > 0) {
    const firstId = await stores.metadata.allocateKeyIds(KeyIdKind.KyberPreKey, options.oneTimeKyberPreKeys);
    const kyberPreKeys: KyberPreKeyDto[] = [];
    for (let keyId = firstId; keyId < firstId + options.oneTimeKyberPreKeys; keyId++) {
      const record = kyberPreKey(keyId, identityPrivate, options.now);
      await stores.kyberPreKey.saveKyberPreKey(keyId, record);
      kyberPreKeys.push(kyberDto(record));
    }
    upload.kyberPreKeys = kyberPreKeys;
  }

  return upload;
}

function kyberPreKey(keyId: number, identityPrivate: PrivateKey, now: number): KyberPreKeyRecord {
  const keyPair = KEMKeyPair.generate();
  const signature = identityPrivate.sign(keyPair.getPublicKey().serialize());
  return KyberPreKeyRecord.new(keyId, now, keyPair, signature);
}

function kyberDto(record: KyberPreKeyRecord): KyberPreKeyDto {
  return { keyId: record.id(), publicKey: base64(record.publicKey().serialize()), signature: base64(record.signature()) };
}

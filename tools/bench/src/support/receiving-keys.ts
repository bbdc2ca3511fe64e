// The least a device needs at the relay to be addressed by a send: an identity
// key, a registration id, a signed prekey and a Kyber last-resort key, each
// signature real (the relay verifies them). Benchmarks that only carry
// pre-encrypted payloads never open a session, so one key set made once is
// uploaded for every device; only the public halves leave the process.
import { IdentityKeyPair, KEMKeyPair, PrivateKey } from '@signalapp/libsignal-client';
import type { UploadKeysRequest } from '@chat/protocol';

const b64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64');

/** One upload body (no one-time prekeys) to reuse for many devices; `registrationId` is what sends must name. */
export function receivingKeys(registrationId = 4711): UploadKeysRequest {
  const identity = IdentityKeyPair.generate();
  const signed = PrivateKey.generate().getPublicKey().serialize();
  const kyber = KEMKeyPair.generate().getPublicKey().serialize();
  return {
    identityKey: b64(identity.publicKey.serialize()),
    registrationId,
    signedPreKey: { keyId: 1, publicKey: b64(signed), signature: b64(identity.privateKey.sign(signed)) },
    kyberLastResortPreKey: { keyId: 2, publicKey: b64(kyber), signature: b64(identity.privateKey.sign(kyber)) },
  };
}

/** `PUT /v1/keys` for the token's device. @throws Error naming the relay's answer when it is not 204 */
export async function uploadKeys(relayUrl: string, accessToken: string, keys: UploadKeysRequest): Promise<void> {
  const response = await fetch(`${relayUrl}/v1/keys`, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${accessToken}` },
    body: JSON.stringify(keys),
  });
  const text = await response.text();
  if (response.status !== 204 && response.status !== 200) throw new Error(`uploading keys: ${response.status} ${text}`);
}

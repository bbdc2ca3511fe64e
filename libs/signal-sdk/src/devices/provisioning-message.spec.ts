import { describe, expect, it } from '@jest/globals';
import { IdentityKeyPair, PrivateKey } from '@signalapp/libsignal-client';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { PROVISIONING_INFO, openProvisioningMessage, sealProvisioningMessage } from './provisioning-message.js';

const SLOT = '3f2b8c1e-5a4d-4e7f-9b0c-1d2e3f4a5b6c';
const OTHER_SLOT = '3f2b8c1e-5a4d-4e7f-9b0c-1d2e3f4a5b6d';
const utf8 = (text: string) => new Uint8Array(Buffer.from(text, 'utf8'));

function failure(fn: () => unknown): SecureChatError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(SecureChatError);
    return error as SecureChatError;
  }
  throw new Error('did not throw');
}

describe('provisioning message', () => {
  const ephemeral = PrivateKey.generate();
  const identity = IdentityKeyPair.generate();
  const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');
  /** A message sealed as an approver would, from any JSON value. */
  const sealJson = (value: unknown, slotId = SLOT) => ephemeral.getPublicKey().seal(utf8(JSON.stringify(value)), PROVISIONING_INFO, utf8(slotId));
  const valid = () => ({
    version: 1,
    username: 'alice',
    identityPublicKey: b64(identity.publicKey.serialize()),
    identityPrivateKey: b64(identity.privateKey.serialize()),
  });

  it('opens to the username and the identity key pair that were sealed', () => {
    const sealed = sealProvisioningMessage({ username: 'alice', identityKeyPair: identity }, ephemeral.getPublicKey(), SLOT);
    const opened = openProvisioningMessage(sealed, ephemeral, SLOT);
    expect(opened.username).toBe('alice');
    expect(opened.identityKeyPair.publicKey.equals(identity.publicKey)).toBe(true);
    expect(opened.identityKeyPair.privateKey.serialize()).toEqual(identity.privateKey.serialize());
  });

  it('is the JSON of the protocol, HPKE-sealed with the info string and the slot id as associated data', () => {
    const sealed = sealProvisioningMessage({ username: 'alice', identityKeyPair: identity }, ephemeral.getPublicKey(), SLOT);
    expect(sealed[0]).toBe(1); // libsignal's HPKE type byte: base mode, X25519, HKDF-SHA256, AES-256-GCM
    const plaintext = ephemeral.open(sealed, PROVISIONING_INFO, utf8(SLOT));
    expect(JSON.parse(Buffer.from(plaintext).toString('utf8'))).toEqual(valid());
  });

  it('does not open for another slot, another key, or when altered (DecryptionFailed)', () => {
    const sealed = sealProvisioningMessage({ username: 'alice', identityKeyPair: identity }, ephemeral.getPublicKey(), SLOT);
    expect(failure(() => openProvisioningMessage(sealed, ephemeral, OTHER_SLOT)).code).toBe(SecureChatErrorCode.DecryptionFailed);
    expect(failure(() => openProvisioningMessage(sealed, PrivateKey.generate(), SLOT)).code).toBe(SecureChatErrorCode.DecryptionFailed);
    const altered = sealed.slice();
    altered[altered.length - 1]! ^= 1;
    expect(failure(() => openProvisioningMessage(altered, ephemeral, SLOT)).code).toBe(SecureChatErrorCode.DecryptionFailed);
    const otherInfo = ephemeral.getPublicKey().seal(utf8(JSON.stringify(valid())), 'another purpose', utf8(SLOT));
    expect(failure(() => openProvisioningMessage(otherInfo, ephemeral, SLOT)).code).toBe(SecureChatErrorCode.DecryptionFailed);
  });

  const otherIdentity = IdentityKeyPair.generate();
  it.each<[string, unknown]>([
    ['not JSON', undefined],
    ['an array', [valid()]],
    ['version 2', { ...valid(), version: 2 }],
    ['version "1"', { ...valid(), version: '1' }],
    ['an extra field', { ...valid(), extra: true }],
    ['a missing field', { version: 1, username: 'alice', identityPublicKey: valid().identityPublicKey }],
    ['an upper-case username', { ...valid(), username: 'Alice' }],
    ['an invalid username', { ...valid(), username: 'a' }],
    ['a 32-byte public key', { ...valid(), identityPublicKey: b64(identity.publicKey.serialize().subarray(1)) }],
    ['base64url keys', { ...valid(), identityPrivateKey: Buffer.from(identity.privateKey.serialize()).toString('base64url') }],
    ['a 31-byte private key', { ...valid(), identityPrivateKey: b64(identity.privateKey.serialize().subarray(1)) }],
    ['a private key of another pair', { ...valid(), identityPrivateKey: b64(otherIdentity.privateKey.serialize()) }],
    ['a public key with a bad type byte', { ...valid(), identityPublicKey: b64(Uint8Array.of(7, ...identity.publicKey.serialize().subarray(1))) }],
  ])('refuses %s (MalformedContent)', (_what, value) => {
    const sealed = value === undefined ? ephemeral.getPublicKey().seal(utf8('{"version":1,'), PROVISIONING_INFO, utf8(SLOT)) : sealJson(value);
    expect(failure(() => openProvisioningMessage(sealed, ephemeral, SLOT)).code).toBe(SecureChatErrorCode.MalformedContent);
  });
});

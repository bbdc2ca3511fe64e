import { describe, expect, it } from '@jest/globals';
import { IdentityKeyPair, PrivateKey, PublicKey } from '@signalapp/libsignal-client';
import { MAX_BACKUP_BYTES } from '@chat/protocol';
import { SecureChatErrorCode } from '../errors.js';
import { asDeviceId, asRegistrationId } from '../ids.js';
import { KeyIdKind } from '../stores/stores.js';
import {
  BACKUP_FORMAT_VERSION,
  BACKUP_HEADER_BYTES,
  BACKUP_KDF_LIMITS,
  BACKUP_PADDING_BLOCK,
  DEFAULT_BACKUP_KDF,
  openBackup,
  sealBackup,
  type BackupContents,
} from './backup-format.js';
import { generateRecoverySecret, parseRecoverySecret } from './recovery-secret.js';
import { failure } from '../test-support/spec-helpers.js';

/** 1 MiB of scrypt instead of 128: the format is the same, only slower to attack. */
const CHEAP_KDF = { logN: 10, r: 8, p: 1 };
const TAG_BYTES = 16;

function contentsFor(username: string, peers = 2): BackupContents {
  return {
    createdAt: 1_764_115_200_000,
    account: { username, deviceId: asDeviceId(1) },
    identity: { identityKeyPair: IdentityKeyPair.generate(), registrationId: asRegistrationId(4321) },
    nextKeyIds: { [KeyIdKind.PreKey]: 201, [KeyIdKind.SignedPreKey]: 2, [KeyIdKind.KyberPreKey]: 203 },
    peers: Array.from({ length: peers }, (_, i) => ({
      username: `peer_${i}`,
      identityKey: IdentityKeyPair.generate().publicKey,
      verified: i % 2 === 1,
    })),
  };
}

const secret = () => parseRecoverySecret(generateRecoverySecret());
const seal = (contents: BackupContents, key: Uint8Array) => sealBackup(contents, key, CHEAP_KDF);

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');

describe('the backup blob', () => {
  it('round-trips the identity, account, key id counters and peer identities', async () => {
    const key = secret();
    const contents = contentsFor('alice');
    const opened = await openBackup(await seal(contents, key), key, 'alice');

    expect(opened.createdAt).toBe(contents.createdAt);
    expect(opened.account).toEqual(contents.account);
    expect(opened.nextKeyIds).toEqual(contents.nextKeyIds);
    expect(opened.identity.registrationId).toBe(4321);
    expect(hex(opened.identity.identityKeyPair.serialize())).toBe(hex(contents.identity.identityKeyPair.serialize()));
    expect(opened.peers.map((peer) => [peer.username, hex(peer.identityKey.serialize()), peer.verified])).toEqual(
      contents.peers.map((peer) => [peer.username, hex(peer.identityKey.serialize()), peer.verified]),
    );
    expect(opened.peers.map((peer) => peer.verified)).toEqual([false, true]);
  });

  it('is laid out as documented: magic, version, scrypt parameters, salt, nonce, key check, padded ciphertext, tag', async () => {
    const blob = await seal(contentsFor('alice'), secret());
    expect(Buffer.from(blob.subarray(0, 4)).toString('latin1')).toBe('SCBK');
    expect([...blob.subarray(4, 9)]).toEqual([BACKUP_FORMAT_VERSION, 1, CHEAP_KDF.logN, CHEAP_KDF.r, CHEAP_KDF.p]);
    expect(BACKUP_HEADER_BYTES).toBe(69);
    expect((blob.length - BACKUP_HEADER_BYTES - TAG_BYTES) % BACKUP_PADDING_BLOCK).toBe(0);
  });

  it('pads the content, so a few more peers do not change the size', async () => {
    const key = secret();
    const sizes = await Promise.all([0, 1, 10].map(async (peers) => (await seal(contentsFor('alice', peers), key)).length));
    expect(sizes).toEqual([sizes[0], sizes[0], sizes[0]]);
    expect(sizes[0]).toBe(BACKUP_HEADER_BYTES + BACKUP_PADDING_BLOCK + TAG_BYTES);
  });

  it('uses fresh salt and nonce each time and holds no key, username or secret in the clear', async () => {
    const recoverySecret = generateRecoverySecret();
    const key = parseRecoverySecret(recoverySecret);
    const contents = contentsFor('alice_in_clear');
    const [first, second] = [await seal(contents, key), await seal(contents, key)];
    expect(hex(first.subarray(9, 37))).not.toBe(hex(second.subarray(9, 37)));

    const blob = Buffer.from(first);
    const needles = [
      Buffer.from(contents.identity.identityKeyPair.privateKey.serialize()),
      Buffer.from(contents.identity.identityKeyPair.publicKey.serialize()),
      Buffer.from(contents.peers[0]!.identityKey.serialize()),
      Buffer.from(key),
      Buffer.from(recoverySecret, 'utf8'),
      Buffer.from('alice_in_clear', 'utf8'),
      Buffer.from('peer_0', 'utf8'),
    ];
    const text = blob.toString('latin1');
    for (const needle of needles) {
      expect(blob.includes(needle)).toBe(false);
      expect(text.includes(needle.toString('base64'))).toBe(false);
      expect(text.includes(needle.toString('hex'))).toBe(false);
    }
  });

  it('refuses a wrong recovery secret with WrongRecoverySecret', async () => {
    const blob = await seal(contentsFor('alice'), secret());
    expect((await failure(openBackup(blob, secret(), 'alice'))).code).toBe(SecureChatErrorCode.WrongRecoverySecret);
  });

  it("binds the blob to its account: alice's backup does not open as bob's, even with the right secret", async () => {
    const key = secret();
    const blob = await seal(contentsFor('alice'), key);
    expect((await failure(openBackup(blob, key, 'bob'))).code).toBe(SecureChatErrorCode.BackupCorrupted);
  });

  it.each([
    ['the ciphertext', (blob: Uint8Array) => (blob[BACKUP_HEADER_BYTES + 10]! ^= 1)],
    ['the tag', (blob: Uint8Array) => (blob[blob.length - 1]! ^= 1)],
    ['the nonce', (blob: Uint8Array) => (blob[30]! ^= 1)],
    ['the format version', (blob: Uint8Array) => (blob[4] = 2)],
    ['the magic', (blob: Uint8Array) => (blob[0] = 0)],
    ['the scrypt cost, beyond the bounds', (blob: Uint8Array) => (blob[6] = 30)],
  ])('refuses a blob with altered %s with BackupCorrupted', async (_part, alter) => {
    const key = secret();
    const blob = await seal(contentsFor('alice'), key);
    alter(blob);
    expect((await failure(openBackup(blob, key, 'alice'))).code).toBe(SecureChatErrorCode.BackupCorrupted);
  });

  it('cannot tell an altered salt or scrypt cost from a wrong secret: both derive another key', async () => {
    const key = secret();
    for (const offset of [9, 6]) {
      const blob = await seal(contentsFor('alice'), key);
      blob[offset]! ^= 1;
      expect((await failure(openBackup(blob, key, 'alice'))).code).toBe(SecureChatErrorCode.WrongRecoverySecret);
    }
  });

  it('refuses truncated and oversized blobs with BackupCorrupted', async () => {
    const key = secret();
    const blob = await seal(contentsFor('alice'), key);
    for (const wrong of [blob.subarray(0, blob.length - 1), blob.subarray(0, 20), new Uint8Array(MAX_BACKUP_BYTES + 1)]) {
      expect((await failure(openBackup(wrong, key, 'alice'))).code).toBe(SecureChatErrorCode.BackupCorrupted);
    }
  });

  it('refuses content that authenticates but is invalid (a private key of another public key)', async () => {
    const key = secret();
    const contents = contentsFor('alice');
    contents.identity = {
      ...contents.identity,
      identityKeyPair: new IdentityKeyPair(IdentityKeyPair.generate().publicKey, PrivateKey.generate()),
    };
    const error = await failure(openBackup(await seal(contents, key), key, 'alice'));
    expect(error.code).toBe(SecureChatErrorCode.BackupCorrupted);
  });

  it('refuses to seal more than MAX_BACKUP_BYTES with BackupTooLarge', async () => {
    const identityKey = PublicKey.deserialize(IdentityKeyPair.generate().publicKey.serialize());
    const contents = contentsFor('alice', 0);
    contents.peers = Array.from({ length: 4000 }, (_, i) => ({ username: `peer_number_${i}`, identityKey, verified: false }));
    expect((await failure(seal(contents, secret()))).code).toBe(SecureChatErrorCode.BackupTooLarge);
  });

  it('refuses to seal with scrypt parameters outside the bounds', async () => {
    for (const kdf of [{ ...CHEAP_KDF, logN: 9 }, { ...CHEAP_KDF, logN: 21 }, { logN: 20, r: 16, p: 1 }]) {
      expect((await failure(sealBackup(contentsFor('alice'), secret(), kdf))).code).toBe(SecureChatErrorCode.InvalidOptions);
    }
  });

  it('defaults to the documented scrypt cost (N = 2^17, r = 8, p = 1) and writes it into the blob', async () => {
    expect(DEFAULT_BACKUP_KDF).toEqual({ logN: 17, r: 8, p: 1 });
    expect(BACKUP_KDF_LIMITS).toEqual({ logN: [10, 20], r: [1, 16], p: [1, 4], maxMemoryBytes: 256 * 1024 * 1024 });
    const key = secret();
    const blob = await sealBackup(contentsFor('alice'), key);
    expect([...blob.subarray(5, 9)]).toEqual([1, 17, 8, 1]);
    expect((await openBackup(blob, key, 'alice')).account.username).toBe('alice');
  });
});

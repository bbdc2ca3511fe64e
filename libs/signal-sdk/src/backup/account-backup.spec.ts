import { describe, expect, it } from '@jest/globals';
import { Direction, IdentityKeyPair, ProtocolAddress } from '@signalapp/libsignal-client';
import { KEY_ID_MAX } from '@chat/protocol';
import { SecureChatErrorCode } from '../errors.js';
import { asDeviceId, asRegistrationId } from '../ids.js';
import { createMemoryStores } from '../stores/memory-stores.js';
import { KeyIdKind, type SecureChatStores } from '../stores/stores.js';
import { RESTORE_KEY_ID_MARGIN, exportAccountState, restoreAccountState } from './account-backup.js';
import type { BackupContents } from './backup-format.js';
import { failure } from '../test-support/spec-helpers.js';

const alice = { username: 'alice', deviceId: asDeviceId(1) };
const bobAddress = ProtocolAddress.new('bob', 1);

/** Stores as an install that registered and talked to bob and carol leaves them. */
async function usedStores() {
  const stores = createMemoryStores();
  const identity = { identityKeyPair: IdentityKeyPair.generate(), registrationId: asRegistrationId(77) };
  await stores.identity.saveLocalIdentity(identity);
  await stores.metadata.saveAccount(alice);
  await stores.metadata.allocateKeyIds(KeyIdKind.PreKey, 300);
  await stores.metadata.allocateKeyIds(KeyIdKind.KyberPreKey, 150);
  const bob = IdentityKeyPair.generate().publicKey;
  const carol = IdentityKeyPair.generate().publicKey;
  await stores.identity.saveIdentity(bobAddress, bob);
  await stores.identity.saveIdentity(ProtocolAddress.new('carol', 2), carol);
  return { stores, identity, bob, carol };
}

const nextIdOf = (stores: SecureChatStores, kind: KeyIdKind) => stores.metadata.allocateKeyIds(kind, 1);

describe('exportAccountState', () => {
  it('reads the identity, the account, the next id of each key kind and every trusted peer identity', async () => {
    const { stores, identity, bob, carol } = await usedStores();
    const contents = await exportAccountState(stores, alice, 1234);
    expect(contents.createdAt).toBe(1234);
    expect(contents.account).toEqual(alice);
    expect(contents.identity.identityKeyPair.publicKey.equals(identity.identityKeyPair.publicKey)).toBe(true);
    expect(contents.nextKeyIds).toEqual({ [KeyIdKind.PreKey]: 302, [KeyIdKind.SignedPreKey]: 2, [KeyIdKind.KyberPreKey]: 152 });
    const peers = new Map(contents.peers.map((peer) => [peer.username, peer.identityKey]));
    expect([...peers.keys()].sort()).toEqual(['bob', 'carol']);
    expect(peers.get('bob')?.equals(bob)).toBe(true);
    expect(peers.get('carol')?.equals(carol)).toBe(true);
    // The exported counters are never handed out again by the exporting install either.
    expect(await nextIdOf(stores, KeyIdKind.PreKey)).toBe(302);
  });

  it('refuses stores without an identity with NoLocalIdentity', async () => {
    expect((await failure(exportAccountState(createMemoryStores(), alice, 0))).code).toBe(SecureChatErrorCode.NoLocalIdentity);
  });
});

describe('restoreAccountState', () => {
  it('writes identity, trusted peers and account into empty stores and moves every key id counter past the margin', async () => {
    const { stores: old, identity, bob } = await usedStores();
    const contents = await exportAccountState(old, alice, 0);
    const fresh = createMemoryStores();
    await restoreAccountState(fresh, contents, alice);

    const restored = await fresh.identity.getLocalIdentity();
    expect(restored?.identityKeyPair.serialize()).toEqual(identity.identityKeyPair.serialize());
    expect(restored?.registrationId).toBe(77);
    expect(await fresh.metadata.getAccount()).toEqual(alice);
    // Trust on first use continues: bob's key is trusted for sending, any other is not.
    expect(await fresh.identity.isTrustedIdentity(bobAddress, bob, Direction.Sending)).toBe(true);
    expect(await fresh.identity.isTrustedIdentity(bobAddress, IdentityKeyPair.generate().publicKey, Direction.Sending)).toBe(false);
    for (const kind of Object.values(KeyIdKind)) {
      expect(await nextIdOf(fresh, kind)).toBe(contents.nextKeyIds[kind] + RESTORE_KEY_ID_MARGIN);
    }
  });

  it('carries verification, and for a peer whose key changed without being accepted, the key it trusted', async () => {
    const { stores: old, bob, carol } = await usedStores();
    await old.identity.savePeerIdentity({ username: 'carol', identityKey: carol, trustedKey: carol, verifiedKey: carol });
    const bobsUnacceptedKey = IdentityKeyPair.generate().publicKey;
    await old.identity.saveIdentity(bobAddress, bobsUnacceptedKey);
    const fresh = createMemoryStores();
    await restoreAccountState(fresh, await exportAccountState(old, alice, 0), alice);

    const carolRestored = await fresh.identity.getPeerIdentity('carol');
    expect(carolRestored?.verifiedKey?.equals(carol)).toBe(true);
    const bobRestored = await fresh.identity.getPeerIdentity('bob');
    expect(bobRestored?.identityKey.equals(bob)).toBe(true);
    expect(bobRestored?.trustedKey.equals(bob)).toBe(true);
    expect(bobRestored?.verifiedKey).toBeNull();
    // The change shows again when the restored install meets the new key.
    expect(await fresh.identity.isTrustedIdentity(bobAddress, bobsUnacceptedKey, Direction.Sending)).toBe(false);
  });

  it('wraps a counter that would pass the largest key id', async () => {
    const { stores: old } = await usedStores();
    const contents: BackupContents = await exportAccountState(old, alice, 0);
    contents.nextKeyIds[KeyIdKind.PreKey] = KEY_ID_MAX - 10;
    const fresh = createMemoryStores();
    await restoreAccountState(fresh, contents, alice);
    expect(await nextIdOf(fresh, KeyIdKind.PreKey)).toBe(RESTORE_KEY_ID_MARGIN - 10);
  });

  it('refuses stores of another identity with InvalidState and writes nothing', async () => {
    const { stores: old } = await usedStores();
    const contents = await exportAccountState(old, alice, 0);
    const { stores: other, identity: otherIdentity } = await usedStores();
    const error = await failure(restoreAccountState(other, contents, alice));
    expect(error.code).toBe(SecureChatErrorCode.InvalidState);
    expect((await other.identity.getLocalIdentity())?.identityKeyPair.serialize()).toEqual(otherIdentity.identityKeyPair.serialize());
    expect(await nextIdOf(other, KeyIdKind.PreKey)).toBe(301);
  });

  it('refuses stores signed in as another account with InvalidState', async () => {
    const { stores: old } = await usedStores();
    const contents = await exportAccountState(old, alice, 0);
    const fresh = createMemoryStores();
    await fresh.metadata.saveAccount({ username: 'mallory', deviceId: asDeviceId(1) });
    expect((await failure(restoreAccountState(fresh, contents, alice))).code).toBe(SecureChatErrorCode.InvalidState);
    expect(await fresh.identity.getLocalIdentity()).toBeNull();
  });

  it('finishes a restore that stopped part-way, keeping a peer identity the stores learned since', async () => {
    const { stores: old } = await usedStores();
    const contents = await exportAccountState(old, alice, 0);
    const fresh = createMemoryStores();
    await restoreAccountState(fresh, contents, alice);
    const bobsNewKey = IdentityKeyPair.generate().publicKey;
    await fresh.identity.saveIdentity(bobAddress, bobsNewKey);

    await restoreAccountState(fresh, contents, alice);
    expect((await fresh.identity.getIdentity(bobAddress))?.equals(bobsNewKey)).toBe(true);
    expect(await fresh.metadata.getAccount()).toEqual(alice);
  });
});

import { KEY_ID_MAX } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { KeyIdKind, type AccountRecord, type SecureChatStores } from '../stores/stores.js';
import type { BackupContents } from './backup-format.js';

/**
 * How far a restored install moves each key id counter past the backed-up
 * one. The old install may have allocated ids after the backup was made,
 * and peers may still hold bundles with them; a PreKey message naming such an
 * id must find no key (a clean "unknown prekey" that session repair can act
 * on) rather than a different key under the same id. 2^20 ids are ten
 * thousand refills of 100; the counters wrap within 24 bits.
 */
export const RESTORE_KEY_ID_MARGIN = 2 ** 20;

/**
 * The account state a backup carries, read from the stores. Reading a key id
 * counter reserves one id (the store interface has no read-only form), which
 * costs nothing.
 * @throws {SecureChatError} `NoLocalIdentity`.
 */
export async function exportAccountState(stores: SecureChatStores, account: AccountRecord, now: number): Promise<BackupContents> {
  const identity = await stores.identity.getLocalIdentity();
  if (!identity) throw new SecureChatError(SecureChatErrorCode.NoLocalIdentity, 'the stores hold no identity key to back up');
  const nextKeyIds = {} as Record<KeyIdKind, number>;
  for (const kind of Object.values(KeyIdKind)) nextKeyIds[kind] = (await stores.metadata.allocateKeyIds(kind, 1)) + 1;
  return { createdAt: now, account, identity, nextKeyIds, peers: await stores.identity.getTrustedIdentities() };
}

/**
 * Writes a decrypted backup into the stores: the local identity, the peer
 * identities the stores do not know yet, the key id counters moved past the
 * backed-up ones, and the account. The stores must be empty, or hold this
 * very identity and account (a restore that stopped part-way is finished).
 * @throws {SecureChatError} `InvalidState` when the stores hold another identity or account; nothing is written then.
 */
export async function restoreAccountState(stores: SecureChatStores, contents: BackupContents, account: AccountRecord): Promise<void> {
  const existing = await stores.identity.getLocalIdentity();
  const existingAccount = await stores.metadata.getAccount();
  const sameIdentity = existing?.identityKeyPair.publicKey.equals(contents.identity.identityKeyPair.publicKey) ?? true;
  if (!sameIdentity || (existingAccount !== null && existingAccount.username !== account.username)) {
    throw new SecureChatError(SecureChatErrorCode.InvalidState, 'the stores belong to another identity or account; restore into an empty install');
  }

  await stores.identity.saveLocalIdentity(contents.identity);
  for (const peer of contents.peers) {
    if (await stores.identity.getPeerIdentity(peer.username)) continue;
    const key = peer.identityKey;
    await stores.identity.savePeerIdentity({ username: peer.username, identityKey: key, trustedKey: key, verifiedKey: peer.verified ? key : null });
  }
  for (const kind of Object.values(KeyIdKind)) await advanceKeyIds(stores, kind, contents.nextKeyIds[kind]);
  await stores.metadata.saveAccount(account);
}

/** Moves the store's counter of `kind` to `backedUpNext + RESTORE_KEY_ID_MARGIN` (wrapped), never backwards. */
async function advanceKeyIds(stores: SecureChatStores, kind: KeyIdKind, backedUpNext: number): Promise<void> {
  const beyond = backedUpNext + RESTORE_KEY_ID_MARGIN;
  const target = beyond > KEY_ID_MAX ? beyond - KEY_ID_MAX : beyond;
  const current = await stores.metadata.allocateKeyIds(kind, 1);
  if (target > current + 1) await stores.metadata.allocateKeyIds(kind, target - current - 1);
}

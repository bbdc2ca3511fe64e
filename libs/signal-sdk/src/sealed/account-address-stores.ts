import {
  Direction,
  IdentityChange,
  IdentityKeyStore,
  ProtocolAddress,
  SessionStore,
  type PrivateKey,
  type PublicKey,
  type SessionRecord,
} from '@signalapp/libsignal-client';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';

/**
 * libsignal's multi-recipient sealed sender (`sealedSenderMultiRecipientEncrypt`)
 * addresses recipients by service id: `ProtocolAddress.new(accountId, deviceId)`.
 * This SDK keeps sessions and identities under usernames. These adapters
 * present the username-keyed stores under account-id addresses, given the
 * account id -> username map of the recipients (from the metadata store,
 * `getUsernameOfAccount`). libsignal calls stores from native code, so the
 * map is taken whole, up front.
 *
 *   const { session, identity } = accountAddressStores(stores, usernamesByAccountId);
 *   await sealedSenderMultiRecipientEncrypt({ content, recipients, sessionStore: session, identityStore: identity });
 */
export type UsernamesByAccountId = ReadonlyMap<string, string>;

/**
 * The username address of an account-id address.
 * @throws {SecureChatError} `EncryptionFailed` for an account id the map does not name.
 */
export function usernameAddressOf(address: ProtocolAddress, usernames: UsernamesByAccountId): ProtocolAddress {
  const username = usernames.get(address.name().toLowerCase());
  if (username === undefined) {
    throw new SecureChatError(SecureChatErrorCode.EncryptionFailed, `no username is known for account ${address.name()}`);
  }
  return ProtocolAddress.new(username, address.deviceId());
}

/** A session store read and written under account-id addresses, backed by one keyed by username. */
export class AccountAddressSessionStore extends SessionStore {
  constructor(
    private readonly inner: SessionStore,
    private readonly usernames: UsernamesByAccountId,
  ) {
    super();
  }

  saveSession(address: ProtocolAddress, record: SessionRecord): Promise<void> {
    return this.inner.saveSession(usernameAddressOf(address, this.usernames), record);
  }

  getSession(address: ProtocolAddress): Promise<SessionRecord | null> {
    return this.inner.getSession(usernameAddressOf(address, this.usernames));
  }

  getExistingSessions(addresses: ProtocolAddress[]): Promise<SessionRecord[]> {
    return this.inner.getExistingSessions(addresses.map((address) => usernameAddressOf(address, this.usernames)));
  }
}

/** An identity store answering for account-id addresses, backed by one keyed by username. */
export class AccountAddressIdentityKeyStore extends IdentityKeyStore {
  constructor(
    private readonly inner: IdentityKeyStore,
    private readonly usernames: UsernamesByAccountId,
  ) {
    super();
  }

  getIdentityKey(): Promise<PrivateKey> {
    return this.inner.getIdentityKey();
  }

  getLocalRegistrationId(): Promise<number> {
    return this.inner.getLocalRegistrationId();
  }

  saveIdentity(address: ProtocolAddress, key: PublicKey): Promise<IdentityChange> {
    return this.inner.saveIdentity(usernameAddressOf(address, this.usernames), key);
  }

  isTrustedIdentity(address: ProtocolAddress, key: PublicKey, direction: Direction): Promise<boolean> {
    return this.inner.isTrustedIdentity(usernameAddressOf(address, this.usernames), key, direction);
  }

  getIdentity(address: ProtocolAddress): Promise<PublicKey | null> {
    return this.inner.getIdentity(usernameAddressOf(address, this.usernames));
  }
}

/** Both adapters over `stores` (pass a transaction's stores inside a transaction). */
export function accountAddressStores(
  stores: { session: SessionStore; identity: IdentityKeyStore },
  usernames: UsernamesByAccountId,
): { session: AccountAddressSessionStore; identity: AccountAddressIdentityKeyStore } {
  return {
    session: new AccountAddressSessionStore(stores.session, usernames),
    identity: new AccountAddressIdentityKeyStore(stores.identity, usernames),
  };
}

import type { AccountLookupResponse } from '@chat/protocol';
import { USERNAME_PATTERN, canonicalUsername } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import type { SecureChatMetadataStore } from '../stores/stores.js';

const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** An account id as the SDK keeps it: a UUID, lower case. Null for anything else. */
export function normalizeAccountId(accountId: unknown): string | null {
  return typeof accountId === 'string' && UUID_PATTERN.test(accountId) ? accountId.toLowerCase() : null;
}

/**
 * Which account id (the UUID of sender certificates and multi-recipient
 * sends) is which username. Learnt from bundles (`accountId`) and from
 * authenticated envelopes (`sourceAccountId`) into the metadata store; as a
 * last resort asked of the relay (`GET /v1/accounts/:accountId`), which then
 * learns that this account heard from that one (docs/security.md).
 */
export class AccountIds {
  constructor(private readonly lookup: (accountId: string) => Promise<AccountLookupResponse>) {}

  /** Records `username` <-> `accountId`; an id that is not a UUID is ignored (a relay without account ids). */
  async remember(metadata: SecureChatMetadataStore, username: string, accountId: unknown): Promise<void> {
    const id = normalizeAccountId(accountId);
    if (id === null) return;
    if ((await metadata.getAccountId(username)) !== id) await metadata.saveAccountId(username, id);
  }

  /**
   * The username of `accountId`: from the store, else from the relay (and
   * then kept).
   * @throws {SecureChatError} the relay's refusal (`UNKNOWN_RECIPIENT` for an account that does not exist),
   *   `Network`; `Network` too when the relay answers for another account or with no valid username.
   */
  async usernameOf(metadata: SecureChatMetadataStore, accountId: string): Promise<string> {
    const known = await metadata.getUsernameOfAccount(accountId);
    if (known !== null) return known;
    const answer = await this.lookup(accountId);
    const username = typeof answer?.username === 'string' ? canonicalUsername(answer.username) : '';
    if (normalizeAccountId(answer?.accountId) !== accountId || !USERNAME_PATTERN.test(username)) {
      throw new SecureChatError(SecureChatErrorCode.Network, 'the relay answered an account lookup for another account or without a username');
    }
    await metadata.saveAccountId(username, accountId);
    return username;
  }
}

// From a username and a passphrase to a signed-in SDK client on the
// account's own store: what every command but register and link starts with.
import { SecureChatClient, SecureChatError, SecureChatErrorCode, type SecureChatLogger } from '@chat/signal-sdk';
import type { SqliteStores } from '@chat/signal-sdk/sqlite';
import { CliError, describeError } from '../errors.js';
import { openAccountStore, readProfile, type Profile } from './account-store.js';
import { readPassphrase } from './passphrase.js';
import { storePathOf } from './profile-paths.js';

export const DEFAULT_RELAY_URL = 'http://127.0.0.1:8080';

/**
 * Reconnect quickly: a person waits at the screen, and one relay serves a
 * handful of terminals, so a short cap costs nothing (the SDK's default
 * cap, 60 s, suits many clients after an outage).
 */
export const CLI_BACK_OFF = { initialDelayMs: 250, maxDelayMs: 3_000 } as const;

export interface ClientSettings {
  relayUrl: string;
  trustRoot?: string;
  logger?: SecureChatLogger;
}

/** @throws {CliError} a relay URL or trust root the SDK refuses. */
export function createClient(stores: SqliteStores, settings: ClientSettings): SecureChatClient {
  try {
    return SecureChatClient.create({
      relayUrl: settings.relayUrl,
      stores,
      trustRoot: settings.trustRoot,
      backOff: CLI_BACK_OFF,
      logger: settings.logger,
    });
  } catch (error) {
    if (SecureChatError.is(error, SecureChatErrorCode.InvalidOptions)) {
      throw new CliError(`the relay URL or trust root is not valid: ${error.message}`, 2, { cause: error });
    }
    throw error;
  }
}

export interface SignedInAccount {
  client: SecureChatClient;
  stores: SqliteStores;
  profile: Profile;
  /** The relay this run uses: `--relay`/`CHAT_RELAY_URL`, else the profile's. */
  relayUrl: string;
}

export interface SignInOptions {
  home: string;
  username: string;
  /** Given on the command line or in the environment; else the profile's. */
  relayUrl?: string;
  trustRoot?: string;
  logger?: SecureChatLogger;
}

/**
 * Asks for the passphrase, opens the store and signs in: with the stored
 * refresh token, else with the stored relay password.
 * @throws {CliError} every failure, worded for the person.
 */
export async function signIn(options: SignInOptions): Promise<SignedInAccount> {
  const passphrase = await readPassphrase({ confirm: false });
  const stores = await openAccountStore(options.home, options.username, passphrase);
  let relayUrl = options.relayUrl ?? DEFAULT_RELAY_URL;
  try {
    const profile = await readProfile(stores, options.username);
    relayUrl = options.relayUrl ?? profile.relayUrl;
    const client = createClient(stores, { relayUrl, trustRoot: options.trustRoot, logger: options.logger });
    await resumeOrLogIn(client, profile, storePathOf(options.home, options.username));
    return { client, stores, profile, relayUrl };
  } catch (error) {
    await stores.close();
    throw error instanceof CliError ? error : new CliError(describeError(error, { relayUrl, username: options.username }), 1, { cause: error });
  }
}

async function resumeOrLogIn(client: SecureChatClient, profile: Profile, storePath: string): Promise<void> {
  try {
    await client.resume();
  } catch (error) {
    const noSession = SecureChatError.is(error, SecureChatErrorCode.SessionExpired) || SecureChatError.is(error, SecureChatErrorCode.InvalidState);
    if (!noSession) throw error;
    if (!profile.relayPassword) {
      throw new CliError(
        `this linked device can no longer sign in as ${profile.username} (it was unlinked, or unused too long); ` +
          `delete ${storePath} and link it again with chat-cli link ${profile.username}`,
        1,
        { cause: error },
      );
    }
    await client.login(profile.username, profile.relayPassword);
  }
}

// An account's encrypted store and the CLI's profile record inside it. The
// relay password is random and lives only there: the person knows the
// passphrase, never the password.
import { randomBytes } from 'node:crypto';
import { access, chmod, rm } from 'node:fs/promises';
import { SqliteStores } from '@chat/signal-sdk/sqlite';
import { CliError, describeError } from '../errors.js';
import { ensureHome, storeFilesOf, storePathOf } from './profile-paths.js';

/** What the CLI remembers about an account, in `stores.appRecords('profile')`. */
export interface Profile {
  username: string;
  /** The relay given at register (or link); later runs use it unless told otherwise. */
  relayUrl: string;
  /** null on a linked device: it signs in with its refresh token only. */
  relayPassword: string | null;
}

const PROFILE_COLLECTION = 'profile';
const PROFILE_KEY = 'profile';

/** 32 random bytes, base64url: 43 characters, inside the relay's 8..256. */
export function newRelayPassword(): string {
  return randomBytes(32).toString('base64url');
}

const exists = (path: string) =>
  access(path).then(
    () => true,
    () => false,
  );

/**
 * Creates `<home>/<username>.db`, locked by `passphrase`.
 * @throws {CliError} when the account already has a store there, or the store cannot be created.
 */
export async function createAccountStore(home: string, username: string, passphrase: string): Promise<SqliteStores> {
  const path = storePathOf(home, username);
  if (await exists(path)) {
    throw new CliError(`${username} already has a store at ${path}; sign in with chat-cli login ${username}`);
  }
  await ensureHome(home);
  return openStoreFile(home, username, passphrase);
}

/**
 * Opens the existing store of `username`.
 * @throws {CliError} no such store, wrong passphrase, or another chat-cli has it open.
 */
export async function openAccountStore(home: string, username: string, passphrase: string): Promise<SqliteStores> {
  const path = storePathOf(home, username);
  if (!(await exists(path))) {
    throw new CliError(`no account named ${username} in ${home}; create it with chat-cli register ${username}`);
  }
  return openStoreFile(home, username, passphrase);
}

async function openStoreFile(home: string, username: string, passphrase: string): Promise<SqliteStores> {
  // SQLite creates the WAL and shared-memory files later; the umask keeps them private too.
  process.umask(0o077);
  let stores: SqliteStores;
  try {
    stores = await SqliteStores.open({ path: storePathOf(home, username), passphrase });
  } catch (error) {
    throw new CliError(describeError(error, { username }), 1, { cause: error });
  }
  await Promise.all(storeFilesOf(home, username).map((file) => chmod(file, 0o600).catch(() => undefined)));
  return stores;
}

/** Deletes the store of an account that never came to be (a refused register or link). */
export async function deleteAccountStore(home: string, username: string): Promise<void> {
  await Promise.all(storeFilesOf(home, username).map((file) => rm(file, { force: true })));
}

export async function saveProfile(stores: SqliteStores, profile: Profile): Promise<void> {
  await stores.appRecords(PROFILE_COLLECTION).put(PROFILE_KEY, new TextEncoder().encode(JSON.stringify(profile)));
}

/** @throws {CliError} when the store holds no profile (not made by chat-cli, or a register that stopped half-way). */
export async function readProfile(stores: SqliteStores, username: string): Promise<Profile> {
  const stored = await stores.appRecords(PROFILE_COLLECTION).get(PROFILE_KEY);
  if (!stored) throw new CliError(`the store of ${username} holds no chat-cli profile; register again`);
  const profile = JSON.parse(new TextDecoder().decode(stored)) as Partial<Profile>;
  if (typeof profile.username !== 'string' || typeof profile.relayUrl !== 'string') {
    throw new CliError(`the chat-cli profile in the store of ${username} is damaged`);
  }
  return { username: profile.username, relayUrl: profile.relayUrl, relayPassword: profile.relayPassword ?? null };
}


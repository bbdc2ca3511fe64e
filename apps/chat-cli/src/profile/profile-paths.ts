// Where a person's accounts live: one encrypted store per account,
// `<home>/<username>.db`, in a home directory only they can read.
import { chmod, mkdir, readdir } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { USERNAME_PATTERN } from '@chat/protocol';
import { CliError } from '../errors.js';

export const STORE_SUFFIX = '.db';
/** The files SQLite keeps beside a store in WAL mode. */
const SIDE_FILES = ['-wal', '-shm', '-journal'];

/** `--home`, else `CHAT_CLI_HOME`, else `~/.chat-cli`. */
export function resolveHome(option: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  return resolve(option ?? env['CHAT_CLI_HOME'] ?? join(homedir(), '.chat-cli'));
}

/**
 * The canonical (lower-case) username, or a usage error: it also names a
 * file, so nothing but the relay's own username alphabet may pass.
 */
export function checkUsername(username: string): string {
  const canonical = username.toLowerCase();
  if (!USERNAME_PATTERN.test(canonical)) {
    throw new CliError(`"${username}" is not a username: 3 to 32 of a-z, 0-9, _ and .`, 2);
  }
  return canonical;
}

export function storePathOf(home: string, username: string): string {
  return join(home, `${checkUsername(username)}${STORE_SUFFIX}`);
}

/** The store file and the files SQLite may keep beside it. */
export function storeFilesOf(home: string, username: string): string[] {
  const path = storePathOf(home, username);
  return [path, ...SIDE_FILES.map((suffix) => path + suffix)];
}

/** Creates the home directory readable by its owner only (and tightens an existing one). */
export async function ensureHome(home: string): Promise<void> {
  await mkdir(home, { recursive: true, mode: 0o700 });
  await chmod(home, 0o700);
}

/** The usernames with a store in `home`, sorted; none when the directory does not exist. */
export async function listProfiles(home: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(home);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
  return names
    .filter((name) => name.endsWith(STORE_SUFFIX))
    .map((name) => name.slice(0, -STORE_SUFFIX.length))
    .filter((name) => USERNAME_PATTERN.test(name))
    .sort();
}

/** `login`'s username: the one given, else the only profile in `home`. */
export async function chooseProfile(home: string, given: string | undefined): Promise<string> {
  if (given !== undefined) return checkUsername(given);
  const profiles = await listProfiles(home);
  if (profiles.length === 1) return profiles[0];
  if (profiles.length === 0) {
    throw new CliError(`no account in ${home}; create one with chat-cli register <username>`);
  }
  throw new CliError(`${home} holds several accounts (${profiles.join(', ')}); name one (chat-cli login <username>, or --as <username>)`);
}

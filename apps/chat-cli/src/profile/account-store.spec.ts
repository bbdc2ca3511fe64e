import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CliError } from '../errors.js';
import { createAccountStore, deleteAccountStore, newRelayPassword, openAccountStore, readProfile, saveProfile } from './account-store.js';
import { checkUsername, chooseProfile, listProfiles, resolveHome } from './profile-paths.js';

let parent: string;
let home: string;

beforeEach(async () => {
  parent = await mkdtemp(join(tmpdir(), 'chat-cli-profile-'));
  home = join(parent, 'home');
});

afterEach(async () => {
  await rm(parent, { recursive: true, force: true });
});

const mode = async (path: string) => (await stat(path)).mode & 0o777;

describe('account stores', () => {
  it('creates the home readable by its owner only and the store file 0600, with the profile inside, encrypted', async () => {
    const stores = await createAccountStore(home, 'alice', 'correct horse');
    const password = newRelayPassword();
    await saveProfile(stores, { username: 'alice', relayUrl: 'http://relay.test', relayPassword: password });
    await stores.close();
    expect(await mode(home)).toBe(0o700);
    expect(await mode(join(home, 'alice.db'))).toBe(0o600);
    // The random relay password is in the store, never in the clear.
    expect((await readFile(join(home, 'alice.db'))).includes(Buffer.from(password))).toBe(false);

    const reopened = await openAccountStore(home, 'alice', 'correct horse');
    expect(await readProfile(reopened, 'alice')).toEqual({ username: 'alice', relayUrl: 'http://relay.test', relayPassword: password });
    await reopened.close();
  });

  it('makes a 43-character random relay password each time', () => {
    const password = newRelayPassword();
    expect(password).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(newRelayPassword()).not.toBe(password);
  });

  it('refuses a second register of the same account in the same home', async () => {
    await (await createAccountStore(home, 'alice', 'pw')).close();
    await expect(createAccountStore(home, 'alice', 'pw')).rejects.toThrow('alice already has a store');
  });

  it('says "wrong passphrase for <username>" for a wrong passphrase', async () => {
    await (await createAccountStore(home, 'alice', 'right')).close();
    await expect(openAccountStore(home, 'alice', 'wrong')).rejects.toThrow(/^wrong passphrase for alice \[WRONG_PASSPHRASE\]$/);
  });

  it('says the account is open in another chat-cli while a store is held', async () => {
    const held = await createAccountStore(home, 'alice', 'pw');
    // The lock is taken by the first write: the profile.
    await saveProfile(held, { username: 'alice', relayUrl: 'http://relay.test', relayPassword: 'x' });
    try {
      await expect(openAccountStore(home, 'alice', 'pw')).rejects.toThrow('alice is open in another chat-cli');
    } finally {
      await held.close();
    }
  });

  it('names the missing account and how to create it', async () => {
    await expect(openAccountStore(home, 'bob', 'pw')).rejects.toThrow('no account named bob');
  });

  it('deletes a store that never became an account', async () => {
    await (await createAccountStore(home, 'alice', 'pw')).close();
    await deleteAccountStore(home, 'alice');
    expect(await listProfiles(home)).toEqual([]);
  });
});

describe('profile paths', () => {
  it('takes --home, else CHAT_CLI_HOME, else ~/.chat-cli', () => {
    expect(resolveHome('/x/y', { CHAT_CLI_HOME: '/a' })).toBe('/x/y');
    expect(resolveHome(undefined, { CHAT_CLI_HOME: '/a' })).toBe('/a');
    expect(resolveHome(undefined, {})).toMatch(/\.chat-cli$/);
  });

  it('accepts usernames in canonical form only, so that none names another file', () => {
    expect(checkUsername('Alice')).toBe('alice');
    for (const bad of ['../etc', 'a/b', 'ab', '', 'x'.repeat(33)]) expect(() => checkUsername(bad)).toThrow(CliError);
  });

  it('chooses the only profile of a home, and asks for a name when there are several or none', async () => {
    await expect(chooseProfile(home, undefined)).rejects.toThrow('chat-cli register');
    await (await createAccountStore(home, 'alice', 'pw')).close();
    await writeFile(join(home, 'notes.txt'), 'not a store');
    expect(await chooseProfile(home, undefined)).toBe('alice');
    await (await createAccountStore(home, 'bob', 'pw')).close();
    await expect(chooseProfile(home, undefined)).rejects.toThrow('several accounts (alice, bob)');
    expect(await chooseProfile(home, 'Bob')).toBe('bob');
  });
});

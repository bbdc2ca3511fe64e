import { join } from 'node:path';
import { describe, expect, it } from '@jest/globals';
import {
  ChatEvent,
  SecureChatClient,
  SecureChatError,
  SecureChatErrorCode,
  SessionResetReason,
  generateRecoverySecret,
  type BackupKdfParams,
  type SecureChatStores,
} from '@chat/signal-sdk';
import { SqliteStores } from '@chat/signal-sdk/sqlite';
import { createMemoryStores, waitForMessage } from '@chat/signal-sdk/testing';
import { useSdkRelay } from './support/sdk-relay.js';
import { DEFAULT_TEST_PASSWORD, uniqueUsername } from './support/test-relay.js';

// Encrypted backup end to end: SDK clients on the real relay (AppModule, real
// database, HTTP and WebSocket). One install backs up; a new install with
// empty stores restores from it and talks to a peer that knew the old one.

/** 1 MiB of scrypt instead of the default 128 MiB: the format is the same, only cheaper to attack. */
const TEST_KDF: BackupKdfParams = { logN: 10, r: 8, p: 1 };

describe('encrypted backup and restore through the real relay', () => {
  const fixture = useSdkRelay('backup-restore-e2e');
  const { clients, openStores } = fixture;

  function install<S extends SecureChatStores>(stores: S = createMemoryStores() as S) {
    const client = SecureChatClient.create({ relayUrl: fixture.relay.baseUrl, stores, backupKdf: TEST_KDF });
    clients.push(client);
    return { client, stores };
  }

  async function registered(prefix: string) {
    const user = install();
    const username = uniqueUsername(prefix);
    await user.client.register(username, DEFAULT_TEST_PASSWORD);
    return { ...user, username };
  }

  async function chat(from: SecureChatClient, to: SecureChatClient, text: string) {
    const received = waitForMessage(to, (message) => message.text === text, 10_000);
    await from.send(to.username!, text);
    expect((await received).sender).toBe(from.username);
  }

  const storedBlob = async (username: string) =>
    (
      await fixture.relay.sql<{ blob: Uint8Array }>(
        'SELECT b.blob FROM backups b JOIN accounts a ON a.id = b.account_id WHERE a.username = $1',
        username,
      )
    ).map((row) => Buffer.from(row.blob));

  const relayKeyIds = async (table: 'one_time_prekeys' | 'kyber_prekeys', username: string) =>
    (
      await fixture.relay.sql<{ key_id: number }>(
        `SELECT k.key_id FROM ${table} k JOIN devices d ON d.id = k.device_row_id JOIN accounts a ON a.id = d.account_id
          WHERE a.username = $1 ORDER BY k.key_id`,
        username,
      )
    ).map((row) => row.key_id);

  it('restores alice on a new install; bob writes first on his old session, session repair heals it, and both directions work', async () => {
    const alice = await registered('alice');
    const bob = await registered('bob');
    await Promise.all([alice.client.connect(), bob.client.connect()]);
    await chat(alice.client, bob.client, 'before the backup');
    await chat(bob.client, alice.client, 'reply before the backup');

    const secret = generateRecoverySecret();
    await alice.client.createBackup(secret);
    expect(await storedBlob(alice.username)).toHaveLength(1);
    const oldPreKeyIds = await relayKeyIds('one_time_prekeys', alice.username);
    await alice.client.close(); // the old install is lost
    await bob.client.send(alice.username, 'sent while alice was away'); // queued at the relay, on the old session

    const restored = install();
    await restored.client.restoreFromBackup(alice.username.toUpperCase(), DEFAULT_TEST_PASSWORD, secret);
    expect(restored.client.username).toBe(alice.username);
    const oldIdentity = (await alice.stores.identity.getLocalIdentity())!;
    const newIdentity = (await restored.stores.identity.getLocalIdentity())!;
    expect(Buffer.from(newIdentity.identityKeyPair.serialize()).equals(Buffer.from(oldIdentity.identityKeyPair.serialize()))).toBe(true);
    expect(newIdentity.registrationId).toBe(oldIdentity.registrationId);

    // The relay now holds only one-time keys whose private halves the new install has.
    const preKeyIds = await relayKeyIds('one_time_prekeys', alice.username);
    const kyberIds = await relayKeyIds('kyber_prekeys', alice.username);
    expect(preKeyIds).toHaveLength(100);
    expect(kyberIds).toHaveLength(100);
    expect(preKeyIds.filter((id) => oldPreKeyIds.includes(id))).toEqual([]);
    for (const id of preKeyIds) await expect(restored.stores.preKey.getPreKey(id)).resolves.toBeDefined();
    for (const id of kyberIds) await expect(restored.stores.kyberPreKey.getKyberPreKey(id)).resolves.toBeDefined();

    // Bob writes first, on the session he had with the old install, which the
    // restored one does not have: it cannot decrypt the queued message nor the
    // next one, asks bob once to start over on a new session, and bob resends
    // both on it.
    const resets = { alice: [] as unknown[], bob: [] as unknown[] };
    restored.client.on(ChatEvent.SessionReset, (reset) => void resets.alice.push(reset));
    bob.client.on(ChatEvent.SessionReset, (reset) => void resets.bob.push(reset));
    const errors: SecureChatError[] = [];
    restored.client.on(ChatEvent.Error, (error) => void errors.push(error));
    const texts: string[] = [];
    restored.client.on(ChatEvent.Message, (message) => void texts.push(message.text ?? ''));
    await restored.client.connect();
    await chat(bob.client, restored.client, 'bob writes first after the restore');
    expect(resets.alice).toEqual([{ peer: bob.username, device: 1, reason: SessionResetReason.NoSession, initiator: 'local' }]);
    expect(resets.bob).toEqual([{ peer: alice.username, device: 1, reason: SessionResetReason.PeerRequest, initiator: 'peer' }]);

    await chat(restored.client, bob.client, 'hello again, from the restored install');
    await chat(bob.client, restored.client, 'welcome back');
    expect(texts).toEqual(['sent while alice was away', 'bob writes first after the restore', 'welcome back']);
    expect(errors).toEqual([]);
    for (let i = 0; i < 3; i++) {
      await chat(restored.client, bob.client, `restored to bob ${i}`);
      await chat(bob.client, restored.client, `bob to restored ${i}`);
    }
  });

  it('a third party who opens a session after the restore reaches the restored install (old keys gone from bundles)', async () => {
    const alice = await registered('alice');
    const secret = generateRecoverySecret();
    await alice.client.createBackup(secret);
    await alice.client.close();
    const restored = install();
    await restored.client.restoreFromBackup(alice.username, DEFAULT_TEST_PASSWORD, secret);
    await restored.client.connect();

    const carol = await registered('carol');
    await carol.client.connect();
    await chat(carol.client, restored.client, 'carol meets the restored alice');
    await chat(restored.client, carol.client, 'alice answers carol');
  });

  it("restores into a new install's encrypted SQLite stores, which keep the account and its sessions across a restart", async () => {
    const alice = await registered('alice');
    const bob = await registered('bob');
    await bob.client.connect();
    await chat(alice.client, bob.client, 'from the first install');
    const secret = generateRecoverySecret();
    await alice.client.createBackup(secret);
    await alice.client.close();

    const path = join(fixture.dir, `${alice.username}.db`);
    const openStore = async () => {
      const stores = await SqliteStores.open({ path, passphrase: 'passphrase of the new install', kdf: TEST_KDF });
      openStores.push(stores);
      return stores;
    };
    const first = install(await openStore());
    await first.client.restoreFromBackup(alice.username, DEFAULT_TEST_PASSWORD, secret);
    await first.client.connect();
    await chat(first.client, bob.client, 'restored onto SQLite');
    await chat(bob.client, first.client, 'reply to the SQLite install');
    await first.client.close();
    await first.stores.close();

    // The app restarts: same file, no password, no recovery secret.
    const again = install(await openStore());
    await again.client.resume();
    expect(again.client.username).toBe(alice.username);
    await again.client.connect();
    await chat(bob.client, again.client, 'bob continues the session after the restart');
    await chat(again.client, bob.client, 'alice continues too');
  });

  it('keeps no identity private key, recovery secret or plaintext in the stored blob or in any relay column', async () => {
    const alice = await registered('alice');
    const bob = await registered('bob');
    const plaintexts = ['BACKUP-OSPREY-2207 the vault code is 4471', 'BACKUP-MARMOT-9015 see you at noon'];
    await bob.client.connect();
    await chat(alice.client, bob.client, plaintexts[0]!);
    await alice.client.send(bob.username, plaintexts[1]!); // also sits in the messages table until bob acks
    const secret = generateRecoverySecret();
    await alice.client.createBackup(secret);
    const [blob] = await storedBlob(alice.username);
    expect(blob?.length).toBeGreaterThan(0);

    const needles: Array<{ what: string; bytes: Buffer }> = [
      { what: 'recovery secret as shown', bytes: Buffer.from(secret, 'utf8') },
      { what: 'recovery secret digits', bytes: Buffer.from(secret.replaceAll(' ', ''), 'utf8') },
      { what: 'recovery secret bytes', bytes: Buffer.from(secret.replaceAll(' ', ''), 'hex') },
      ...plaintexts.map((text) => ({ what: 'plaintext', bytes: Buffer.from(text, 'utf8') })),
      ...plaintexts.map((text) => ({ what: 'plaintext fragment', bytes: Buffer.from(text.slice(0, 14), 'utf8') })),
    ];
    for (const { username, stores } of [alice, bob]) {
      const identity = (await stores.identity.getLocalIdentity())!;
      needles.push({ what: `${username} identity private key`, bytes: Buffer.from(identity.identityKeyPair.privateKey.serialize()) });
      needles.push({ what: `${username} identity key pair`, bytes: Buffer.from(identity.identityKeyPair.serialize()) });
    }
    const found = (haystack: Buffer) => {
      const text = haystack.toString('latin1');
      return needles
        .filter(
          ({ bytes }) =>
            haystack.includes(bytes) ||
            text.includes(bytes.toString('base64')) ||
            text.includes(bytes.toString('base64url')) ||
            text.toLowerCase().includes(bytes.toString('hex')),
        )
        .map(({ what }) => what);
    };
    expect(found(blob!)).toEqual([]);

    const columns = await fixture.relay.sql<{ table_name: string; column_name: string; data_type: string }>(
      `SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c
         JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
        WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
          AND c.data_type IN ('text', 'character varying', 'character', 'bytea', 'json', 'jsonb')`,
    );
    expect(columns).toContainEqual({ table_name: 'backups', column_name: 'blob', data_type: 'bytea' });
    const findings: string[] = [];
    let scanned = 0;
    for (const { table_name, column_name, data_type } of columns) {
      const rows = await fixture.relay.sql<{ v: unknown }>(`SELECT "${column_name}" AS v FROM "${table_name}" WHERE "${column_name}" IS NOT NULL`);
      for (const { v } of rows) {
        scanned++;
        const value = data_type === 'bytea' ? Buffer.from(v as Uint8Array) : Buffer.from(typeof v === 'string' ? v : JSON.stringify(v), 'utf8');
        findings.push(...found(value).map((what) => `${what} in ${table_name}.${column_name}`));
      }
    }
    expect(scanned).toBeGreaterThan(0);
    expect(findings).toEqual([]);
  });

  it('fails cleanly on a wrong recovery secret: a clear code, the new stores empty, the relay unchanged', async () => {
    const alice = await registered('alice');
    const secret = generateRecoverySecret();
    await alice.client.createBackup(secret);
    const [blobBefore] = await storedBlob(alice.username);
    const keysBefore = await relayKeyIds('one_time_prekeys', alice.username);

    const fresh = install();
    const error = await fresh.client.restoreFromBackup(alice.username, DEFAULT_TEST_PASSWORD, generateRecoverySecret()).catch((e: unknown) => e);
    expect(SecureChatError.is(error, SecureChatErrorCode.WrongRecoverySecret)).toBe(true);
    expect(await fresh.stores.identity.getLocalIdentity()).toBeNull();
    expect(await fresh.stores.metadata.getAccount()).toBeNull();
    expect(await fresh.stores.identity.getTrustedIdentities()).toEqual([]);
    expect(fresh.client.username).toBeNull();
    const [blobAfter] = await storedBlob(alice.username);
    expect(blobAfter?.equals(blobBefore!)).toBe(true);
    expect(await relayKeyIds('one_time_prekeys', alice.username)).toEqual(keysBefore);

    const malformed = await fresh.client.restoreFromBackup(alice.username, DEFAULT_TEST_PASSWORD, 'my old password').catch((e: unknown) => e);
    expect(SecureChatError.is(malformed, SecureChatErrorCode.InvalidRecoverySecret)).toBe(true);

    // The failed attempts left nothing behind: the right secret still restores into the same stores.
    await fresh.client.restoreFromBackup(alice.username, DEFAULT_TEST_PASSWORD, secret);
    expect(fresh.client.username).toBe(alice.username);
  });

  it('answers BackupNotFound for an account that never made one, and deleteBackup removes it', async () => {
    const alice = await registered('alice');
    const fresh = install();
    const missing = await fresh.client.restoreFromBackup(alice.username, DEFAULT_TEST_PASSWORD, generateRecoverySecret()).catch((e: unknown) => e);
    expect(SecureChatError.is(missing, SecureChatErrorCode.BackupNotFound)).toBe(true);

    await alice.client.createBackup(generateRecoverySecret());
    expect(await storedBlob(alice.username)).toHaveLength(1);
    await alice.client.deleteBackup();
    expect(await storedBlob(alice.username)).toHaveLength(0);
  });
});

// Issue #10, server compromise: an attacker takes the relay's machine after a
// scripted run of every feature (1:1 both ways with the first PreKey message,
// offline delivery, a linked device with sync copies, a group with a removal,
// sealed 1:1 and sealed group sends, receipts and typing, a backup restored
// with its recovery secret, a password change), with messages still waiting
// for an offline member. The attacker holds a dump of every table and
// everything the relay wrote at its most verbose log level, and the files of
// its data directory (with the embedded database, the database's own files:
// its pages, dead rows and write-ahead log). Each test below
// is one search of the attacker; the last shows each search can find what is
// there.
import { createDecipheriv, hkdfSync, randomBytes, scrypt } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { sealedSenderDecryptToUsmc } from '@signalapp/libsignal-client';
import {
  ChatEvent,
  ConnectionState,
  SecureChatClient,
  generateRecoverySecret,
  type BackupKdfParams,
  type GroupUpdated,
  type IncomingMessage,
  type Receipt,
  type SecureChatError,
  type SecureChatStores,
  type Typing,
} from '@chat/signal-sdk';
import { MessageCollector } from '@chat/signal-sdk/testing';
import { uniqueUsername } from '../support/test-relay.js';
import { until } from '../support/wait.js';
import { startCompromisedRelay, type CompromisedRelay } from './support/compromise-relay.js';
import { bytesSecret, SecretScanner, textSecret, type DumpTable, type Finding, type Secret } from './support/compromise-scan.js';
import { RecordingTransport, recordingStores, SecretLedger } from './support/compromise-secrets.js';

/** How long a step waits for what it waits on (generous: CI machines are shared; no timing is asserted). */
const WAIT_MS = 30_000;

/** 1 MiB of scrypt instead of the SDK's 128 MiB default: the same format, cheaper to make. */
const TEST_KDF: BackupKdfParams = { logN: 10, r: 8, p: 1 };

type Person = 'alice' | 'bob' | 'carol' | 'dave' | 'erin';

interface Install {
  name: string;
  /** Whose account this install is. */
  who: Person;
  client: SecureChatClient;
  stores: SecureChatStores;
  inbox: MessageCollector;
  receipts: Receipt[];
  typing: Typing[];
  groupUpdates: GroupUpdated[];
  errors: SecureChatError[];
}

/** Rows of one table of the dump as objects, by column name. */
function rowsOf(tables: readonly DumpTable[], name: string): Array<Record<string, string>> {
  const table = tables.find((t) => t.name === name);
  if (!table) throw new Error(`no table ${name} in the dump`);
  return table.rows.map((row) => Object.fromEntries(table.columns.map((column, i) => [column, row[i]!])));
}

/** A bytea as Postgres prints it (`\x` + hex). */
const byteaOf = (text: string) => Buffer.from(text.replace(/^\\x/, ''), 'hex');

const describeFindings = (findings: readonly Finding[]) => findings.map((f) => `${f.secret} (${f.encoding}) in ${f.where}`);

describe('adversarial: server compromise', () => {
  let relay: CompromisedRelay;
  const ledger = new SecretLedger();
  const installs: Install[] = [];
  let tables: DumpTable[] = [];
  let logs = '';
  let files: Array<{ path: string; bytes: Buffer }> = [];
  /** Per account: what names it (account id, username, device row ids, identity public key). */
  const identifiersOf = new Map<Person, Secret[]>();
  const accountIdOf = new Map<Person, string>();
  let usernames: Record<Person, string>;
  let recoverySecret = '';
  let trustRoot = '';
  /** Each secret text's label: what a failure names instead of the text. */
  const labelOf = new Map<string, string>();

  /** A distinctive text, noted as a secret of `kind`. */
  const secretText = (kind: 'message' | 'credential', label: string) => {
    const text = `${label} ${randomBytes(12).toString('hex')} ${randomBytes(12).toString('base64url')}`;
    ledger.text(kind, label, text);
    labelOf.set(text, label);
    return text;
  };

  function install(name: string, who: Person): Install {
    const stores = recordingStores(name, ledger);
    const client = SecureChatClient.create({
      relayUrl: relay.url,
      stores,
      transport: new RecordingTransport(relay.url, name, ledger),
      trustRoot,
      backupKdf: TEST_KDF,
      backOff: { initialDelayMs: 20, maxDelayMs: 200 },
    });
    const device: Install = { name, who, client, stores, inbox: new MessageCollector(client), receipts: [], typing: [], groupUpdates: [], errors: [] };
    client.on(ChatEvent.Receipt, (receipt) => void device.receipts.push(receipt));
    client.on(ChatEvent.Typing, (typing) => void device.typing.push(typing));
    client.on(ChatEvent.GroupUpdated, (update) => void device.groupUpdates.push(update));
    client.on(ChatEvent.Error, (error) => void device.errors.push(error));
    installs.push(device);
    return device;
  }

  /** Waits until `device`'s app was handed a message with this text; returns it. */
  async function received(device: Install, text: string): Promise<IncomingMessage> {
    await until(() => device.inbox.received.some((m) => m.text === text), `${device.name} receiving "${labelOf.get(text)}"`, WAIT_MS);
    return device.inbox.received.find((m) => m.text === text)!;
  }

  beforeAll(async () => {
    relay = await startCompromisedRelay();
    trustRoot = ((await (await fetch(`${relay.url}/v1/certificate/trust-root`)).json()) as { trustRoot: string }).trustRoot;
    usernames = {
      alice: uniqueUsername('alice_compromise'),
      bob: uniqueUsername('bob_compromise'),
      carol: uniqueUsername('carol_compromise'),
      dave: uniqueUsername('dave_compromise'),
      erin: uniqueUsername('erin_compromise'),
    };
    const password = (who: string) => secretText('credential', `${who} password`);
    const passwords = { alice: password('alice'), bob: password('bob'), carol: password('carol'), dave: password('dave'), erin: password('erin') };

    // --- accounts, and alice's second device linked through a provisioning slot ---------------
    const a1 = install('alice', 'alice');
    const bob = install('bob', 'bob');
    const carol = install('carol', 'carol');
    const dave = install('dave', 'dave');
    for (const [who, device] of [['alice', a1], ['bob', bob], ['carol', carol], ['dave', dave]] as const) {
      await device.client.register(usernames[who], passwords[who]);
    }
    const a2 = install('alice device 2', 'alice');
    const linking = await a2.client.beginLinking({ pollIntervalMs: 50 });
    await a1.client.approveLink(linking.uri);
    await linking.completion;
    expect([a2.client.username, a2.client.deviceId]).toEqual([usernames.alice, 2]);

    // --- 1:1: alice's first (PreKey) message waits for bob, offline; her device 2 gets a sync copy --
    await Promise.all([a1, a2, carol, dave].map((device) => device.client.connect()));
    const whileBobAway = secretText('message', 'alice to bob while he is offline');
    await a1.client.send(usernames.bob, whileBobAway);
    expect((await received(a2, whileBobAway)).outgoing).toBe(true);
    await bob.client.connect();
    expect((await received(bob, whileBobAway)).sender).toBe(usernames.alice);
    const bobReply = secretText('message', 'bob answers alice on both her devices');
    await bob.client.send(usernames.alice, bobReply);
    await received(a1, bobReply);
    await received(a2, bobReply);

    // --- sealed 1:1 (profile keys went with the first messages), typing and a read receipt --------
    const sealedToAlice = secretText('message', 'bob to alice sealed');
    const sentSealed = await bob.client.send(usernames.alice, sealedToAlice);
    const atAlice = await received(a1, sealedToAlice);
    await received(a2, sealedToAlice);
    await bob.client.sendTyping(usernames.alice, true);
    await until(() => a1.typing.some((t) => t.sender === usernames.bob && t.typing), 'alice seeing bob type', WAIT_MS);
    await a1.client.sendReadReceipt(usernames.bob, [atAlice.timestamp]);
    await until(() => bob.receipts.some((r) => r.type === 'read' && r.timestamps.includes(sentSealed.timestamp)), 'bob getting the read receipt', WAIT_MS);

    // --- a group: created, everyone sends, dave removed ------------------------------------------
    const title = secretText('message', 'group title');
    const group = await a1.client.createGroup(title, [usernames.bob, usernames.carol, usernames.dave]);
    ledger.bytes('message', 'group id', Buffer.from(group.id, 'base64url'));
    ledger.text('message', 'group id (base64url)', group.id);
    for (const member of [a2, bob, carol, dave]) await until(() => member.groupUpdates.some((u) => u.group.id === group.id), `${member.name} learning the group`, WAIT_MS);
    for (const sender of [a1, bob, carol, dave]) {
      const text = secretText('message', `group message from ${sender.name}`);
      await sender.client.sendGroupMessage(group.id, text);
      for (const member of [a1, a2, bob, carol, dave]) if (member !== sender) await received(member, text);
    }
    await a1.client.removeGroupMember(group.id, usernames.dave);
    for (const member of [a2, bob, carol]) await until(() => member.groupUpdates.some((u) => u.removed.includes(usernames.dave)), `${member.name} learning dave left`, WAIT_MS);
    await until(() => dave.groupUpdates.some((u) => u.removedSelf), 'dave learning he was removed', WAIT_MS);
    const afterRemoval = secretText('message', 'group message after the removal');
    await bob.client.sendGroupMessage(group.id, afterRemoval);
    for (const member of [a1, a2, carol]) await received(member, afterRemoval);

    // --- backup: dave backs up, loses his install, restores with the recovery secret -----------
    recoverySecret = generateRecoverySecret();
    ledger.text('backup', 'recovery secret', recoverySecret);
    ledger.text('backup', 'recovery secret (digits only)', recoverySecret.replaceAll(' ', ''));
    ledger.bytes('backup', 'recovery secret (bytes)', Buffer.from(recoverySecret.replaceAll(' ', ''), 'hex'));
    await dave.client.createBackup(recoverySecret);
    await dave.client.close();
    const restored = install('dave restored', 'dave');
    await restored.client.restoreFromBackup(usernames.dave, passwords.dave, recoverySecret);
    await restored.client.connect();
    const fromRestored = secretText('message', 'restored dave to bob');
    await restored.client.send(usernames.bob, fromRestored);
    await received(bob, fromRestored);
    const toRestored = secretText('message', 'bob to the restored dave');
    await bob.client.send(usernames.dave, toRestored);
    await received(restored, toRestored);

    // --- carol changes her password (every socket of hers is closed; she reconnects) -----------
    const carolNewPassword = secretText('credential', 'carol new password');
    await carol.client.changePassword(passwords.carol, carolNewPassword);
    await until(() => carol.client.connectionState === ConnectionState.Connected, 'carol reconnecting after the password change', WAIT_MS);
    const carolAfterChange = secretText('message', 'carol to bob after her password change');
    await carol.client.send(usernames.bob, carolAfterChange);
    await received(bob, carolAfterChange);

    // --- left waiting at the relay: carol offline gets a sealed 1:1 and a sealed group upload; ---
    // --- erin, who never connects, gets bob's first (authenticated PreKey) message -------------
    await carol.client.close();
    await bob.client.send(usernames.carol, secretText('message', 'bob to carol sealed while she is offline'));
    await a2.client.sendGroupMessage(group.id, secretText('message', 'alice device 2 to the group while carol is offline'));
    const erin = install('erin', 'erin');
    await erin.client.register(usernames.erin, passwords.erin);
    await erin.client.close();
    await bob.client.send(usernames.erin, secretText('message', 'bob to erin who never connected'));

    // --- the compromise: the relay stops, the attacker takes its database and its output ---------
    for (const device of installs) await device.client.close();
    await relay.stop();
    tables = await relay.databaseTables();
    logs = relay.logs();
    files = await relay.dataFiles();

    for (const account of rowsOf(tables, 'accounts')) {
      const who = (Object.keys(usernames) as Person[]).find((key) => usernames[key] === account['username']);
      if (!who) continue;
      accountIdOf.set(who, account['id']!);
      identifiersOf.set(who, [
        textSecret(`${who}'s account id`, account['id']!),
        bytesSecret(`${who}'s account id (bytes)`, Buffer.from(account['id']!.replaceAll('-', ''), 'hex')),
        textSecret(`${who}'s username`, account['username']!),
        ...(account['identity_key'] !== 'NULL' ? [bytesSecret(`${who}'s identity public key`, byteaOf(account['identity_key']!))] : []),
        ...rowsOf(tables, 'devices')
          .filter((device) => device['account_id'] === account['id'])
          .map((device) => textSecret(`${who}'s device ${device['device_id']} row id`, device['id']!)),
      ]);
    }
    for (const device of installs) expect({ device: device.name, errors: device.errors.map((e) => e.code) }).toEqual({ device: device.name, errors: [] });
  }, 180_000);

  afterAll(async () => {
    for (const device of installs) await device.client.close().catch(() => undefined);
    await relay?.close();
  });

  /** The attacker's search for `secrets` in every cell of the dump, every log line and every file of the data directory. */
  const search = (secrets: readonly Secret[]) => {
    const scanner = new SecretScanner(secrets);
    return describeFindings([...scanner.scanTables(tables), ...scanner.scanLog(logs), ...scanner.scanFiles(files)]);
  };

  it('an attacker holding the relay (every table and Redis key, every log line at LOG_LEVEL=verbose, every file of its data directory) searches it for each message text, group title and group id, raw, hex, base64 or base64url, in UTF-8 or UTF-16: none is there', () => {
    const messages = ledger.secrets('message');
    expect(messages.length).toBeGreaterThanOrEqual(16);
    expect(search(messages)).toEqual([]);
  });

  it('the attacker searches the same for every private key the clients held (identity, signed, Kyber and one-time prekeys, sender keys, profile keys): none is there', () => {
    const keys = ledger.secrets('key');
    for (const kind of [/identity private key/, /one-time prekey/, /signed prekey/, /^(?!.*last-resort).*Kyber prekey/, /last-resort Kyber prekey/, /sender key/, /profile key/]) {
      expect({ kind: String(kind), recorded: keys.some((secret) => kind.test(secret.label)) }).toEqual({ kind: String(kind), recorded: true });
    }
    expect(search(keys)).toEqual([]);
  });

  it('the attacker searches the same for the backup recovery secret and the scrypt and AES keys derived from it: none is there, though the backup blob is', async () => {
    const [backup] = rowsOf(tables, 'backups');
    expect(backup?.['account_id']).toBe(accountIdOf.get('dave'));
    // The blob's own header gives the scrypt parameters and salt (docs/protocol.md, "The backup blob").
    const blob = byteaOf(backup!['blob']!);
    const header = blob.subarray(0, 69);
    const [logN, r, p] = [blob[6]!, blob[7]!, blob[8]!];
    const salt = blob.subarray(9, 25);
    const master = await new Promise<Buffer>((resolve, reject) =>
      scrypt(Buffer.from(recoverySecret.replaceAll(' ', ''), 'hex'), salt, 32, { N: 2 ** logN, r, p, maxmem: 256 * 1024 * 1024 }, (error, key) =>
        error ? reject(error) : resolve(key),
      ),
    );
    const aesKey = Buffer.from(hkdfSync('sha256', master, new Uint8Array(0), 'SecureChat backup v1 AES-256-GCM key', 32));
    // These are the keys that open the blob: the search below looks for the right bytes.
    const decipher = createDecipheriv('aes-256-gcm', aesKey, blob.subarray(25, 37), { authTagLength: 16 });
    decipher.setAAD(Buffer.concat([header, Buffer.from(usernames.dave, 'utf8')]));
    decipher.setAuthTag(blob.subarray(blob.length - 16));
    const content = Buffer.concat([decipher.update(blob.subarray(69, blob.length - 16)), decipher.final()]);
    expect(content.toString('utf8')).toContain(usernames.dave);

    const backupSecrets = [...ledger.secrets('backup'), bytesSecret('backup master key (scrypt)', master), bytesSecret('backup AES key', aesKey)];
    expect(search(backupSecrets)).toEqual([]);
  });

  it('the attacker searches the same for passwords, access and refresh tokens and provisioning secrets in the clear: none is there (the relay keeps only hashes)', () => {
    const credentials = ledger.secrets('credential');
    for (const kind of [/password$/, /new password/, /access token/, /refresh token/, /provisioning slot secret/]) {
      expect({ kind: String(kind), recorded: credentials.some((secret) => kind.test(secret.label)) }).toEqual({ kind: String(kind), recorded: true });
    }
    expect(rowsOf(tables, 'refresh_tokens').length).toBeGreaterThan(0);
    expect(search(credentials)).toEqual([]);
  });

  it('the attacker reads each queued sealed message row: it names no sender, and no other row or log line that mentions it names the sender', async () => {
    const accountOfDevice = new Map(rowsOf(tables, 'devices').map((d) => [d['id']!, d['account_id']!]));
    const personOf = (accountId: string | undefined) => [...accountIdOf].find(([, id]) => id === accountId)?.[0];
    const sealed = rowsOf(tables, 'messages').filter((m) => m['type'] === 'sealed');

    // Who really sent each row: the recipient's identity key opens it (the attacker's view ends at the row).
    const senderOf = new Map<string, Person>();
    for (const row of sealed) {
      const recipient = personOf(accountOfDevice.get(row['recipient_device_row_id']!));
      const opener = installs.find((device) => device.who === recipient);
      if (!opener) throw new Error('a sealed row for an account not in the run');
      const usmc = await sealedSenderDecryptToUsmc(new Uint8Array(byteaOf(row['ciphertext']!)), opener.stores.identity);
      const sender = personOf(usmc.senderCertificate().senderUuid());
      if (!sender) throw new Error('a sealed row from an account not in the run');
      senderOf.set(row['id']!, sender);
    }
    // Left for carol: bob's sealed 1:1 (and his delivery receipt, sealed too) and alice's sealed group upload.
    const forCarol = sealed.filter((row) => personOf(accountOfDevice.get(row['recipient_device_row_id']!)) === 'carol');
    expect(forCarol.length).toBeGreaterThanOrEqual(2);
    expect([...new Set(forCarol.map((row) => senderOf.get(row['id']!)))].sort()).toEqual(['alice', 'bob']);

    // Values that could tie a row to another row or a log line: its id, the start of its ciphertext, and every sealed send's request id.
    const sealedRequestIds = rowsOf(tables, 'sealed_send_requests').map((r) => r['request_id']!);
    expect(sealedRequestIds.length).toBeGreaterThanOrEqual(2);
    for (const row of sealed) {
      const who = senderOf.get(row['id']!)!;
      const names = new SecretScanner(identifiersOf.get(who)!);
      expect({ sender: row['sender_account_id'], username: row['sender_username'], device: row['sender_device_id'] }).toEqual({
        sender: 'NULL',
        username: 'NULL',
        device: 'NULL',
      });
      expect({ row: row['id'], naming: Object.values(row).flatMap((cell) => names.find(cell).map((f) => f.secret.label)) }).toEqual({ row: row['id'], naming: [] });

      const ties = new SecretScanner([
        textSecret('sealed row id', row['id']!),
        bytesSecret('sealed row ciphertext (first 32 bytes)', byteaOf(row['ciphertext']!).subarray(0, 32)),
        ...sealedRequestIds.map((id) => textSecret('sealed send request id', id)),
      ]);
      const tiedRows = tables.flatMap((table) =>
        table.rows
          .filter((cells) => !(table.name === 'messages' && cells.includes(row['id']!)) && table.name !== 'sealed_send_requests')
          .filter((cells) => cells.some((cell) => ties.find(cell).length > 0))
          .map((cells) => ({ table: table.name, cells })),
      );
      const tiedLines = logs.split('\n').filter((line) => ties.find(line).length > 0);
      const naming = [
        ...tiedRows.flatMap(({ table, cells }) => cells.flatMap((cell) => names.find(cell).map((f) => `${table}: ${f.secret.label}`))),
        ...tiedLines.flatMap((line) => names.find(line).map((f) => `log: ${f.secret.label}`)),
      ];
      expect({ row: row['id'], sender: who, naming }).toEqual({ row: row['id'], sender: who, naming: [] });
    }
  });

  it('the attacker\'s searches find what the relay does keep (accounts, public identity and Kyber keys, queued ciphertext, an authenticated sender, debug log lines, Redis counters, the trust root in its data directory): so each search above can fail', () => {
    // Every account, and each one's public identity key, found by the same scanner.
    for (const who of ['alice', 'bob', 'carol', 'dave', 'erin'] as const) {
      const found = new SecretScanner(identifiersOf.get(who)!).scanTables(tables).map((f) => f.secret);
      expect(found).toEqual(expect.arrayContaining([`${who}'s username`, `${who}'s identity public key`]));
    }
    // A Kyber public key the relay serves in bundles.
    const kyberKeys = rowsOf(tables, 'kyber_prekeys');
    expect(kyberKeys.length).toBeGreaterThan(0);
    const kyberPublic = byteaOf(kyberKeys[0]!['public_key']!);
    expect(new SecretScanner([bytesSecret('a Kyber public key', kyberPublic)]).scanTables(tables).length).toBeGreaterThan(0);
    // Ciphertext waiting: carol's sealed rows and erin's PreKey message, which as an authenticated send names bob.
    const queued = rowsOf(tables, 'messages');
    expect(queued.filter((m) => m['type'] === 'sealed').length).toBeGreaterThanOrEqual(2);
    const erinDevices = new Set(rowsOf(tables, 'devices').filter((d) => d['account_id'] === accountIdOf.get('erin')).map((d) => d['id']));
    const toErin = queued.filter((m) => erinDevices.has(m['recipient_device_row_id']));
    expect(toErin.length).toBeGreaterThan(0);
    expect(toErin.filter((m) => m['type'] !== 'prekey' || m['sender_username'] !== usernames.bob)).toEqual([]);
    const bobNames = new SecretScanner(identifiersOf.get('bob')!);
    expect(Object.values(toErin[0]!).flatMap((cell) => bobNames.find(cell).map((f) => f.secret.label))).toEqual(
      // A PreKey message carries its sender's identity key in the clear: had a "sealed" row been one, the check above would name bob.
      expect.arrayContaining(["bob's account id", "bob's username", "bob's identity public key"]),
    );
    // With Redis, its rate-limit counters are in the dump too: keyed by account and device ids, usernames, the client's address.
    const redisKeys = tables.find((t) => t.name === 'redis')?.rows ?? [];
    expect(redisKeys.length > 0).toBe(relay.redis);
    // The logs are the most verbose the relay writes: debug request lines, sealed sends among them.
    expect(logs).toMatch(/"level":20\b/);
    expect(logs).toMatch(/POST \/v1\/messages\/sealed 20\d/);
    expect(logs).toMatch(/POST \/v1\/messages\/multi-recipient 20\d/);
    // The data directory: the trust root (public) in the development sealed-sender key file; the embedded database's own files hold the Kyber key's bytes.
    const trustRootFound = new SecretScanner([bytesSecret('trust root', Buffer.from(trustRoot, 'base64'))]).scanFiles(files);
    expect(trustRootFound.map((f) => f.where)).toContain('file sealed-sender-keys.json');
    const kyberInFiles = new SecretScanner([bytesSecret('a Kyber public key', kyberPublic)]).scanFiles(files).map((f) => f.encoding);
    expect(kyberInFiles.includes('raw')).toBe(relay.database === 'embedded');
    // A message text, as it would be found had the relay stored it: the scanner reads bytea hex and base64 alike.
    const probe = ledger.secrets('message')[0]!;
    const probeText = probe.forms.find((f) => f.encoding === 'text')!.text;
    const planted: DumpTable = {
      name: 'planted',
      columns: ['hex', 'base64'],
      rows: [[`\\x00${Buffer.from(`ab${probeText}`).toString('hex')}`, Buffer.from(`a${probeText}`).toString('base64')]],
    };
    expect(new SecretScanner([probe]).scanTables([planted]).map((f) => f.encoding)).toEqual(expect.arrayContaining(['utf8 hex', 'utf8 base64@1']));
  });
});

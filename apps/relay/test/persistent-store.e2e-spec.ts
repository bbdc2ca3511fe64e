import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import Database from 'better-sqlite3';
import {
  ErrorCode as LibSignalErrorCode,
  ProtocolAddress,
  SignalMessage,
  signalDecrypt,
  signalEncrypt,
} from '@signalapp/libsignal-client';
import { SecureChatClient, SecureChatError, SecureChatErrorCode, type IncomingMessage, type SecureChatStores } from '@chat/signal-sdk';
import { SqliteStores, type StoreKdfParams } from '@chat/signal-sdk/sqlite';
import { MessageCollector } from '@chat/signal-sdk/testing';
import { useSdkRelay } from './support/sdk-relay.js';
import { DEFAULT_TEST_PASSWORD, uniqueUsername } from './support/test-relay.js';
import { seededRandom } from './support/wait.js';

// Persistent encrypted stores end to end: SDK clients on SQLite stores talk
// through the real relay (AppModule, real database, HTTP and WebSocket), are
// shut down and recreated from their files. The last test kills a process
// that writes to two stores, many times, and checks what it leaves.

/** 1 MiB of scrypt instead of the default 128 MiB: the same format, only cheaper to attack. */
const TEST_KDF: StoreKdfParams = { logN: 10, r: 8, p: 1 };
const PASSPHRASE = 'a long store passphrase for the e2e tests';

async function expectCode(promise: Promise<unknown>, code: SecureChatErrorCode): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(SecureChatError);
  expect((error as SecureChatError).code).toBe(code);
}

function withRawFile<T>(path: string, run: (db: Database.Database) => T): T {
  const db = new Database(path);
  try {
    return run(db);
  } finally {
    db.close();
  }
}

describe('SDK clients on persistent SQLite stores through the real relay', () => {
  const fixture = useSdkRelay('persistent-store-e2e');
  const { clients, openStores } = fixture;

  async function openStore(path: string, passphrase = PASSPHRASE): Promise<SqliteStores> {
    const stores = await SqliteStores.open({ path, passphrase, kdf: TEST_KDF });
    openStores.push(stores);
    return stores;
  }

  /**
   * A client on `stores` that acks by hand, so a test can look at each stored envelope before it goes.
   * No delivery receipts: the tests read each device's queue at the relay and expect only messages.
   */
  function clientOn(stores: SecureChatStores): { client: SecureChatClient; inbox: MessageCollector } {
    const client = SecureChatClient.create({ relayUrl: fixture.relay.baseUrl, stores, autoAck: false, deliveryReceipts: false });
    clients.push(client);
    return { client, inbox: new MessageCollector(client) };
  }

  async function install(prefix: string) {
    const path = join(fixture.dir, `${uniqueUsername(prefix)}.db`);
    const stores = await openStore(path);
    const { client, inbox } = clientOn(stores);
    const username = uniqueUsername(prefix);
    await client.register(username, DEFAULT_TEST_PASSWORD);
    await client.connect();
    return { path, stores, client, inbox, username };
  }

  /** The client and its store go away, as when the app exits. */
  async function shutDown(user: { client: SecureChatClient; stores: SqliteStores; inbox: MessageCollector }) {
    user.inbox.stop();
    await user.client.close();
    await user.stores.close();
  }

  /** A new client on the same file: no password, only the store's passphrase. */
  async function restart(user: { path: string }, passphrase = PASSPHRASE) {
    const stores = await openStore(user.path, passphrase);
    const { client, inbox } = clientOn(stores);
    await client.resume();
    await client.connect();
    return { stores, client, inbox };
  }

  const storedType = async (messageId: string) =>
    (await fixture.relay.sql<{ type: string }>('SELECT type FROM messages WHERE id = $1::uuid', messageId))[0]?.type;

  /** The next message: its text and the envelope type the relay stored and delivered, then the ack. */
  async function next(inbox: MessageCollector): Promise<{ text: string | undefined; type: string | undefined; message: IncomingMessage }> {
    const message = await inbox.next(10_000);
    const type = await storedType(message.id);
    await message.ack();
    return { text: message.text, type, message };
  }

  const relayOneTimeKeys = async (username: string) =>
    Number(
      (
        await fixture.relay.sql<{ n: bigint }>(
          `SELECT count(*) AS n FROM one_time_prekeys k JOIN devices d ON d.id = k.device_row_id
           JOIN accounts a ON a.id = d.account_id WHERE a.username = $1`,
          username,
        )
      )[0]?.n,
    );

  it('recreates a client from its file: it gets what was queued while down, and both sides go on with no new PreKey message', async () => {
    const alice = await install('alice');
    let bob = await install('bob');

    await alice.client.send(bob.username, 'hello bob');
    expect(await next(bob.inbox)).toMatchObject({ text: 'hello bob', type: 'prekey' });
    await bob.client.send(alice.username, 'hello alice');
    expect(await next(alice.inbox)).toMatchObject({ text: 'hello alice', type: 'signal' });
    const bobKeysBefore = await relayOneTimeKeys(bob.username);

    await shutDown(bob);
    for (let i = 0; i < 3; i++) await alice.client.send(bob.username, `while you were down ${i}`);
    const queued = await fixture.relay.sql<{ type: string }>(
      `SELECT m.type FROM messages m JOIN devices d ON d.id = m.recipient_device_row_id
       JOIN accounts a ON a.id = d.account_id WHERE a.username = $1 ORDER BY m.seq`,
      bob.username,
    );
    expect(queued.map((m) => m.type)).toEqual(['signal', 'signal', 'signal']);

    bob = { ...bob, ...(await restart(bob)) };
    for (let i = 0; i < 3; i++) expect(await next(bob.inbox)).toMatchObject({ text: `while you were down ${i}`, type: 'signal' });
    for (let i = 0; i < 2; i++) {
      await bob.client.send(alice.username, `back again ${i}`);
      expect(await next(alice.inbox)).toMatchObject({ text: `back again ${i}`, type: 'signal' });
      await alice.client.send(bob.username, `welcome back ${i}`);
      expect(await next(bob.inbox)).toMatchObject({ text: `welcome back ${i}`, type: 'signal' });
    }
    // No bundle was fetched (that would claim one of bob's one-time keys) and bob uploaded none.
    expect(await relayOneTimeKeys(bob.username)).toBe(bobKeysBefore);
  });

  it('emits a message decrypted but not acked before the app died again after the restart, from the store', async () => {
    const alice = await install('alice');
    let bob = await install('bob');
    await alice.client.send(bob.username, 'opening');
    await next(bob.inbox);
    await bob.client.send(alice.username, 'opened');
    await next(alice.inbox);

    await alice.client.send(bob.username, 'read, never acked');
    const unacked = await bob.inbox.next(10_000);
    expect(unacked.text).toBe('read, never acked');
    // The app dies before its ack: the ratchet has moved past the message, the relay still holds it.
    await shutDown(bob);
    expect(await storedType(unacked.id)).toBe('signal');

    bob = { ...bob, ...(await restart(bob)) };
    const again = await next(bob.inbox);
    expect(again.message.id).toBe(unacked.id);
    expect(again.text).toBe('read, never acked');
    await expect(bob.stores.metadata.getPendingMessage(unacked.id)).resolves.toBeNull();
    await alice.client.send(bob.username, 'and the session goes on');
    expect(await next(bob.inbox)).toMatchObject({ text: 'and the session goes on', type: 'signal' });
  });

  it('refuses a wrong passphrase with WrongPassphrase', async () => {
    const bob = await install('bob');
    await shutDown(bob);
    await expectCode(SqliteStores.open({ path: bob.path, passphrase: 'not the passphrase', kdf: TEST_KDF }), SecureChatErrorCode.WrongPassphrase);
  });

  it('reports a flipped ciphertext byte and two swapped records with StoreTampered', async () => {
    const bob = await install('bob');
    await shutDown(bob);
    const flipped = join(fixture.dir, 'flipped.db');
    const swapped = join(fixture.dir, 'swapped.db');
    copyFileSync(bob.path, flipped);
    copyFileSync(bob.path, swapped);

    withRawFile(flipped, (db) => {
      const row = db.prepare("SELECT seq, value FROM records WHERE kind = 'local-identity'").get() as { seq: number; value: Buffer };
      row.value[row.value.length - 20] = row.value[row.value.length - 20]! ^ 0x80;
      db.prepare('UPDATE records SET value = ? WHERE seq = ?').run(row.value, row.seq);
    });
    withRawFile(swapped, (db) => {
      const rows = db.prepare("SELECT seq, value FROM records WHERE kind = 'kyber-pre-key' ORDER BY seq LIMIT 2").all() as Array<{
        seq: number;
        value: Buffer;
      }>;
      expect(rows).toHaveLength(2);
      const update = db.prepare('UPDATE records SET value = ? WHERE seq = ?');
      update.run(rows[1]!.value, rows[0]!.seq);
      update.run(rows[0]!.value, rows[1]!.seq);
    });

    await expectCode(SqliteStores.open({ path: flipped, passphrase: PASSPHRASE }), SecureChatErrorCode.StoreTampered);
    await expectCode(SqliteStores.open({ path: swapped, passphrase: PASSPHRASE }), SecureChatErrorCode.StoreTampered);
    // The untouched original still opens.
    await (await SqliteStores.open({ path: bob.path, passphrase: PASSPHRASE })).close();
  });

  it('changes the passphrase: the old one then fails, the new one opens, and the sessions go on', async () => {
    const alice = await install('alice');
    let bob = await install('bob');
    await alice.client.send(bob.username, 'before the change');
    expect(await next(bob.inbox)).toMatchObject({ text: 'before the change', type: 'prekey' });
    await bob.client.send(alice.username, 'reply before the change');
    await next(alice.inbox);

    await bob.client.close();
    bob.inbox.stop();
    await bob.stores.changePassphrase('the new store passphrase', { kdf: TEST_KDF });
    await bob.stores.close();

    await expectCode(SqliteStores.open({ path: bob.path, passphrase: PASSPHRASE }), SecureChatErrorCode.WrongPassphrase);
    bob = { ...bob, ...(await restart(bob, 'the new store passphrase')) };
    await alice.client.send(bob.username, 'after the change');
    expect(await next(bob.inbox)).toMatchObject({ text: 'after the change', type: 'signal' });
    await bob.client.send(alice.username, 'reply after the change');
    expect(await next(alice.inbox)).toMatchObject({ text: 'reply after the change', type: 'signal' });
  });
});

// --- interrupted writes -------------------------------------------------------

const worker = fileURLToPath(new URL('./support/store-crash-worker.mjs', import.meta.url));
const KILLS = 30;
const ONE_TIME_KEYS = 300;
const KYBER_ID_OFFSET = 1000;

describe('a store written by a process killed at random points', () => {
  let dir: string;
  let config: Record<string, unknown> & { alicePath: string; bobPath: string; aliceLog: string; bobLog: string };

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'store-crash-'));
    config = {
      alicePath: join(dir, 'alice.db'),
      bobPath: join(dir, 'bob.db'),
      aliceLog: join(dir, 'to-alice.log'),
      bobLog: join(dir, 'to-bob.log'),
      passphrase: PASSPHRASE,
      kdf: TEST_KDF,
      alice: 'crash-alice',
      bob: 'crash-bob',
      oneTimeKeys: ONE_TIME_KEYS,
      kyberIdOffset: KYBER_ID_OFFSET,
    };
    const setup = spawnSync(process.execPath, [worker, 'setup', JSON.stringify(config)], { encoding: 'utf8', timeout: 60_000 });
    if (setup.status !== 0) throw new Error(`worker setup failed (is the SDK built? nx builds it before this target):\n${setup.stderr}`);
  });

  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /**
   * Runs the worker until `delayMs` after it finished its first round, then
   * SIGKILLs it; resolves with the last round it finished. Counting from the
   * first round, not from start-up, makes every run do real work however slow
   * the machine is, while the kill still lands anywhere inside a later round.
   */
  function runAndKill(delayMs: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [worker, 'run', JSON.stringify(config)], { stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      let errors = '';
      let killTimer: NodeJS.Timeout | undefined;
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
        output += chunk;
        if (!killTimer && /^round 1$/m.test(output)) killTimer = setTimeout(() => child.kill('SIGKILL'), delayMs);
      });
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => (errors += chunk));
      child.on('error', reject);
      child.on('exit', (code, signal) => {
        clearTimeout(killTimer);
        if (signal !== 'SIGKILL') return reject(new Error(`worker exited by itself (${code}): ${errors}`));
        const rounds = [...output.matchAll(/^round (\d+)$/gm)].map((m) => Number(m[1]));
        resolve(rounds.at(-1) ?? 0);
      });
    });
  }

  const lastLogged = (log: string): { id: string; ciphertext: string } | undefined => {
    if (!existsSync(log)) return undefined;
    const lines = readFileSync(log, 'utf8').split('\n').filter(Boolean);
    // A kill can cut the last line short; the one before it was written whole.
    for (const line of lines.reverse()) {
      try {
        return JSON.parse(line) as { id: string; ciphertext: string };
      } catch {
        continue;
      }
    }
    return undefined;
  };

  /**
   * Whether `stores` has already consumed the logged message: decrypting it
   * again is refused as a duplicate; a message not yet consumed decrypts (in
   * a transaction rolled back here, so the check changes nothing).
   */
  async function consumed(stores: SqliteStores, from: ProtocolAddress, self: ProtocolAddress, ciphertext: string): Promise<boolean> {
    const rollback = new Error('roll back the probe');
    try {
      await stores.transaction(async (tx) => {
        await signalDecrypt(SignalMessage.deserialize(new Uint8Array(Buffer.from(ciphertext, 'base64'))), from, self, tx.session, tx.identity);
        throw rollback;
      });
    } catch (error) {
      if (error === rollback) return false;
      // By code, not instanceof: libsignal's addon builds its errors from the classes of the
      // first test file that loaded it in this Jest worker (see the SDK's isLibSignalError).
      if ((error as { code?: unknown } | null)?.code === LibSignalErrorCode.DuplicatedMessage) return true;
      throw error;
    }
    throw new Error('unreachable: the probe always throws');
  }

  async function isGone(lookup: Promise<unknown>): Promise<boolean> {
    return lookup.then(
      () => false,
      (error: unknown) => {
        if (SecureChatError.is(error, SecureChatErrorCode.RecordNotFound)) return true;
        throw error;
      },
    );
  }

  it(`opens whole after each of ${KILLS} kills: integrity check, every record decrypts, no half-done step, and the session goes on`, async () => {
    const random = seededRandom(0x5eed);
    const alice = ProtocolAddress.new('crash-alice', 1);
    const bob = ProtocolAddress.new('crash-bob', 1);
    let rounds = 0;
    let consumedOneTimeKeys = 0;

    for (let kill = 0; kill < KILLS; kill++) {
      rounds += await runAndKill(Math.floor(random() * 80));

      for (const path of [config.alicePath, config.bobPath]) {
        expect(withRawFile(path, (db) => db.pragma('integrity_check', { simple: true }))).toBe('ok');
      }
      const a = await SqliteStores.open({ path: config.alicePath, passphrase: PASSPHRASE });
      const b = await SqliteStores.open({ path: config.bobPath, passphrase: PASSPHRASE });
      try {
        await a.verify();
        await b.verify();

        // A PreKey message's decryption is all or nothing: the one-time EC and
        // Kyber prekeys are gone exactly when the session and the pending message exist.
        consumedOneTimeKeys = 0;
        for (let k = 1; k <= ONE_TIME_KEYS; k++) {
          const preKeyGone = await isGone(a.preKey.getPreKey(k));
          const kyberGone = await isGone(a.kyberPreKey.getKyberPreKey(KYBER_ID_OFFSET + k));
          const session = await a.session.getSession(ProtocolAddress.new(`carol-${k}`, 1));
          const pending = await a.metadata.getPendingMessage(`carol-${k}`);
          expect({ k, kyberGone, session: session !== null, pending: pending !== null }).toEqual({
            k,
            kyberGone: preKeyGone,
            session: preKeyGone,
            pending: preKeyGone,
          });
          if (preKeyGone) consumedOneTimeKeys++;
        }

        // The last message logged to each side: consumed by the ratchet exactly when it is kept as pending.
        for (const [stores, log, from, self] of [
          [a, config.aliceLog, bob, alice],
          [b, config.bobLog, alice, bob],
        ] as const) {
          const last = lastLogged(log);
          if (!last) continue;
          const pending = await stores.metadata.getPendingMessage(last.id);
          expect({ id: last.id, consumed: await consumed(stores, from, self, last.ciphertext) }).toEqual({ id: last.id, consumed: pending !== null });
        }

        // The session still works both ways from what each side saved.
        const toBob = await a.transaction(async (tx) => signalEncrypt(new TextEncoder().encode(`check ${kill}`), bob, alice, tx.session, tx.identity));
        const atBob = await b.transaction(async (tx) => signalDecrypt(SignalMessage.deserialize(toBob.serialize()), alice, bob, tx.session, tx.identity));
        expect(new TextDecoder().decode(atBob)).toBe(`check ${kill}`);
        const toAlice = await b.transaction(async (tx) => signalEncrypt(new TextEncoder().encode(`reply ${kill}`), alice, bob, tx.session, tx.identity));
        const atAlice = await a.transaction(async (tx) =>
          signalDecrypt(SignalMessage.deserialize(toAlice.serialize()), bob, alice, tx.session, tx.identity),
        );
        expect(new TextDecoder().decode(atAlice)).toBe(`reply ${kill}`);
      } finally {
        await a.close();
        await b.close();
      }
    }
    // The worker really ran: rounds finished between kills, and PreKey sessions were made.
    expect(rounds).toBeGreaterThanOrEqual(KILLS);
    expect(consumedOneTimeKeys).toBeGreaterThan(KILLS / 2);
  }, 120_000);
});

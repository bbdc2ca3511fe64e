import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from '@jest/globals';
import Database from 'better-sqlite3';
import { Direction, IdentityKeyPair, PrivateKey, ProtocolAddress, PreKeyRecord } from '@signalapp/libsignal-client';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { asDeviceId, asRegistrationId } from '../ids.js';
import { describeStoreConformance } from '../testing/store-conformance.js';
import { RecordKind, type RecordTable } from './record-table.js';
import { SqliteStores } from './sqlite-stores.js';
import { DEFAULT_STORE_KDF, STORE_FORMAT_VERSION, type StoreKdfParams } from './store-crypto.js';

// Far below DEFAULT_STORE_KDF, which one test below exercises on purpose.
const TEST_KDF: StoreKdfParams = { logN: 10, r: 8, p: 1 };
const PASSPHRASE = 'correct horse battery staple';

const workDir = mkdtempSync(join(tmpdir(), 'sqlite-stores-'));
let files = 0;
const newPath = () => join(workDir, `store-${++files}.db`);
afterAll(() => rmSync(workDir, { recursive: true, force: true }));

const open = (path: string, passphrase: string | Uint8Array = PASSPHRASE, kdf: StoreKdfParams = TEST_KDF) =>
  SqliteStores.open({ path, passphrase, kdf });

async function expectCode(promise: Promise<unknown>, code: SecureChatErrorCode): Promise<SecureChatError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(SecureChatError);
  expect((error as SecureChatError).code).toBe(code);
  return error as SecureChatError;
}

/** Raw SQL on a closed store file, as someone with the disk (but not the passphrase) could run. */
function withRawFile<T>(path: string, run: (db: Database.Database) => T): T {
  const db = new Database(path);
  try {
    return run(db);
  } finally {
    db.close();
  }
}

/** Flips one ciphertext byte of the first record of `kind` in a closed store file. */
function flipCiphertextByte(path: string, kind: string): void {
  withRawFile(path, (db) => {
    const row = db.prepare('SELECT seq, value FROM records WHERE kind = ? ORDER BY seq LIMIT 1').get(kind) as { seq: number; value: Buffer };
    row.value[20] = row.value[20]! ^ 0x01;
    db.prepare('UPDATE records SET value = ? WHERE seq = ?').run(row.value, row.seq);
  });
}

/** A store with a few records of several kinds, closed. */
async function populatedStore(path = newPath()): Promise<string> {
  const stores = await open(path);
  await stores.identity.saveLocalIdentity({ identityKeyPair: IdentityKeyPair.generate(), registrationId: asRegistrationId(99) });
  for (let id = 1; id <= 3; id++) {
    const key = PrivateKey.generate();
    await stores.preKey.savePreKey(id, PreKeyRecord.new(id, key.getPublicKey(), key));
  }
  await stores.identity.saveIdentity(ProtocolAddress.new('bob', 1), PrivateKey.generate().getPublicKey());
  await stores.metadata.saveAccount({ username: 'alice', deviceId: asDeviceId(1) });
  await stores.close();
  return path;
}

describeStoreConformance(
  'SqliteStores',
  async () => {
    const path = newPath();
    let stores = await open(path);
    return {
      stores,
      reopen: async () => {
        await stores.close();
        stores = await open(path);
        return stores;
      },
      close: () => stores.close(),
    };
  },
  { persistent: true },
);

describe('SqliteStores', () => {
  it('reads a peer identity written before trust states (a bare public key) as seen and trusted, not verified', async () => {
    const stores = await open(newPath());
    const key = PrivateKey.generate().getPublicKey();
    // The record as a format-1 store of the previous SDK version wrote it.
    (stores as unknown as { records: RecordTable }).records.put(RecordKind.Identity, 'bob', key.serialize());
    const record = await stores.identity.getPeerIdentity('bob');
    expect(record?.identityKey.equals(key)).toBe(true);
    expect(record?.trustedKey.equals(key)).toBe(true);
    expect(record?.verifiedKey).toBeNull();
    await expect(stores.identity.isTrustedIdentity(ProtocolAddress.new('bob', 1), key, Direction.Sending)).resolves.toBe(true);
    (stores as unknown as { records: RecordTable }).records.put(RecordKind.Identity, 'carol', Buffer.from([2, 33, 5]));
    await expectCode(stores.identity.getPeerIdentity('carol'), SecureChatErrorCode.StoreTampered);
    await stores.close();
  });

  it('refuses a wrong passphrase with WrongPassphrase, and the right one still opens', async () => {
    const path = await populatedStore();
    await expectCode(open(path, 'correct horse battery stapler'), SecureChatErrorCode.WrongPassphrase);
    const stores = await open(path);
    await expect(stores.metadata.getAccount()).resolves.toEqual({ username: 'alice', deviceId: 1 });
    await stores.close();
  });

  it('opens with the same passphrase typed in another Unicode normal form (NFC)', async () => {
    const path = newPath();
    const composed = 'pass\u00e9 phrase';
    const decomposed = 'passe\u0301 phrase';
    await (await open(path, composed)).close();
    const stores = await open(path, decomposed);
    await stores.close();
  });

  it('reports a flipped byte in a record ciphertext with StoreTampered when opening', async () => {
    const path = await populatedStore();
    flipCiphertextByte(path, 'pre-key');
    await expectCode(open(path), SecureChatErrorCode.StoreTampered);
  });

  it('reports two records whose values were swapped with StoreTampered (each value is bound to its row key)', async () => {
    const path = await populatedStore();
    withRawFile(path, (db) => {
      const [a, b] = db.prepare("SELECT seq, value FROM records WHERE kind = 'pre-key' ORDER BY seq LIMIT 2").all() as Array<{
        seq: number;
        value: Buffer;
      }>;
      const update = db.prepare('UPDATE records SET value = ? WHERE seq = ?');
      update.run(b!.value, a!.seq);
      update.run(a!.value, b!.seq);
    });
    await expectCode(open(path), SecureChatErrorCode.StoreTampered);
  });

  it('reports a record moved to another kind with StoreTampered (the kind is in the AAD)', async () => {
    const path = await populatedStore();
    withRawFile(path, (db) => db.prepare("UPDATE records SET kind = 'signed-pre-key' WHERE seq = (SELECT min(seq) FROM records WHERE kind = 'pre-key')").run());
    await expectCode(open(path), SecureChatErrorCode.StoreTampered);
  });

  it('refuses a header whose scrypt cost was lowered: the cost is authenticated with the wrapped data key', async () => {
    const path = await populatedStore();
    withRawFile(path, (db) => db.prepare('UPDATE store_header SET kdf_r = 1').run());
    await expectCode(open(path), SecureChatErrorCode.WrongPassphrase);
  });

  it('reports a file that is not a SQLite database with StoreTampered', async () => {
    const path = newPath();
    writeFileSync(path, Buffer.alloc(8192, 0x5a));
    await expectCode(open(path), SecureChatErrorCode.StoreTampered);
  });

  it('reports a file that cannot be created with StoreFailure', async () => {
    await expectCode(open(join(workDir, 'no-such-directory', 'store.db')), SecureChatErrorCode.StoreFailure);
  });

  it('lets one connection hold a store: a second open fails with StoreLocked until the first closes', async () => {
    const path = newPath();
    const first = await open(path);
    await expectCode(open(path), SecureChatErrorCode.StoreLocked);
    await first.close();
    await (await open(path)).close();
  });

  it('fails every call after close with InvalidState', async () => {
    const stores = await open(newPath());
    await stores.close();
    await stores.close();
    await expectCode(stores.metadata.getAccount(), SecureChatErrorCode.InvalidState);
    await expectCode(stores.verify(), SecureChatErrorCode.InvalidState);
  });

  it('writes no name, token, message or private key in the clear', async () => {
    const path = newPath();
    const stores = await open(path);
    const identity = IdentityKeyPair.generate();
    await stores.identity.saveLocalIdentity({ identityKeyPair: identity, registrationId: asRegistrationId(7) });
    await stores.identity.saveIdentity(ProtocolAddress.new('zebra-quartz-peer', 1), PrivateKey.generate().getPublicKey());
    await stores.metadata.saveAccount({ username: 'ocelot-glacier-self', deviceId: asDeviceId(1) });
    await stores.metadata.savePeerDevices('zebra-quartz-peer', [asDeviceId(1)]);
    await stores.metadata.saveRefreshToken('REFRESH-TOKEN-PLATYPUS-0042');
    await stores.metadata.savePendingMessage('4f1c7a34-envelope', {
      sender: 'zebra-quartz-peer',
      senderDevice: asDeviceId(1),
      content: new TextEncoder().encode('NEBULA meet at the old mill'),
    });
    // Read the file while open (the WAL holds the recent writes) and after close.
    const fileBytes = () => Buffer.concat([readFileSync(path), existsSync(`${path}-wal`) ? readFileSync(`${path}-wal`) : Buffer.alloc(0)]);
    const whileOpen = fileBytes();
    await stores.close();
    for (const bytes of [whileOpen, fileBytes()]) {
      for (const secret of ['zebra-quartz-peer', 'ocelot-glacier-self', 'REFRESH-TOKEN-PLATYPUS-0042', 'NEBULA meet', '4f1c7a34-envelope']) {
        expect(bytes.includes(Buffer.from(secret, 'utf8'))).toBe(false);
        expect(bytes.includes(Buffer.from(secret, 'utf8').toString('base64').slice(0, 16))).toBe(false);
      }
      expect(bytes.includes(Buffer.from(identity.privateKey.serialize()))).toBe(false);
    }
  });

  describe('appRecords', () => {
    const text = (value: string) => new TextEncoder().encode(value);
    const decoded = (records: Array<{ key: string; value: Uint8Array }>) =>
      records.map(({ key, value }) => [key, new TextDecoder().decode(value)]);

    it('keeps an app collection across reopening, in first-written order, apart from other collections', async () => {
      const path = newPath();
      const stores = await open(path);
      const history = stores.appRecords('history');
      await history.put('m1', text('first'));
      await history.put('m2', text('second'));
      await history.put('m1', text('first, edited'));
      await stores.appRecords('settings').put('m1', text('not history'));
      await history.put('m3', text('third'));
      await history.delete('m2');
      await stores.close();

      const reopened = await open(path);
      expect(decoded(await reopened.appRecords('history').list())).toEqual([
        ['m1', 'first, edited'],
        ['m3', 'third'],
      ]);
      expect(new TextDecoder().decode((await reopened.appRecords('settings').get('m1'))!)).toBe('not history');
      expect(await reopened.appRecords('history').get('m2')).toBeNull();
      await reopened.close();
    });

    it('keeps only the newest records when asked', async () => {
      const stores = await open(newPath());
      const log = stores.appRecords('log');
      for (const n of [1, 2, 3, 4, 5]) await log.put(`k${n}`, text(`v${n}`));
      await log.keepNewest(2);
      expect(decoded(await log.list())).toEqual([
        ['k4', 'v4'],
        ['k5', 'v5'],
      ]);
      await expectCode(log.keepNewest(0), SecureChatErrorCode.InvalidArgument);
      await stores.close();
    });

    it('writes neither keys nor values in the clear, and reports a tampered record with StoreTampered', async () => {
      const path = newPath();
      const stores = await open(path);
      await stores.appRecords('history').put('conversation-with-wombat-walrus', text('PELICAN the parcel is under the bridge'));
      await stores.close();
      const file = readFileSync(path);
      expect(file.includes(Buffer.from('wombat-walrus'))).toBe(false);
      expect(file.includes(Buffer.from('PELICAN'))).toBe(false);

      flipCiphertextByte(path, 'app:history');
      await expectCode(open(path), SecureChatErrorCode.StoreTampered);
    });

    it('refuses collection names outside a-z, 0-9 and -, so that no app kind can be one of the SDK\'s', async () => {
      const stores = await open(newPath());
      for (const name of ['', 'History', 'a/b', 'x'.repeat(64)]) {
        expect(() => stores.appRecords(name)).toThrow(SecureChatError);
      }
      await stores.close();
      await expectCode(stores.appRecords('history').list(), SecureChatErrorCode.InvalidState);
    });
  });

  it('changes the passphrase by encrypting every record again under a new data key', async () => {
    const path = await populatedStore();
    const rows = () =>
      withRawFile(path, (db) => ({
        records: db.prepare('SELECT kind, lookup, value FROM records ORDER BY seq').all() as Array<{ kind: string; lookup: Buffer; value: Buffer }>,
        header: db.prepare('SELECT salt, wrapped_key FROM store_header').get() as { salt: Buffer; wrapped_key: Buffer },
      }));
    const before = rows();

    const stores = await open(path);
    await stores.changePassphrase('a new passphrase', { kdf: TEST_KDF });
    await stores.close();

    const after = rows();
    expect(after.records.map((r) => r.kind)).toEqual(before.records.map((r) => r.kind));
    after.records.forEach((row, i) => {
      expect(row.lookup.equals(before.records[i]!.lookup)).toBe(false);
      expect(row.value.equals(before.records[i]!.value)).toBe(false);
    });
    expect(after.header.salt.equals(before.header.salt)).toBe(false);

    await expectCode(open(path), SecureChatErrorCode.WrongPassphrase);
    const reopened = await open(path, 'a new passphrase');
    await expect(reopened.metadata.getAccount()).resolves.toEqual({ username: 'alice', deviceId: 1 });
    expect((await reopened.preKey.getPreKey(2)).id()).toBe(2);
    await reopened.close();
  });

  it('refuses scrypt costs outside STORE_KDF_LIMITS and an empty passphrase', async () => {
    await expectCode(open(newPath(), PASSPHRASE, { logN: 8, r: 8, p: 1 }), SecureChatErrorCode.InvalidOptions);
    await expectCode(open(newPath(), PASSPHRASE, { logN: 22, r: 32, p: 1 }), SecureChatErrorCode.InvalidOptions);
    await expectCode(open(newPath(), ''), SecureChatErrorCode.InvalidArgument);
  });

  it('uses the documented default cost, scrypt N = 2^17, r = 8, p = 1, and writes it in the header', async () => {
    expect(DEFAULT_STORE_KDF).toEqual({ logN: 17, r: 8, p: 1 });
    const path = newPath();
    await (await SqliteStores.open({ path, passphrase: PASSPHRASE })).close();
    const header = withRawFile(path, (db) => db.prepare('SELECT * FROM store_header').get()) as Record<string, unknown>;
    expect(header).toMatchObject({ format: STORE_FORMAT_VERSION, kdf_algorithm: 'scrypt', kdf_log_n: 17, kdf_r: 8, kdf_p: 1 });
    expect((header.salt as Buffer).length).toBeGreaterThanOrEqual(16);
  }, 20_000);
});

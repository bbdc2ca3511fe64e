import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { ProtocolAddress, type SenderCertificate } from '@signalapp/libsignal-client';
import { EnvelopeType, ErrorCode, UNIDENTIFIED_ACCESS_KEY_HEADER, type SealedSendRequest } from '@chat/protocol';
import { combinedAccessKey, SealedAccount } from './support/sealed-sender-clients.js';
import { httpJson, startTestRelay, type TestRelay } from './support/test-relay.js';

/**
 * Multi-recipient sealed sends (one upload, one sealed envelope per
 * recipient device), and what the relay keeps of a sealed send: its tables
 * and its logs (at debug level) are scanned for the sender.
 */
describe('multi-recipient sealed sends and what the relay learns (e2e)', () => {
  let relay: TestRelay;
  let log = '';
  const writes: Array<[NodeJS.WriteStream, NodeJS.WriteStream['write']]> = [];

  let alice: SealedAccount;
  let bob: SealedAccount;
  let carol: SealedAccount;
  let certificate: SenderCertificate;
  const registrationIds = new Map<SealedAccount, Map<number, number>>();
  const accounts = () => [alice, bob, carol];

  beforeAll(async () => {
    // Everything the relay's logger prints, at its most talkative level.
    for (const stream of [process.stdout, process.stderr]) {
      const write = stream.write.bind(stream) as NodeJS.WriteStream['write'];
      writes.push([stream, stream.write]);
      stream.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
        log += typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString();
        return (write as (chunk: string | Uint8Array, ...rest: unknown[]) => boolean)(chunk, ...rest);
      }) as NodeJS.WriteStream['write'];
    }
    relay = await startTestRelay({ LOG_LEVEL: 'debug' });
    alice = await SealedAccount.create(relay, 'alice');
    bob = await SealedAccount.create(relay, 'bob', 2);
    carol = await SealedAccount.create(relay, 'carol');
    await bob.setAccess(relay);
    await carol.setAccess(relay);
    certificate = await alice.primary.certificate(relay);
    for (const peer of [bob, carol]) registrationIds.set(peer, await alice.primary.openSessions(relay, peer));
  });

  afterAll(async () => {
    await relay?.close();
    for (const [stream, write] of writes) stream.write = write;
  });

  const everyDevice = (...peers: SealedAccount[]) => peers.flatMap((account) => account.devices.map((device) => ({ account, deviceId: device.deviceId })));
  const multiSend = (payload: string, options: { accessKey?: string; token?: string; id?: string } = {}) =>
    httpJson(relay, 'POST', '/v1/messages/multi-recipient', {
      token: options.token,
      headers: options.accessKey === undefined ? {} : { [UNIDENTIFIED_ACCESS_KEY_HEADER]: options.accessKey },
      body: { payload, ...(options.id !== undefined && { id: options.id }) },
    });
  const keyOf = (...peers: SealedAccount[]) => combinedAccessKey(peers.map((peer) => peer.accessKey as Buffer));
  const queued = async () => Number((await relay.sql<{ n: bigint }>('SELECT count(*) AS n FROM messages'))[0]?.n);

  /** Every row of every table of the relay's schema, each as one line of text (bytes as hex). */
  const dumpTables = async (): Promise<Set<string>> => {
    const tables = await relay.sql<{ table_name: string }>(
      "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
    );
    expect(tables.map((table) => table.table_name)).toEqual(expect.arrayContaining(['messages', 'sealed_send_requests', 'accounts']));
    const lines = new Set<string>();
    for (const { table_name: table } of tables) {
      for (const row of await relay.sql<Record<string, unknown>>(`SELECT * FROM "${table}"`)) {
        const cells = Object.entries(row).map(([column, value]) =>
          `${column}=${value instanceof Uint8Array ? Buffer.from(value).toString('hex') : value instanceof Date ? value.toISOString() : String(value)}`,
        );
        lines.add(`${table}: ${cells.join(' ')}`);
      }
    }
    return lines;
  };

  it('splits one upload into one sealed envelope per recipient device; each decrypts with libsignal under a certificate from the trust root', async () => {
    const { payload, distribution } = await alice.primary.sealForMany(everyDevice(bob, carol), 'to the group', certificate);
    const before = await queued();
    const sent = await multiSend(payload, { accessKey: keyOf(bob, carol) });
    expect(sent.status).toBe(201);
    expect(await queued()).toBe(before + 3);

    for (const device of [...bob.devices, ...carol.devices]) {
      const [envelope, ...rest] = await device.inbox(relay);
      expect(rest).toEqual([]);
      expect(Object.keys(envelope!).sort()).toEqual(['ciphertext', 'id', 'serverTimestamp', 'type']);
      expect(envelope).toMatchObject({ type: EnvelopeType.Sealed, serverTimestamp: sent.body.serverTimestamp });
      const opened = await device.openSealed(envelope!, relay.trustRoot, () => alice, distribution);
      expect(opened.plaintext).toBe('to the group');
      expect([opened.certificate.senderUuid(), opened.certificate.senderDeviceId()]).toEqual([alice.accountId, 1]);
      await device.ackAll(relay);
    }
  });

  it.each([
    ['without an access key', () => undefined],
    ['with one recipient\'s key only', () => bob.accessKey!.toString('base64')],
    ['with a wrong key', () => randomBytes(16).toString('base64')],
    ['with a key of the wrong length', () => randomBytes(17).toString('base64')],
  ])('refuses a send %s with SEALED_SENDER_REFUSED and stores nothing', async (_what, key) => {
    const { payload } = await alice.primary.sealForMany(everyDevice(bob, carol), 'refused', certificate);
    const before = await queued();
    const { status, body } = await multiSend(payload, { accessKey: key(), id: randomUUID() });
    expect([status, body.code]).toEqual([401, ErrorCode.SealedSenderRefused]);
    expect(await queued()).toBe(before);
  });

  it('refuses a recipient that does not exist as it refuses a wrong key, whatever key is presented', async () => {
    const ghost = await SealedAccount.create(relay, 'ghost');
    await ghost.setAccess(relay);
    registrationIds.set(ghost, await alice.primary.openSessions(relay, ghost));
    const { payload } = await alice.primary.sealForMany(everyDevice(bob, ghost), 'to a ghost', certificate);
    await relay.sql('DELETE FROM accounts WHERE id = $1::uuid', ghost.accountId);
    const { status, body } = await multiSend(payload, { accessKey: keyOf(bob, ghost) });
    expect([status, body.code]).toEqual([401, ErrorCode.SealedSenderRefused]);
    // Authenticated, the caller is known and may learn it.
    const authenticated = await multiSend(payload, { token: alice.primary.token });
    expect([authenticated.status, authenticated.body.code]).toEqual([404, ErrorCode.UnknownRecipient]);
  });

  it('checks every recipient\'s devices: 409 and 410 bodies name the usernames', async () => {
    const key = keyOf(bob, carol);
    const onlyBob1 = await alice.primary.sealForMany([{ account: bob, deviceId: 1 }, ...everyDevice(carol)], 'missing', certificate);
    const missing = await multiSend(onlyBob1.payload, { accessKey: key });
    expect([missing.status, missing.body.code]).toEqual([409, ErrorCode.MismatchedDevices]);
    expect(missing.body.mismatched).toEqual([{ username: bob.username, missing: [2], extra: [] }]);

    // A device bob does not have: alice holds a session with "bob.3" copied from bob.2's, so libsignal addresses it.
    const session = await alice.primary.stores.sessions.getSession(ProtocolAddress.new(bob.accountId, 2));
    await alice.primary.stores.sessions.saveSession(ProtocolAddress.new(bob.accountId, 3), session!);
    await alice.primary.stores.identities.saveIdentity(
      ProtocolAddress.new(bob.accountId, 3),
      (await alice.primary.stores.identities.getIdentity(ProtocolAddress.new(bob.accountId, 2)))!,
    );
    const extra = await alice.primary.sealForMany([...everyDevice(bob), { account: bob, deviceId: 3 }, ...everyDevice(carol)], 'extra', certificate);
    const extraAnswer = await multiSend(extra.payload, { accessKey: key });
    expect([extraAnswer.status, extraAnswer.body.mismatched]).toEqual([409, [{ username: bob.username, missing: [], extra: [3] }]]);

    // Stale: carol's device 1 has another registration id than alice's session says.
    await relay.sql('UPDATE devices SET registration_id = registration_id % 16382 + 1 WHERE account_id = $1::uuid', carol.accountId);
    try {
      const stale = await alice.primary.sealForMany(everyDevice(bob, carol), 'stale', certificate);
      const staleAnswer = await multiSend(stale.payload, { accessKey: key });
      expect([staleAnswer.status, staleAnswer.body.code, staleAnswer.body.stale]).toEqual([410, ErrorCode.StaleDevices, [{ username: carol.username, devices: [1] }]]);
    } finally {
      await relay.sql('UPDATE devices SET registration_id = $2 WHERE account_id = $1::uuid', carol.accountId, registrationIds.get(carol)!.get(1));
    }
    expect(await queued()).toBe(0);
  });

  it('refuses a payload libsignal cannot parse, and an access key beside a token', async () => {
    const garbage = await multiSend(randomBytes(200).toString('base64'), { accessKey: keyOf(bob) });
    expect([garbage.status, garbage.body.code]).toEqual([400, ErrorCode.ValidationFailed]);
    const { payload } = await alice.primary.sealForMany(everyDevice(bob), 'both', certificate);
    const both = await multiSend(payload, { accessKey: keyOf(bob), token: alice.primary.token });
    expect([both.status, both.body.code]).toEqual([400, ErrorCode.ValidationFailed]);
    const badToken = await multiSend(payload, { token: 'nonsense' });
    expect([badToken.status, badToken.body.code]).toEqual([401, ErrorCode.InvalidToken]);
    expect(await queued()).toBe(0);
  });

  it('falls back to an authenticated send without any key; the sending device need not address itself', async () => {
    const dana = await SealedAccount.create(relay, 'dana', 2); // no access key at all
    const sender = dana.primary;
    const danaCertificate = await sender.certificate(relay);
    await sender.openSessions(relay, bob);
    await sender.openSessions(relay, dana, { exceptOwnDevice: true });
    const { payload, distribution } = await sender.sealForMany([...everyDevice(bob), { account: dana, deviceId: 2 }], 'fallback', danaCertificate);
    expect((await multiSend(payload, {})).body.code).toBe(ErrorCode.SealedSenderRefused);
    const sent = await multiSend(payload, { token: sender.token });
    expect(sent.status).toBe(201);
    for (const device of [...bob.devices, dana.devices[1]!]) {
      const [envelope] = await device.inbox(relay);
      expect(envelope?.source).toBeUndefined();
      expect((await device.openSealed(envelope!, relay.trustRoot, () => dana, distribution)).plaintext).toBe('fallback');
      await device.ackAll(relay);
    }
    expect(await dana.primary.inbox(relay)).toEqual([]);
  });

  it('makes a repeated id a no-op answered with the first send\'s timestamp', async () => {
    const id = randomUUID();
    const { payload } = await alice.primary.sealForMany(everyDevice(bob, carol), 'once', certificate);
    const first = await multiSend(payload, { accessKey: keyOf(bob, carol), id });
    const again = await multiSend(payload, { accessKey: keyOf(bob, carol), id });
    expect(first.status).toBe(201);
    expect([again.status, again.body]).toEqual([201, first.body]);
    expect(await queued()).toBe(3);
    for (const device of [...bob.devices, ...carol.devices]) await device.ackAll(relay);
  });

  it('keeps nothing of a sealed sender in any table or log line, while the recipients are there', async () => {
    const ids = new Map(
      await Promise.all(
        accounts().map(async (account) => [
          account,
          (await relay.sql<{ id: string }>('SELECT id::text FROM devices WHERE account_id = $1::uuid', account.accountId)).map((row) => row.id),
        ] as const),
      ),
    );
    const before = await dumpTables();
    const logFrom = log.length;

    // 1:1 sealed sends to both of bob's devices, a multi-recipient send to bob and carol, with ids.
    const toBob: SealedSendRequest = {
      id: randomUUID(),
      to: bob.username,
      messages: await Promise.all(
        bob.devices.map(async (device) => ({
          deviceId: device.deviceId,
          registrationId: registrationIds.get(bob)!.get(device.deviceId)!,
          ciphertext: await alice.primary.sealFor(bob, device.deviceId, 'secret 1:1', certificate),
        })),
      ),
    };
    const single = await httpJson(relay, 'POST', '/v1/messages/sealed', {
      headers: { [UNIDENTIFIED_ACCESS_KEY_HEADER]: keyOf(bob) },
      body: toBob,
    });
    expect(single.status).toBe(201);
    const { payload } = await alice.primary.sealForMany(everyDevice(bob, carol), 'secret group', certificate);
    expect((await multiSend(payload, { accessKey: keyOf(bob, carol), id: randomUUID() })).status).toBe(201);
    // A refused one too: refusals are logged (as a status) and store nothing.
    expect((await multiSend(payload, { accessKey: randomBytes(16).toString('base64') })).status).toBe(401);
    // The recipient learns the sender from the certificate and looks it up.
    const lookup = await httpJson(relay, 'GET', `/v1/accounts/${alice.accountId}`, { token: bob.primary.token });
    expect(lookup.body.username).toBe(alice.username);

    const added = [...(await dumpTables())].filter((line) => !before.has(line));
    const newMessages = added.filter((line) => line.startsWith('messages:'));
    expect(newMessages).toHaveLength(5);
    expect(added.filter((line) => line.startsWith('sealed_send_requests:'))).toHaveLength(2);
    for (const line of newMessages) {
      for (const cell of ['sender_account_id=null', 'sender_username=null', 'sender_device_id=null', 'type=sealed']) expect(line).toContain(` ${cell} `.trimEnd());
    }

    const hex = (text: string) => Buffer.from(text).toString('hex');
    const senderNeedles = [
      alice.accountId,
      alice.accountId.replaceAll('-', ''),
      alice.username,
      hex(alice.username),
      ...ids.get(alice)!,
      Buffer.from(alice.primary.keys.identity.publicKey.serialize()).toString('hex'),
    ];
    for (const needle of senderNeedles) {
      expect(added.filter((line) => line.toLowerCase().includes(needle.toLowerCase()))).toEqual([]);
    }
    // The recipients are there, as they must be: every recipient device's row id.
    for (const recipientRow of [...ids.get(bob)!, ...ids.get(carol)!]) {
      expect(newMessages.some((line) => line.includes(`recipient_device_row_id=${recipientRow}`))).toBe(true);
    }

    const sealedLog = log.slice(logFrom);
    // The capture works: the relay logged each request, at debug level.
    expect(sealedLog).toContain('POST /v1/messages/sealed 201');
    expect(sealedLog).toContain('POST /v1/messages/multi-recipient 401');
    expect(sealedLog).toContain('GET /v1/accounts/:accountId 200');
    for (const needle of [...senderNeedles, bob.accessKey!.toString('base64'), '127.0.0.1']) {
      expect(log.toLowerCase()).not.toContain(needle.toLowerCase());
    }
    for (const device of [...bob.devices, ...carol.devices]) await device.ackAll(relay);
  });
});

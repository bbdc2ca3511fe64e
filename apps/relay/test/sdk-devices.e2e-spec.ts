import { describe, expect, it } from '@jest/globals';
import { ProtocolAddress } from '@signalapp/libsignal-client';
import type { ProvisioningSlotResponse } from '@chat/protocol';
import { ErrorCode } from '@chat/protocol';
import {
  ChatEvent,
  ConnectionState,
  HttpRelayTransport,
  SecureChatClient,
  SecureChatError,
  SecureChatErrorCode,
  type SecureChatStores,
} from '@chat/signal-sdk';
import { MessageCollector, createMemoryStores } from '@chat/signal-sdk/testing';
import { startRewritingProxy, type ProxiedAnswer } from './support/rewriting-proxy.js';
import { useSdkRelay } from './support/sdk-relay.js';
import { DEFAULT_TEST_PASSWORD, uniqueUsername } from './support/test-relay.js';
import { failure, until } from './support/wait.js';

// The SDK's device linking and device management on the real relay, real
// database and real sockets: a new install linked through the URI chats as
// the account's new device; a link nobody approved never completes and cannot
// be used; the relay's database never holds the account's identity private
// key; an unlinked install stops with DeviceUnlinked, and a peer's next send
// drops its session (410) and reaches the account's remaining devices.

const fixture = useSdkRelay('sdk-devices');

/** The HTTP transport, recording the slots it opens and counting its polls. */
class WatchedTransport extends HttpRelayTransport {
  readonly slots: ProvisioningSlotResponse[] = [];
  polls = 0;

  override async createProvisioningSlot(): Promise<ProvisioningSlotResponse> {
    const slot = await super.createProvisioningSlot();
    this.slots.push(slot);
    return slot;
  }

  override receiveProvisioningMessage(slotId: string, secret: string) {
    this.polls++;
    return super.receiveProvisioningMessage(slotId, secret);
  }
}

function install(options: { relayUrl?: string; transport?: HttpRelayTransport; stores?: SecureChatStores } = {}) {
  const stores = options.stores ?? createMemoryStores();
  const client = SecureChatClient.create({
    relayUrl: options.relayUrl ?? fixture.relay.baseUrl,
    transport: options.transport,
    stores,
    deliveryReceipts: false,
    backOff: { initialDelayMs: 20, maxDelayMs: 100 },
  });
  fixture.clients.push(client);
  const errors: SecureChatError[] = [];
  client.on(ChatEvent.Error, (error) => void errors.push(error));
  return { client, stores, errors, inbox: new MessageCollector(client) };
}

type Install = ReturnType<typeof install>;

async function registered(prefix: string, relayUrl?: string): Promise<Install & { username: string }> {
  const party = install({ relayUrl });
  const username = uniqueUsername(prefix);
  await party.client.register(username, DEFAULT_TEST_PASSWORD);
  return { ...party, username };
}

async function linked(approver: Install, options: { relayUrl?: string; stores?: SecureChatStores } = {}): Promise<Install> {
  const party = install(options);
  const { uri, completion } = await party.client.beginLinking({ pollIntervalMs: 50 });
  await approver.client.approveLink(uri);
  await completion;
  return party;
}

/** Every row of every table of the relay's database, as Postgres prints it (bytea as \x hex). */
async function databaseText(): Promise<string> {
  const tables = await fixture.relay.sql<{ table_name: string }>(
    `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'`,
  );
  expect(tables.map((t) => t.table_name)).toEqual(expect.arrayContaining(['devices', 'provisioning_slots', 'accounts']));
  const rows: string[] = [];
  for (const { table_name } of tables) {
    const found = await fixture.relay.sql<{ row: string }>(`SELECT t::text AS row FROM "${table_name}" t`);
    rows.push(...found.map((r) => r.row));
  }
  return rows.join('\n');
}

/** The forms a key's bytes could take in a row: hex (bytea), base64, base64url. */
function encodings(bytes: Uint8Array): string[] {
  const buffer = Buffer.from(bytes);
  return [buffer.toString('hex'), buffer.toString('base64'), buffer.toString('base64url').replace(/=+$/, '')];
}

describe('SDK device linking on the real relay', () => {
  it('a second install linked through the URI is the account device 2 with its keys, and chats both ways', async () => {
    const alice = await registered('alice');
    const bob = await registered('bob');
    const alice2 = await linked(alice);

    expect([alice2.client.username, alice2.client.deviceId]).toEqual([alice.username, 2]);
    const aliceIdentity = (await alice.stores.identity.getLocalIdentity())!;
    const linkedIdentity = (await alice2.stores.identity.getLocalIdentity())!;
    expect(linkedIdentity.identityKeyPair.serialize()).toEqual(aliceIdentity.identityKeyPair.serialize());
    const devices = await alice.client.listDevices();
    expect(devices.map((d) => [d.deviceId, d.hasKeys, d.current])).toEqual([
      [1, true, true],
      [2, true, false],
    ]);
    expect((await alice2.client.listDevices()).find((d) => d.current)?.deviceId).toBe(2);
    const [row] = await fixture.relay.sql<{ registration_id: number }>(
      `SELECT d.registration_id FROM devices d JOIN accounts a ON a.id = d.account_id WHERE a.username = $1 AND d.device_id = 2`,
      alice.username,
    );
    expect(row?.registration_id).toBe(linkedIdentity.registrationId);

    await Promise.all([alice.client.connect(), alice2.client.connect(), bob.client.connect()]);
    await bob.client.send(alice.username, 'to both of your devices');
    const [on1, on2] = await Promise.all([alice.inbox.next(), alice2.inbox.next()]);
    expect([on1.text, on1.sender, on1.outgoing]).toEqual(['to both of your devices', bob.username, false]);
    expect([on2.text, on2.sender, on2.outgoing]).toEqual(['to both of your devices', bob.username, false]);

    await alice2.client.send(bob.username, 'from my new device');
    const atBob = await bob.inbox.next();
    expect([atBob.text, atBob.sender, atBob.senderDevice]).toEqual(['from my new device', alice.username, 2]);
    // The primary sees it as a sync copy of its own account's message.
    const sync = await alice.inbox.next();
    expect([sync.text, sync.outgoing, sync.conversation]).toEqual(['from my new device', true, bob.username]);
  }, 60_000);

  it('the linked install signs in again as device 2: resume with its stored session, login with the password', async () => {
    const alice = await registered('alice');
    const bob = await registered('bob');
    const alice2 = await linked(alice);
    await alice2.client.close();

    const resumed = install({ stores: alice2.stores });
    await resumed.client.resume();
    expect(resumed.client.deviceId).toBe(2);
    await resumed.client.close();

    const loggedIn = install({ stores: alice2.stores });
    await loggedIn.client.login(alice.username, DEFAULT_TEST_PASSWORD);
    expect(loggedIn.client.deviceId).toBe(2);
    await loggedIn.client.connect();
    await bob.client.send(alice.username, 'still reaches device 2');
    expect((await loggedIn.inbox.next()).text).toBe('still reaches device 2');
  }, 60_000);

  it('a link nobody approved never completes, and linking with its slot is refused (PROVISIONING_NOT_FOUND)', async () => {
    const transport = new WatchedTransport(fixture.relay.baseUrl);
    const newcomer = install({ transport });
    const controller = new AbortController();
    const { completion } = await newcomer.client.beginLinking({ pollIntervalMs: 20, signal: controller.signal });
    let settled = false;
    void completion.then(
      () => (settled = true),
      () => (settled = true),
    );
    await until(() => transport.polls >= 10, 'ten polls of the unapproved slot');
    expect(settled).toBe(false);

    const [slot] = transport.slots;
    const refused = await failure(transport.linkDevice({ provisioningId: slot!.id, secret: slot!.secret }));
    expect(refused.relayCode).toBe(ErrorCode.ProvisioningNotFound);
    expect(refused.status).toBe(404);

    controller.abort(new Error('the user gave up'));
    await expect(completion).rejects.toThrow('the user gave up');
    expect(await newcomer.stores.identity.getLocalIdentity()).toBeNull();
    expect(await newcomer.stores.metadata.getAccount()).toBeNull();
  }, 30_000);

  it('the relay database never holds the identity private key: neither while the sealed message waits nor after the link', async () => {
    const alice = await registered('alice');
    const privateKey = (await alice.stores.identity.getLocalIdentity())!.identityKeyPair.privateKey.serialize();
    const publicKey = (await alice.stores.identity.getLocalIdentity())!.identityKeyPair.publicKey.serialize();

    // Approved, not yet received: the sealed message is in the slot.
    const transport = new WatchedTransport(fixture.relay.baseUrl);
    const waiting = install({ transport });
    const { uri, completion } = await waiting.client.beginLinking({ pollIntervalMs: 60_000 });
    await alice.client.approveLink(uri);
    const [slotRow] = await fixture.relay.sql<{ n: number }>(`SELECT count(*)::int AS n FROM provisioning_slots WHERE message IS NOT NULL`);
    expect(slotRow?.n).toBeGreaterThanOrEqual(1);
    let text = await databaseText();
    // The scan can find keys: the public identity key is stored (as the device's identity key).
    expect(encodings(publicKey).some((form) => text.includes(form))).toBe(true);
    for (const form of encodings(privateKey)) expect(text).not.toContain(form);
    await waiting.client.close();
    await completion.catch(() => undefined);

    // Linked: keys uploaded by the new device, slot gone.
    await linked(alice);
    text = await databaseText();
    for (const form of encodings(privateKey)) expect(text).not.toContain(form);
  }, 60_000);
});

describe('SDK device unlinking on the real relay', () => {
  it('the unlinked install gets DeviceUnlinked and stops; its tokens are refused', async () => {
    const alice = await registered('alice');
    const alice2 = await linked(alice);
    await alice2.client.connect();

    await alice.client.unlinkDevice(2);
    await until(() => alice2.errors.some((e) => e.is(SecureChatErrorCode.DeviceUnlinked)), 'DeviceUnlinked on the unlinked install');
    expect(alice2.errors.filter((e) => e.is(SecureChatErrorCode.DeviceUnlinked))).toHaveLength(1);
    expect(alice2.client.connectionState).toBe(ConnectionState.Disconnected);
    expect((await failure(alice2.client.send('nobody_at_all', 'x'))).code).toBe(SecureChatErrorCode.InvalidState);
    expect(await alice2.stores.metadata.getRefreshToken()).toBeNull();
    expect((await alice.client.listDevices()).map((d) => d.deviceId)).toEqual([1]);
    expect(SecureChatError.isRelay(await failure(alice.client.unlinkDevice(2)), ErrorCode.DeviceNotFound)).toBe(true);
    expect(SecureChatError.isRelay(await failure(alice.client.unlinkDevice(1)), ErrorCode.PrimaryDevice)).toBe(true);
  }, 60_000);

  it('an install unlinked while offline gets DeviceUnlinked from the relay at its next request', async () => {
    const alice = await registered('alice');
    const alice2 = await linked(alice);
    await alice.client.unlinkDevice(2);

    const error = await failure(alice2.client.connect());
    expect(error.code).toBe(SecureChatErrorCode.DeviceUnlinked);
    expect(error.relayCode).toBe(ErrorCode.DeviceUnlinked);
    expect(alice2.errors.map((e) => e.code)).toEqual([SecureChatErrorCode.DeviceUnlinked]);
  }, 60_000);

  it("a peer's next send to the account gets 410, drops the unlinked device's session and reaches the remaining devices", async () => {
    const alice = await registered('alice');
    const alice2 = await linked(alice);
    const alice3 = await linked(alice);
    // bob talks to the relay through a proxy that records every HTTP answer, so that the 410 can be seen.
    const answers: ProxiedAnswer[] = [];
    const proxy = await startRewritingProxy(fixture.relay, (answer) => {
      answers.push(answer);
      return undefined;
    });
    try {
      const bob = await registered('bob', proxy.baseUrl);
      await bob.client.send(alice.username, 'hello all three');
      await Promise.all([alice, alice2, alice3].map((device) => device.client.connect()));
      for (const device of [alice, alice2, alice3]) expect((await device.inbox.next()).text).toBe('hello all three');
      const address2 = ProtocolAddress.new(alice.username, 2);
      expect(await bob.stores.session.getSession(address2)).not.toBeNull();

      await alice.client.unlinkDevice(2);
      await until(() => alice2.errors.some((e) => e.is(SecureChatErrorCode.DeviceUnlinked)), 'DeviceUnlinked on device 2');
      answers.length = 0;
      await bob.client.send(alice.username, 'after the unlink');

      const sends = answers.filter((answer) => answer.method === 'POST' && answer.path === '/v1/messages');
      expect(sends.map((answer) => answer.status)).toEqual([410, 201]);
      expect(sends[0]?.body).toMatchObject({ code: ErrorCode.StaleDevices, stale: [{ username: alice.username, devices: [2] }] });
      expect(await bob.stores.session.getSession(address2)).toBeNull();
      for (const device of [alice, alice3]) expect((await device.inbox.next()).text).toBe('after the unlink');
      expect((await alice.client.listDevices()).map((d) => d.deviceId)).toEqual([1, 3]);
    } finally {
      await proxy.close();
    }
  }, 60_000);
});

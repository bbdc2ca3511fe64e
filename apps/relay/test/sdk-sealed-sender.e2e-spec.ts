import { randomBytes } from 'node:crypto';
import { describe, expect, it } from '@jest/globals';
import {
  ContentHint,
  PrivateKey,
  ProtocolAddress,
  SenderCertificate,
  ServerCertificate,
  UnidentifiedSenderMessageContent,
  sealedSenderEncrypt,
  signalEncrypt,
} from '@signalapp/libsignal-client';
import { ProfileKey } from '@signalapp/libsignal-client/dist/zkgroup/index.js';
import { ChatEvent, HttpRelayTransport, SecureChatClient, SecureChatErrorCode, type SecureChatError } from '@chat/signal-sdk';
import { MessageCollector, createMemoryStores } from '@chat/signal-sdk/testing';
import { useSdkRelay } from './support/sdk-relay.js';
import { DEFAULT_TEST_PASSWORD, uniqueUsername } from './support/test-relay.js';
import { until } from './support/wait.js';

// Sealed sender with real SDK clients on the real relay and database: two
// users share profile keys with their first messages, after which their
// messages are stored with no sender at all; the receiving SDK drops sealed
// messages whose sender certificate is forged, expired or under another trust
// root (crafted here with libsignal and throwaway keys, delivered through the
// relay's sealed endpoint); a refused access key falls back to an
// authenticated send.

const fixture = useSdkRelay('sdk-sealed-sender');

const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');
const bytes = (base64: string) => new Uint8Array(Buffer.from(base64, 'base64'));

interface StoredRow {
  type: string;
  sender_account_id: string | null;
  sender_username: string | null;
  sender_device_id: number | null;
}

function install(name: string) {
  const stores = createMemoryStores();
  const client = SecureChatClient.create({
    relayUrl: fixture.relay.baseUrl,
    stores,
    trustRoot: fixture.relay.trustRoot,
    deliveryReceipts: false,
    backOff: { initialDelayMs: 20, maxDelayMs: 100 },
  });
  fixture.clients.push(client);
  const errors: SecureChatError[] = [];
  client.on(ChatEvent.Error, (error) => void errors.push(error));
  return { name, client, stores, errors, inbox: new MessageCollector(client) };
}

type Install = ReturnType<typeof install>;

/** Every message the relay holds for `username`, oldest first. */
function rowsFor(username: string): Promise<StoredRow[]> {
  return fixture.relay.sql<StoredRow>(
    `SELECT m.type, m.sender_account_id, m.sender_username, m.sender_device_id
       FROM messages m JOIN devices d ON d.id = m.recipient_device_row_id JOIN accounts a ON a.id = d.account_id
      WHERE a.username = $1 ORDER BY m.seq`,
    username,
  );
}

/** Two registered users that have exchanged a first message each (and so their profile keys); both connected. */
async function acquainted(): Promise<{ alice: Install; bob: Install }> {
  const alice = install('alice');
  const bob = install('bob');
  await alice.client.register(uniqueUsername('alice'), DEFAULT_TEST_PASSWORD);
  await bob.client.register(uniqueUsername('bob'), DEFAULT_TEST_PASSWORD);
  await alice.client.connect();
  await bob.client.connect();
  await alice.client.send(bob.client.username!, 'hello bob');
  expect((await bob.inbox.next()).text).toBe('hello bob');
  await bob.client.send(alice.client.username!, 'hello alice');
  expect((await alice.inbox.next()).text).toBe('hello alice');
  return { alice, bob };
}

/**
 * A sealed message from `alice`'s session with `bob` under `certificate`,
 * posted to the relay's sealed endpoint with bob's access key (derived from
 * his profile key, as alice's SDK holds it).
 */
async function postSealed(alice: Install, bob: Install, certificate: SenderCertificate): Promise<void> {
  const bobAddress = ProtocolAddress.new(bob.client.username!, 1);
  const aliceAddress = ProtocolAddress.new(alice.client.username!, 1);
  const inner = await signalEncrypt(new Uint8Array(160), bobAddress, aliceAddress, alice.stores.session, alice.stores.identity);
  const usmc = UnidentifiedSenderMessageContent.new(inner, certificate, ContentHint.Default, null);
  const ciphertext = await sealedSenderEncrypt(usmc, bobAddress, alice.stores.identity);
  const session = (await alice.stores.session.getSession(bobAddress))!;
  const profileKey = (await alice.stores.metadata.getPeerProfileKey(bob.client.username!))!;
  const accessKey = b64(new ProfileKey(new Uint8Array(profileKey)).deriveAccessKey());
  await new HttpRelayTransport(fixture.relay.baseUrl).sendSealed(accessKey, {
    to: bob.client.username!,
    messages: [{ deviceId: 1, registrationId: session.remoteRegistrationId(), ciphertext: b64(ciphertext) }],
  });
}

/** Posts a sealed message under `certificate` and expects bob's SDK to drop it: reported, never shown, acked. */
async function expectRejected(alice: Install, bob: Install, certificate: SenderCertificate, why: RegExp): Promise<void> {
  const errorsBefore = bob.errors.length;
  await postSealed(alice, bob, certificate);
  await until(async () => bob.errors.length > errorsBefore && (await rowsFor(bob.client.username!)).length === 0);
  const error = bob.errors.slice(errorsBefore).find((e) => e.code === SecureChatErrorCode.InvalidSenderCertificate);
  expect(error?.message).toMatch(why);
  await expect(bob.inbox.next(300)).rejects.toThrow(/no message/);
}

describe('SDK sealed sender on the real relay', () => {
  it('exchanges profile keys with the first messages; later messages are stored sealed, with no sender', async () => {
    const { alice, bob } = await acquainted();
    const [aliceName, bobName] = [alice.client.username!, bob.client.username!];
    const aliceProfileKey = (await alice.stores.metadata.getOwnProfileKey())!;
    expect(Buffer.from((await bob.stores.metadata.getPeerProfileKey(aliceName))!)).toEqual(Buffer.from(aliceProfileKey));
    expect(await alice.stores.metadata.getPeerProfileKey(bobName)).not.toBeNull();

    // Bob offline: the relay keeps what alice sends, so its rows can be read.
    await bob.client.close();
    await alice.client.send(bobName, 'sealed one');
    await alice.client.send(bobName, 'sealed two');
    const rows = await rowsFor(bobName);
    expect(rows).toHaveLength(2);
    for (const row of rows) {
      expect(row).toEqual({ type: 'sealed', sender_account_id: null, sender_username: null, sender_device_id: null });
    }

    // Same stores, a new client: bob comes back and reads them as from alice.
    const resumed = SecureChatClient.create({ relayUrl: fixture.relay.baseUrl, stores: bob.stores, trustRoot: fixture.relay.trustRoot, deliveryReceipts: false });
    fixture.clients.push(resumed);
    const inbox = new MessageCollector(resumed);
    await resumed.resume();
    await resumed.connect();
    const first = await inbox.next();
    const second = await inbox.next();
    expect([first.text, second.text]).toEqual(['sealed one', 'sealed two']);
    expect(first.sender).toBe(aliceName);
    await until(async () => (await rowsFor(bobName)).length === 0);
  });

  it('drops sealed messages whose certificate is forged, expired or under another trust root (acceptance 3)', async () => {
    const { alice, bob } = await acquainted();
    const aliceName = alice.client.username!;
    const accountId = (await alice.stores.metadata.getAccountId(aliceName))!;
    expect(accountId).toMatch(/^[0-9a-f-]{36}$/);
    const aliceKey = (await alice.stores.identity.getLocalIdentity())!.identityKeyPair.publicKey;
    const relayServerCertificate = ServerCertificate.deserialize(bytes(fixture.relay.config.sealedSender.serverCertificate));
    const relayServerKey = PrivateKey.deserialize(bytes(fixture.relay.config.sealedSender.serverPrivateKey));
    const inAWeek = Date.now() + 7 * 24 * 3600 * 1000;

    // Forged: claims the relay's server certificate, signed by a throwaway key.
    const forged = SenderCertificate.new(accountId, null, 1, aliceKey, inAWeek, relayServerCertificate, PrivateKey.generate());
    await expectRejected(alice, bob, forged, /not signed under the trust root/);

    // Expired: the relay's own server key signed it, but it ran out.
    const expired = SenderCertificate.new(accountId, null, 1, aliceKey, Date.now() - 60_000, relayServerCertificate, relayServerKey);
    await expectRejected(alice, bob, expired, /expired/);

    // Another trust root: a whole throwaway chain.
    const otherRoot = PrivateKey.generate();
    const otherServerKey = PrivateKey.generate();
    const otherServer = ServerCertificate.new(7, otherServerKey.getPublicKey(), otherRoot);
    const otherChain = SenderCertificate.new(accountId, null, 1, aliceKey, inAWeek, otherServer, otherServerKey);
    await expectRejected(alice, bob, otherChain, /not signed under the trust root/);

    // Control: the same path with a certificate the relay's chain signed, valid, is taken.
    const genuine = SenderCertificate.new(accountId, null, 1, aliceKey, inAWeek, relayServerCertificate, relayServerKey);
    const errorsBefore = bob.errors.length;
    await postSealed(alice, bob, genuine);
    await until(async () => (await rowsFor(bob.client.username!)).length === 0);
    // Its content (160 zero bytes) is no valid record: dropped as malformed, past the certificate checks.
    expect(bob.errors.slice(errorsBefore).map((e) => e.code)).toEqual([SecureChatErrorCode.MalformedContent]);

    // And the session still works for real messages afterwards.
    await alice.client.send(bob.client.username!, 'after the forgeries');
    expect((await bob.inbox.next()).text).toBe('after the forgeries');
  });

  it('falls back to an authenticated send when the relay refuses the access key', async () => {
    const { alice, bob } = await acquainted();
    const [aliceName, bobName] = [alice.client.username!, bob.client.username!];
    // Bob's access key at the relay changes behind alice's back (as after a new profile key).
    const transport = new HttpRelayTransport(fixture.relay.baseUrl);
    const { accessToken } = await transport.login({ username: bobName, password: DEFAULT_TEST_PASSWORD });
    await transport.putUnidentifiedAccess(accessToken, { accessKey: b64(randomBytes(16)), unrestricted: false });

    await bob.client.close();
    await alice.client.send(bobName, 'authenticated after refusal');
    const rows = await rowsFor(bobName);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ sender_username: aliceName, sender_device_id: 1 });
    expect(rows[0]!.type).not.toBe('sealed');
    await expect(alice.stores.metadata.getPeerProfileKey(bobName)).resolves.toBeNull();
    expect(alice.errors).toEqual([]);
  });
});

import { createCipheriv, randomBytes, randomUUID } from 'node:crypto';
import {
  ContentHint,
  IdentityKeyPair,
  PrivateKey,
  ProtocolAddress,
  ServerCertificate,
  UnidentifiedSenderMessageContent,
  sealedSenderEncrypt,
  signalEncrypt,
  type IdentityKeyStore,
  type SenderCertificate,
} from '@signalapp/libsignal-client';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { asRegistrationId } from '../ids.js';
import { ChatEvent, type IncomingMessage } from '../events.js';
import { SecureChatClient, type SecureChatClientOptions } from '../secure-chat-client.js';
import { ContentFormatError, ContentKind, decodeContent, encodeContent, encodeProfileKey, profileKeyOf } from '../session/content.js';
import { openProvisioningMessage, sealProvisioningMessage } from '../devices/provisioning-message.js';
import { createMemoryStores } from '../stores/memory-stores.js';
import type { SecureChatStores } from '../stores/stores.js';
import { FakeRelay } from '../test-support/fake-relay.js';
import { until } from '../test-support/spec-helpers.js';
import { waitForMessage } from '../testing/wait-for.js';
import { accessKeyOf, combinedAccessKey } from './profile-key.js';

const base64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');

async function pair(options: Partial<SecureChatClientOptions> = {}) {
  const relay = new FakeRelay();
  const clients: Record<string, { client: SecureChatClient; stores: SecureChatStores; errors: SecureChatError[]; messages: IncomingMessage[] }> = {};
  for (const name of ['alice', 'bob']) {
    const stores = createMemoryStores();
    const client = SecureChatClient.create({
      relayUrl: 'http://127.0.0.1:1',
      transport: relay.transport(),
      stores,
      trustRoot: relay.trustRoot,
      deliveryReceipts: false,
      ...options,
    });
    const errors: SecureChatError[] = [];
    const messages: IncomingMessage[] = [];
    client.on(ChatEvent.Error, (error) => errors.push(error));
    client.on(ChatEvent.Message, (message) => void messages.push(message));
    await client.register(name, 'correct horse battery');
    clients[name] = { client, stores, errors, messages };
  }
  return { relay, alice: clients.alice!, bob: clients.bob! };
}

/** A text content record, as the SDK encrypts it. */
const textContent = (text: string) => encodeContent({ kind: ContentKind.Text, timestamp: Date.now(), body: new TextEncoder().encode(text) });

/**
 * A sealed message from alice's session with bob, under `certificate`,
 * sealed with `sealingKey` (the certificate's key's private half; alice's
 * identity key unless a test forges one).
 */
async function craftSealed(alice: SecureChatStores, certificate: SenderCertificate, text: string, sealingKey?: PrivateKey): Promise<string> {
  const bob = ProtocolAddress.new('bob', 1);
  const message = await signalEncrypt(textContent(text), bob, ProtocolAddress.new('alice', 1), alice.session, alice.identity);
  const usmc = UnidentifiedSenderMessageContent.new(message, certificate, ContentHint.Default, null);
  let identity: IdentityKeyStore = alice.identity;
  if (sealingKey) {
    // Mallory's identity store: her key pair, and bob's identity key as alice knows it.
    const mallory = createMemoryStores().identity;
    await mallory.saveLocalIdentity({ identityKeyPair: new IdentityKeyPair(sealingKey.getPublicKey(), sealingKey), registrationId: asRegistrationId(1) });
    await mallory.savePeerIdentity((await alice.identity.getPeerIdentity('bob'))!);
    identity = mallory;
  }
  return base64(await sealedSenderEncrypt(usmc, bob, identity));
}

describe('sealed sender: wire pieces', () => {
  it('encodes kind 7 as exactly the 32-byte profile key, and refuses any other length', () => {
    const key = new Uint8Array(randomBytes(32));
    const decoded = decodeContent(encodeProfileKey(1_234, key));
    expect(decoded.kind).toBe(ContentKind.ProfileKey);
    expect(decoded.timestamp).toBe(1_234);
    expect(Buffer.from(profileKeyOf(decoded))).toEqual(Buffer.from(key));
    expect(() => encodeProfileKey(1, new Uint8Array(31))).toThrow(ContentFormatError);
    expect(() => decodeContent(encodeContent({ kind: ContentKind.Text, timestamp: 1, body: key }).map((b, i) => (i === 1 ? 7 : b)))).not.toThrow();
    const short = encodeContent({ kind: ContentKind.Text, timestamp: 1, body: new Uint8Array(33) });
    short[1] = ContentKind.ProfileKey;
    expect(() => decodeContent(short)).toThrow(ContentFormatError);
  });

  it('carries the profile key in the provisioning message, and reads one without it', () => {
    const identityKeyPair = IdentityKeyPair.generate();
    const ephemeral = PrivateKey.generate();
    const profileKey = new Uint8Array(randomBytes(32));
    const slot = randomUUID();
    const opened = openProvisioningMessage(sealProvisioningMessage({ username: 'alice', identityKeyPair, profileKey }, ephemeral.getPublicKey(), slot), ephemeral, slot);
    expect(Buffer.from(opened.profileKey!)).toEqual(Buffer.from(profileKey));
    const older = openProvisioningMessage(sealProvisioningMessage({ username: 'alice', identityKeyPair }, ephemeral.getPublicKey(), slot), ephemeral, slot);
    expect(older.profileKey).toBeUndefined();
  });
});

describe('sealed sender: access keys', () => {
  it('derives the access key with zkgroup: AES-256-GCM of 16 zero bytes under the profile key, zero nonce, first 16 bytes', () => {
    const profileKey = randomBytes(32);
    const cipher = createCipheriv('aes-256-gcm', profileKey, Buffer.alloc(12));
    const expected = Buffer.concat([cipher.update(Buffer.alloc(16)), cipher.final()]).subarray(0, 16);
    expect(Buffer.from(accessKeyOf(new Uint8Array(profileKey)))).toEqual(expected);
    expect(() => accessKeyOf(new Uint8Array(31))).toThrow(expect.objectContaining({ code: SecureChatErrorCode.InvalidArgument }));
  });

  it('combines access keys by XOR for a multi-recipient send', () => {
    const [a, b] = [new Uint8Array(16).fill(0x0f), new Uint8Array(16).fill(0xf3)];
    expect(combinedAccessKey([a, b])).toEqual(new Uint8Array(16).fill(0xfc));
    expect(combinedAccessKey([a])).toEqual(a);
  });

  it('uploads the access key of the profile key it made at register, restricted unless sealedSenderFromAnyone', async () => {
    const { relay, alice } = await pair();
    const profileKey = (await alice.stores.metadata.getOwnProfileKey())!;
    expect(profileKey).toHaveLength(32);
    expect(relay.accounts.get('alice')?.accessKey).toBe(base64(accessKeyOf(profileKey)));
    expect(relay.accounts.get('alice')?.unrestricted).toBe(false);
    const open = await pair({ sealedSenderFromAnyone: true });
    expect(open.relay.accounts.get('alice')?.unrestricted).toBe(true);
  });
});

describe('sealed sender: sending', () => {
  it('shares the profile key (kind 7) with the first message, then goes sealed both ways', async () => {
    const { relay, alice, bob } = await pair();
    await alice.client.connect();
    await bob.client.connect();

    await alice.client.send('bob', 'first');
    await waitForMessage(bob.client, (m) => m.text === 'first');
    // Authenticated: alice had no profile key of bob's. The profile key went first, before the message.
    expect(relay.sealedSends).toHaveLength(0);
    expect(relay.sends.filter((s) => s.from === 'alice' && s.request.to === 'bob')).toHaveLength(2);
    const bobKnows = (await bob.stores.metadata.getPeerProfileKey('alice'))!;
    expect(Buffer.from(bobKnows)).toEqual(Buffer.from((await alice.stores.metadata.getOwnProfileKey())!));
    expect(bob.messages.map((m) => m.text)).toEqual(['first']);

    const sendsBefore = relay.sends.length;
    await bob.client.send('alice', 'reply');
    await waitForMessage(alice.client, (m) => m.text === 'reply');
    // Bob's profile key and his reply both went sealed to alice, with alice's access key; nothing authenticated.
    expect(relay.sends.length).toBe(sendsBefore);
    expect(relay.sealedSends.map((s) => s.request.to)).toEqual(['alice', 'alice']);
    expect(relay.sealedSends.every((s) => s.accessKey === relay.accounts.get('alice')?.accessKey)).toBe(true);
    const stored = relay.stored.filter((s) => s.to === 'alice').map((s) => s.envelope);
    expect(stored.every((e) => e.type === 'sealed' && e.source === undefined && e.sourceDevice === undefined)).toBe(true);

    await alice.client.send('bob', 'second');
    const second = await waitForMessage(bob.client, (m) => m.text === 'second');
    expect(second.sender).toBe('alice');
    expect(relay.sealedSends.at(-1)?.request.to).toBe('bob');
    expect(relay.sends.length).toBe(sendsBefore);
    expect(alice.errors).toEqual([]);
    expect(bob.errors).toEqual([]);
    await alice.client.close();
    await bob.client.close();
  });

  it('falls back to an authenticated send when the relay refuses the access key, and forgets that profile key', async () => {
    const { relay, alice, bob } = await pair();
    await alice.client.connect();
    await bob.client.connect();
    await bob.client.send('alice', 'hello');
    await waitForMessage(alice.client, (m) => m.text === 'hello');
    expect(await alice.stores.metadata.getPeerProfileKey('bob')).not.toBeNull();

    // Bob's access key at the relay changes (a new profile key alice does not know).
    relay.accounts.get('bob')!.accessKey = base64(randomBytes(16));
    const sealedBefore = relay.sealedSends.length;
    const sent = await alice.client.send('bob', 'after the change');
    const message = await waitForMessage(bob.client, (m) => m.text === 'after the change');
    expect(message.sender).toBe('alice');
    // One refused sealed attempt (alice's profile key went first), then authenticated, same content id.
    const refused = relay.sealedSends.slice(sealedBefore);
    expect(refused.length).toBeGreaterThanOrEqual(1);
    const authenticated = relay.sends.filter((s) => s.from === 'alice' && s.request.id === sent.id);
    expect(authenticated).toHaveLength(1);
    await expect(alice.stores.metadata.getPeerProfileKey('bob')).resolves.toBeNull();
    expect(alice.errors).toEqual([]);
    await alice.client.close();
    await bob.client.close();
  });

  it('never sends sealed without a trust root, and shares no profile key then', async () => {
    const relay = new FakeRelay();
    const make = async (name: string, trustRoot?: string) => {
      const stores = createMemoryStores();
      const client = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores, trustRoot, deliveryReceipts: false });
      await client.register(name, 'correct horse battery');
      return { client, stores };
    };
    const alice = await make('alice');
    const bob = await make('bob', relay.trustRoot);
    await bob.client.connect();
    await alice.client.send('bob', 'plain');
    await waitForMessage(bob.client, (m) => m.text === 'plain');
    await expect(bob.stores.metadata.getPeerProfileKey('alice')).resolves.toBeNull();
    expect(relay.sealedSends).toHaveLength(0);
    await bob.client.close();
  });
});

describe('sealed sender: receiving', () => {
  /** Alice and bob with a session (alice wrote first), bob connected. */
  async function established() {
    const ctx = await pair();
    await ctx.bob.client.connect();
    await ctx.alice.client.send('bob', 'hello');
    await waitForMessage(ctx.bob.client, (m) => m.text === 'hello');
    return ctx;
  }

  async function expectRejected(ctx: Awaited<ReturnType<typeof established>>, ciphertext: string, why: RegExp) {
    const errorsBefore = ctx.bob.errors.length;
    const shown = ctx.bob.messages.length;
    const envelope = ctx.relay.storeSealed('bob', ciphertext);
    await until(() => ctx.relay.acked.includes(envelope.id));
    const error = ctx.bob.errors.slice(errorsBefore).find((e) => e.code === SecureChatErrorCode.InvalidSenderCertificate);
    expect(error?.message ?? ctx.bob.errors.slice(errorsBefore).map((e) => `${e.code}: ${e.message}`).join("; ")).toMatch(why);
    expect(ctx.bob.messages.length).toBe(shown);
  }

  it('accepts a sealed message whose certificate the relay issued, as from the certificate sender', async () => {
    const ctx = await established();
    const ciphertext = await craftSealed(ctx.alice.stores, ctx.relay.issueSenderCertificate('alice'), 'genuine');
    ctx.relay.storeSealed('bob', ciphertext);
    const message = await waitForMessage(ctx.bob.client, (m) => m.text === 'genuine');
    expect(message.sender).toBe('alice');
    expect(message.senderDevice).toBe(1);
  });

  it('rejects a forged certificate (signed by a server key the trust root did not certify) and reports it; the message is not shown', async () => {
    const ctx = await established();
    const forged = ctx.relay.issueSenderCertificate('alice', { serverKey: PrivateKey.generate() });
    await expectRejected(ctx, await craftSealed(ctx.alice.stores, forged, 'forged'), /not signed under the trust root/);
  });

  it('rejects a certificate under another trust root', async () => {
    const ctx = await established();
    const otherRoot = PrivateKey.generate();
    const otherServerKey = PrivateKey.generate();
    const otherServer = ServerCertificate.new(1, otherServerKey.getPublicKey(), otherRoot);
    const certificate = ctx.relay.issueSenderCertificate('alice', { serverCertificate: otherServer, serverKey: otherServerKey });
    await expectRejected(ctx, await craftSealed(ctx.alice.stores, certificate, 'other root'), /not signed under the trust root/);
  });

  it('rejects an expired certificate', async () => {
    const ctx = await established();
    const expired = ctx.relay.issueSenderCertificate('alice', { expiration: Date.now() - 1_000 });
    await expectRejected(ctx, await craftSealed(ctx.alice.stores, expired, 'expired'), /expired/);
  });

  it('judges expiry by the injected clock', async () => {
    const relay = new FakeRelay();
    let now = Date.now();
    const stores = { alice: createMemoryStores(), bob: createMemoryStores() };
    const bob = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores: stores.bob, trustRoot: relay.trustRoot, now: () => now });
    const alice = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores: stores.alice, trustRoot: relay.trustRoot });
    await alice.register('alice', 'correct horse battery');
    await bob.register('bob', 'correct horse battery');
    const errors: SecureChatError[] = [];
    bob.on(ChatEvent.Error, (e) => errors.push(e));
    await bob.connect();
    await alice.send('bob', 'hello');
    await waitForMessage(bob, (m) => m.text === 'hello');
    const certificate = relay.issueSenderCertificate('alice', { expiration: Date.now() + 60_000 });
    now += 120_000;
    const envelope = relay.storeSealed('bob', await craftSealed(stores.alice, certificate, 'from the past'));
    await until(() => relay.acked.includes(envelope.id));
    expect(errors.map((e) => e.code)).toContain(SecureChatErrorCode.InvalidSenderCertificate);
    await bob.close();
  });

  it("rejects a certificate whose key is not the identity key of the sender's session, rolls the decryption back, and goes on", async () => {
    const ctx = await established();
    const mallory = PrivateKey.generate();
    const certificate = ctx.relay.issueSenderCertificate('alice', { key: mallory.getPublicKey() });
    await expectRejected(ctx, await craftSealed(ctx.alice.stores, certificate, 'wrong key', mallory), /another key than alice's identity key/);
    // The session was not changed by the rejected message: alice's next message still decrypts.
    await ctx.alice.client.send('bob', 'still fine');
    await waitForMessage(ctx.bob.client, (m) => m.text === 'still fine');
  });

  it('drops every sealed message without a trust root', async () => {
    const ctx = await established();
    const plainBob = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: ctx.relay.transport(), stores: ctx.bob.stores });
    await ctx.bob.client.close();
    const errors: SecureChatError[] = [];
    plainBob.on(ChatEvent.Error, (e) => errors.push(e));
    plainBob.on(ChatEvent.Message, () => undefined);
    await plainBob.login('bob', 'correct horse battery');
    const envelope = ctx.relay.storeSealed('bob', await craftSealed(ctx.alice.stores, ctx.relay.issueSenderCertificate('alice'), 'unchecked'));
    await plainBob.connect();
    await until(() => ctx.relay.acked.includes(envelope.id));
    expect(errors.find((e) => e.code === SecureChatErrorCode.InvalidSenderCertificate)?.message).toMatch(/no trustRoot/);
    await plainBob.close();
  });

  it('looks up an account id it does not know at the relay, then keeps it', async () => {
    const ctx = await established();
    const accountId = ctx.relay.accountIdOf('alice');
    // Bob learnt alice's id from her authenticated envelope; make him forget it (another id for the name drops it).
    await ctx.bob.stores.metadata.saveAccountId('alice', randomUUID());
    await expect(ctx.bob.stores.metadata.getUsernameOfAccount(accountId)).resolves.toBeNull();
    ctx.relay.storeSealed('bob', await craftSealed(ctx.alice.stores, ctx.relay.issueSenderCertificate('alice'), 'who is this'));
    const message = await waitForMessage(ctx.bob.client, (m) => m.text === 'who is this');
    expect(message.sender).toBe('alice');
    await expect(ctx.bob.stores.metadata.getUsernameOfAccount(accountId)).resolves.toBe('alice');
  });
});

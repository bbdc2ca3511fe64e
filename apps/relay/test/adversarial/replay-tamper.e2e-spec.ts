import { join } from 'node:path';
import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { PreKeySignalMessage, ProtocolAddress, SessionRecord } from '@signalapp/libsignal-client';
import { ProfileKey } from '@signalapp/libsignal-client/dist/zkgroup/index.js';
import {
  ChatEvent,
  HttpRelayTransport,
  SecureChatClient,
  SecureChatErrorCode,
  SessionResetReason,
  type IdentityChanged,
  type IncomingMessage,
  type SecureChatError,
  type SecureChatStores,
  type SessionReset,
} from '@chat/signal-sdk';
import { SqliteStores, type StoreKdfParams } from '@chat/signal-sdk/sqlite';
import { createMemoryStores } from '@chat/signal-sdk/testing';
import { EnvelopeType } from '@chat/protocol';
import { startRewritingProxy, type RewritingProxy } from '../support/rewriting-proxy.js';
import { useSdkRelay } from '../support/sdk-relay.js';
import { DEFAULT_TEST_PASSWORD, uniqueUsername } from '../support/test-relay.js';
import { failure, until } from '../support/wait.js';
import {
  mutate,
  mutationOf,
  onlyQueued,
  queueOf,
  registrationIdOf,
  requeue,
  tamperRuns,
  withhold,
  type Mutation,
  type QueuedRow,
} from './support/tamper-kit.js';

// Replay and tampering (issue #10): real SDK clients on the real relay and
// database. The attacker is the relay itself, which re-inserts, withholds and
// rewrites rows of its own `messages` table (TestRelay.sql), or someone who
// captured a ciphertext and sends it again, altered or not, through the
// relay's API; for backups and device links, a relay that alters the JSON it
// answers with (the rewriting proxy). The defences under test are the SDK's:
// libsignal's ratchet counters and MACs, the SDK's processed-envelope ids,
// the sealed-sender layer, the backup and provisioning AEADs.
//
// The tamper properties run with a fixed seed (`tamperRuns`); with
// TAMPER_TALLY=1 each prints how often each reaction came (never content).

const fixture = useSdkRelay('adversarial-replay-tamper');

/** 1 MiB of scrypt instead of 128 MiB for the SQLite stores and backups: the same formats, cheaper. */
const TEST_KDF: StoreKdfParams = { logN: 10, r: 8, p: 1 };
const RECOVERY_SECRET = 'a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90';

const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');

/** What one client's app saw. */
interface Seen {
  messages: IncomingMessage[];
  errors: SecureChatError[];
  resets: SessionReset[];
  identityChanges: IdentityChanged[];
}

interface Party {
  username: string;
  client: SecureChatClient;
  stores: SecureChatStores;
  seen: Seen;
  /** Sealed-sender capable (a trust root configured): messages go sealed once profile keys are shared. */
  sealed: boolean;
}

function clientOn(stores: SecureChatStores, sealed: boolean, relayUrl = fixture.relay.baseUrl): Omit<Party, 'username'> {
  const client = SecureChatClient.create({
    relayUrl,
    stores,
    trustRoot: sealed ? fixture.relay.trustRoot : undefined,
    deliveryReceipts: false,
    oneTimePreKeyBatch: 5,
    backupKdf: TEST_KDF,
    backOff: { initialDelayMs: 20, maxDelayMs: 100 },
  });
  fixture.clients.push(client);
  const seen: Seen = { messages: [], errors: [], resets: [], identityChanges: [] };
  client.on(ChatEvent.Message, (message) => void seen.messages.push(message));
  client.on(ChatEvent.Error, (error) => void seen.errors.push(error));
  client.on(ChatEvent.SessionReset, (reset) => void seen.resets.push(reset));
  client.on(ChatEvent.IdentityChanged, (change) => void seen.identityChanges.push(change));
  return { client, stores, seen, sealed };
}

async function registered(prefix: string, options: { stores?: SecureChatStores; sealed?: boolean } = {}): Promise<Party> {
  const party = clientOn(options.stores ?? createMemoryStores(), options.sealed ?? false);
  const username = uniqueUsername(prefix);
  await party.client.register(username, DEFAULT_TEST_PASSWORD);
  return { ...party, username };
}

async function openSqlite(name: string): Promise<SqliteStores> {
  const stores = await SqliteStores.open({ path: join(fixture.dir, `${name}.db`), passphrase: 'store passphrase', kdf: TEST_KDF });
  fixture.openStores.push(stores);
  return stores;
}

const texts = (party: Party) => party.seen.messages.map((m) => m.text);
const timesShown = (party: Party, text: string) => texts(party).filter((t) => t === text).length;

/** `from` sends `text`; resolves once `to`'s app has it. */
async function say(from: Party, to: Party, text: string): Promise<void> {
  await from.client.send(to.username, text);
  await until(() => texts(to).includes(text), `${to.username} to see a message`);
}

/** Resolves once the relay holds nothing for `party` (every envelope was handled and acked). */
const drained = (party: Party) => until(async () => (await queueOf(fixture.relay, party.username)).length === 0, `${party.username}'s queue to drain`);

/** alice opens the session and bob answers: both connected, both sides now send Signal (not PreKey) messages. */
async function talking(options: { sealed?: boolean } = {}): Promise<{ alice: Party; bob: Party }> {
  const alice = await registered('alice', options);
  const bob = await registered('bob', options);
  await Promise.all([alice.client.connect(), bob.client.connect()]);
  await say(alice, bob, 'open');
  await say(bob, alice, 'answer');
  return { alice, bob };
}

/** `from` sends `text` to `to` while `to` is offline; returns the row the relay stored for it. */
async function storedWhileOffline(from: Party, to: Party, text: string): Promise<QueuedRow> {
  await to.client.close();
  await from.client.send(to.username, text);
  return onlyQueued(fixture.relay, to.username);
}

/** The serialized session `party` holds with device 1 of `peer`. */
async function sessionBytes(party: Party, peer: Party): Promise<Uint8Array> {
  const record = await party.stores.session.getSession(ProtocolAddress.new(peer.username, 1));
  if (!record) throw new Error(`${party.username} has no session with ${peer.username}`);
  return record.serialize();
}

/** The attacker who holds `from`'s password (or captured its token) sends `ciphertext` to `to` through the relay's API. */
async function postAs(from: Party, to: Party, type: EnvelopeType, ciphertext: Uint8Array): Promise<void> {
  const transport = new HttpRelayTransport(fixture.relay.baseUrl);
  const { accessToken } = await transport.login({ username: from.username, password: DEFAULT_TEST_PASSWORD });
  const registrationId = await registrationIdOf(fixture.relay, to.username);
  await transport.sendMessage(accessToken, { to: to.username, messages: [{ deviceId: 1, registrationId, type, ciphertext: b64(ciphertext) }] });
}

/** Sends `ciphertext` to `to` through the relay's sealed endpoint, with the access key `from` holds for `to`. */
/** alice and bob in a group of their own (sealed sends), one group message read by bob, who is then offline. */
async function groupWithBobOffline(title: string): Promise<{ alice: Party; bob: Party; group: Awaited<ReturnType<SecureChatClient['createGroup']>> }> {
  const { alice, bob } = await talking({ sealed: true });
  const group = await alice.client.createGroup(title, [bob.username]);
  await until(async () => (await bob.client.groups()).some((g) => g.id === group.id), 'bob to know the group');
  await alice.client.sendGroupMessage(group.id, 'group hello');
  await until(() => texts(bob).includes('group hello'));
  await drained(bob);
  await bob.client.close();
  return { alice, bob, group };
}

async function postSealed(from: Party, to: Party, ciphertext: Uint8Array): Promise<void> {
  const profileKey = await from.stores.metadata.getPeerProfileKey(to.username);
  if (!profileKey) throw new Error(`${from.username} holds no profile key of ${to.username}`);
  const accessKey = b64(new ProfileKey(new Uint8Array(profileKey)).deriveAccessKey());
  const registrationId = await registrationIdOf(fixture.relay, to.username);
  await new HttpRelayTransport(fixture.relay.baseUrl).sendSealed(accessKey, {
    to: to.username,
    messages: [{ deviceId: 1, registrationId, ciphertext: b64(ciphertext) }],
  });
}

/** What the app saw since `mark` (lengths of `seen`'s lists). */
function since(seen: Seen, mark: Record<keyof Seen, number>): Seen {
  return {
    messages: seen.messages.slice(mark.messages),
    errors: seen.errors.slice(mark.errors),
    resets: seen.resets.slice(mark.resets),
    identityChanges: seen.identityChanges.slice(mark.identityChanges),
  };
}
const markOf = (seen: Seen): Record<keyof Seen, number> => ({
  messages: seen.messages.length,
  errors: seen.errors.length,
  resets: seen.resets.length,
  identityChanges: seen.identityChanges.length,
});

describe('adversarial: replay', () => {
  it('an attacker re-sends a captured Signal message (new id) to the connected recipient: libsignal refuses the old counter, the SDK acks it silently, it is not shown twice', async () => {
    const { alice, bob } = await talking();
    const row = await storedWhileOffline(alice, bob, 'once');
    await bob.client.connect();
    await until(() => texts(bob).includes('once'));
    const mark = markOf(bob.seen);

    await postAs(alice, bob, EnvelopeType.Signal, row.ciphertext);
    await drained(bob);
    await say(alice, bob, 'next');

    expect(since(bob.seen, mark).messages.map((m) => m.text)).toEqual(['next']);
    expect(timesShown(bob, 'once')).toBe(1);
    expect([...bob.seen.errors, ...bob.seen.resets, ...bob.seen.identityChanges]).toEqual([]);
  });

  it('the relay requeues an acked message under a new id and under its own id (an ack it claims it lost), read after a reconnect: both are acked silently and not shown again', async () => {
    const { alice, bob } = await talking();
    const row = await storedWhileOffline(alice, bob, 'once');
    await bob.client.connect();
    await until(() => texts(bob).includes('once'));
    await drained(bob);

    await bob.client.close();
    await requeue(fixture.relay, row);
    await requeue(fixture.relay, row, row.id);
    await bob.client.connect();
    await drained(bob);
    await say(alice, bob, 'next');

    expect(texts(bob)).toEqual(['open', 'once', 'next']);
    expect([...bob.seen.errors, ...bob.seen.resets, ...bob.seen.identityChanges]).toEqual([]);
  });

  it('the relay requeues an acked message (new id and own id) while the recipient is down, which restarts from its SQLite stores: not shown again', async () => {
    const alice = await registered('alice');
    const bobStores = await openSqlite('replay-restart-bob');
    let bob = await registered('bob', { stores: bobStores });
    await Promise.all([alice.client.connect(), bob.client.connect()]);
    await say(alice, bob, 'open');
    await say(bob, alice, 'answer');
    const row = await storedWhileOffline(alice, bob, 'once');
    await bob.client.connect();
    await until(() => texts(bob).includes('once'));
    await drained(bob);
    await bob.client.close();
    await bobStores.close();

    await requeue(fixture.relay, row);
    await requeue(fixture.relay, row, row.id);
    bob = { ...clientOn(await openSqlite('replay-restart-bob'), false), username: bob.username };
    await bob.client.resume();
    await bob.client.connect();
    await drained(bob);
    await say(alice, bob, 'after the restart');
    await say(bob, alice, 'and back');

    expect(texts(bob)).toEqual(['after the restart']);
    expect([...bob.seen.errors, ...bob.seen.resets, ...bob.seen.identityChanges]).toEqual([]);
  });

  it('the relay requeues an acked sealed-sender envelope under a new id: the inner message is refused as a duplicate, acked silently, not shown twice', async () => {
    const { alice, bob } = await talking({ sealed: true });
    const row = await storedWhileOffline(alice, bob, 'sealed once');
    expect([row.type, row.sender_username, row.sender_account_id]).toEqual([EnvelopeType.Sealed, null, null]);
    await bob.client.connect();
    await until(() => texts(bob).includes('sealed once'));
    await drained(bob);

    await bob.client.close();
    await requeue(fixture.relay, row);
    await bob.client.connect();
    await drained(bob);
    await say(alice, bob, 'next');

    expect(texts(bob)).toEqual(['open', 'sealed once', 'next']);
    expect([...bob.seen.errors, ...bob.seen.resets, ...bob.seen.identityChanges]).toEqual([]);
  });

  it('the relay requeues an acked group (sender-key) message under a new id: libsignal refuses the old iteration, the SDK acks it silently (as a replayed 1:1 message), it is not shown twice', async () => {
    const { alice, bob, group } = await groupWithBobOffline('replayed');
    await alice.client.sendGroupMessage(group.id, 'group once');
    const row = await onlyQueued(fixture.relay, bob.username);
    await bob.client.connect();
    await until(() => texts(bob).includes('group once'));
    await drained(bob);
    const mark = markOf(bob.seen);

    await bob.client.close();
    const replayId = await requeue(fixture.relay, row);
    await bob.client.connect();
    await drained(bob);
    await alice.client.sendGroupMessage(group.id, 'group next');
    await until(() => texts(bob).includes('group next'));

    const after = since(bob.seen, mark);
    expect(after.messages.map((m) => m.text)).toEqual(['group next']);
    expect(timesShown(bob, 'group once')).toBe(1);
    // Acked (the queue drained, the replay with it), and nothing reported: no error event, no reset.
    expect((await queueOf(fixture.relay, bob.username)).map((m) => m.id)).not.toContain(replayId);
    expect([...after.errors, ...after.resets, ...after.identityChanges]).toEqual([]);
  });
});

/** How the SDK answered one altered envelope. */
type Reaction = `error:${SecureChatErrorCode}` | `reset:${SessionResetReason}` | 'acked silently' | 'shown as sent';

/** Every reaction seen over a property's runs, with how often. */
type Tally = Map<Reaction, number>;

interface TamperCase {
  /** The receiver, connected; it has never seen `genuine`. */
  bob: Party;
  /** The withheld ciphertext the mutations alter. */
  genuine: Uint8Array;
  /** Hands an altered ciphertext to the relay for bob. */
  deliver: (ciphertext: Uint8Array) => Promise<void>;
  /** The reactions a mutation may get. */
  allowed: readonly Reaction[];
  numRuns: number;
  /**
   * Set where libsignal leaves some bits unauthenticated (the PreKey
   * wrapper): an altered copy may then be shown, but only as exactly this
   * message from this sender, and only once over all runs.
   */
  sentAs?: { text: string; sender: Party };
}

/**
 * The property shared by the message kinds: `genuine` altered by any
 * mutation and delivered is not shown (see `sentAs`); it is acked (never left
 * for a retry); bob reacts with one of `allowed` (an error event of that
 * code, a session reset of that reason, or a silent ack); no identity changes.
 */
async function expectEveryMutationRejected({ bob, genuine, deliver, allowed, numRuns, sentAs }: TamperCase): Promise<Tally> {
  const tally: Tally = new Map();
  const count = (reaction: Reaction) => {
    expect(allowed).toContain(reaction);
    tally.set(reaction, (tally.get(reaction) ?? 0) + 1);
  };
  await fc.assert(
    fc.asyncProperty(mutationOf(genuine.length), async (mutation: Mutation) => {
      const mark = markOf(bob.seen);
      await deliver(mutate(genuine, mutation));
      await drained(bob);
      const seen = since(bob.seen, mark);
      expect(seen.identityChanges).toEqual([]);
      expect(seen.resets.every((r) => r.initiator === 'local')).toBe(true);
      for (const message of seen.messages) {
        expect([message.text, message.sender]).toEqual([sentAs?.text, sentAs?.sender.username]);
        count('shown as sent');
      }
      expect(tally.get('shown as sent') ?? 0).toBeLessThanOrEqual(1);
      for (const error of seen.errors) count(`error:${error.code}`);
      for (const reset of seen.resets) count(`reset:${reset.reason}`);
      if (seen.messages.length + seen.errors.length + seen.resets.length === 0) count('acked silently');
    }),
    tamperRuns(numRuns),
  );
  if (process.env.TAMPER_TALLY) console.log(expect.getState().currentTestName, JSON.stringify([...tally]));
  return tally;
}

/**
 * More than the sealed provisioning message's size (HPKE: 32-byte key, the
 * JSON of username, identity key pair and profile key, 16-byte tag); `mutate`
 * wraps positions into the real length.
 */
const PROVISIONING_MESSAGE_BYTES_BOUND = 512;

const DECRYPTION_FAILED: Reaction = `error:${SecureChatErrorCode.DecryptionFailed}`;

describe('adversarial: tampering', () => {
  it('the relay flips a bit in, truncates or extends a Signal message: never shown; a malformed one is reported (DecryptionFailed), the first bad MAC asks the sender for a new session (session repair), later ones are acked; the genuine message still arrives once and the conversation goes on both ways', async () => {
    const { alice, bob } = await talking();
    await bob.client.close();
    await alice.client.send(bob.username, 'genuine');
    const genuine = await withhold(fixture.relay, bob.username);
    expect(genuine.type).toBe(EnvelopeType.Signal);
    await bob.client.connect();

    const tally = await expectEveryMutationRejected({
      bob,
      genuine: genuine.ciphertext,
      deliver: (ciphertext) => postAs(alice, bob, EnvelopeType.Signal, ciphertext),
      allowed: [DECRYPTION_FAILED, `reset:${SessionResetReason.InvalidMessage}`, 'acked silently'],
      numRuns: 24,
    });
    expect(tally.get(`reset:${SessionResetReason.InvalidMessage}`)).toBe(1);

    // Session repair replaced bob's session; the old state is kept, so the withheld message still opens.
    await postAs(alice, bob, EnvelopeType.Signal, genuine.ciphertext);
    await until(() => texts(bob).includes('genuine'));
    await say(alice, bob, 'after');
    await say(bob, alice, 'reply');
    expect(texts(bob)).toEqual(['open', 'genuine', 'after']);
    expect(texts(alice)).toEqual(['answer', 'reply']);
    expect([...alice.seen.errors, ...alice.seen.identityChanges, ...bob.seen.identityChanges]).toEqual([]);
  });

  it('the relay flips a bit in, truncates or extends the first (PreKey) message: refused (DecryptionFailed, or session repair) without consuming the one-time prekey, unless the flip hit a bit libsignal does not authenticate (then shown once, as sent); no identity change; the conversation goes on both ways', async () => {
    const alice = await registered('alice');
    const bob = await registered('bob');
    await alice.client.connect();
    await alice.client.send(bob.username, 'genuine first');
    const genuine = await withhold(fixture.relay, bob.username);
    expect(genuine.type).toBe(EnvelopeType.PreKey);
    const preKeyId = PreKeySignalMessage.deserialize(new Uint8Array(genuine.ciphertext)).preKeyId()!;
    await bob.client.connect();

    const tally = await expectEveryMutationRejected({
      bob,
      genuine: genuine.ciphertext,
      deliver: (ciphertext) => postAs(alice, bob, EnvelopeType.PreKey, ciphertext),
      allowed: [DECRYPTION_FAILED, `reset:${SessionResetReason.InvalidMessage}`, `reset:${SessionResetReason.UnknownPreKey}`, 'acked silently', 'shown as sent'],
      numRuns: 24,
      sentAs: { text: 'genuine first', sender: alice },
    });
    if (!tally.has('shown as sent')) {
      // Every altered copy was refused and rolled back: the one-time prekey waits for the genuine message.
      await expect(bob.stores.preKey.getPreKey(preKeyId)).resolves.toBeDefined();
    }

    await postAs(alice, bob, EnvelopeType.PreKey, genuine.ciphertext);
    await until(() => texts(bob).includes('genuine first'));
    await drained(bob);
    await expect(bob.stores.preKey.getPreKey(preKeyId)).rejects.toThrow();
    await say(bob, alice, 'reply');
    await say(alice, bob, 'after');
    expect(texts(bob)).toEqual(['genuine first', 'after']);
    expect(texts(alice)).toEqual(['reply']);
    expect([...alice.seen.errors, ...alice.seen.identityChanges, ...bob.seen.identityChanges]).toEqual([]);
  });

  it('the relay flips a bit in, truncates or extends a sealed-sender envelope: the outer layer does not open (DecryptionFailed) and the session is untouched, unless the change missed what sealed sender v1 authenticates (its version byte, trailing bytes): then the message is shown once, as sent; the conversation goes on', async () => {
    const { alice, bob } = await talking({ sealed: true });
    await bob.client.close();
    await alice.client.send(bob.username, 'genuine sealed');
    const genuine = await withhold(fixture.relay, bob.username);
    expect(genuine.type).toBe(EnvelopeType.Sealed);
    await bob.client.connect();
    const session = await sessionBytes(bob, alice);

    const tally = await expectEveryMutationRejected({
      bob,
      genuine: genuine.ciphertext,
      deliver: (ciphertext) => postSealed(alice, bob, ciphertext),
      // Sealed sender v1 authenticates neither its version byte (0 reads as 1) nor trailing bytes: such a copy
      // opens, and its inner message is shown as sent, or dropped silently as a duplicate once shown.
      allowed: [DECRYPTION_FAILED, 'shown as sent', 'acked silently'],
      numRuns: 16,
      sentAs: { text: 'genuine sealed', sender: alice },
    });
    if (!tally.has('shown as sent')) expect(await sessionBytes(bob, alice)).toEqual(session);

    await postSealed(alice, bob, genuine.ciphertext);
    await until(() => texts(bob).includes('genuine sealed'));
    await say(alice, bob, 'after');
    await say(bob, alice, 'reply');
    expect(texts(bob)).toEqual(['open', 'genuine sealed', 'after']);
    expect([...bob.seen.resets, ...alice.seen.errors, ...alice.seen.identityChanges, ...bob.seen.identityChanges]).toEqual([]);
  });

  it('the relay flips a bit in, truncates or extends a group (sender-key) message: refused (DecryptionFailed), unless the change missed the bytes libsignal authenticates (low bits of the version byte): then shown once, as sent, and every later such copy acked silently as a duplicate; the group goes on', async () => {
    const { alice, bob, group } = await groupWithBobOffline('tampered');
    await alice.client.sendGroupMessage(group.id, 'genuine group');
    const genuine = await withhold(fixture.relay, bob.username);
    expect(genuine.type).toBe(EnvelopeType.Sealed);
    await bob.client.connect();

    const tally = await expectEveryMutationRejected({
      bob,
      genuine: genuine.ciphertext,
      deliver: (ciphertext) => postSealed(alice, bob, ciphertext),
      allowed: [DECRYPTION_FAILED, 'shown as sent', 'acked silently'],
      numRuns: 16,
      sentAs: { text: 'genuine group', sender: alice },
    });
    // A silent ack is libsignal's duplicate check on a copy that decrypts to the message already shown, nothing else.
    if (tally.has('acked silently')) expect(tally.get('shown as sent')).toBe(1);

    await postSealed(alice, bob, genuine.ciphertext);
    await until(() => texts(bob).includes('genuine group'));
    await alice.client.sendGroupMessage(group.id, 'group after');
    await until(() => texts(bob).includes('group after'));
    await bob.client.sendGroupMessage(group.id, 'group reply');
    await until(() => texts(alice).includes('group reply'));
    expect(texts(bob)).toEqual(['open', 'group hello', 'genuine group', 'group after']);
    expect([...bob.seen.resets, ...alice.seen.errors, ...alice.seen.identityChanges, ...bob.seen.identityChanges]).toEqual([]);
  });

  it('the relay alters the stored backup blob (a flipped bit, cut short or extended): restore refuses it (BackupCorrupted, or WrongRecoverySecret for an altered key-derivation header), writes nothing and stays signed out; the untouched blob restores', async () => {
    const alice = await registered('alice');
    await alice.client.createBackup(RECOVERY_SECRET);
    const [{ blob }] = await fixture.relay.sql<{ blob: Uint8Array }>(
      'SELECT b.blob FROM backups b JOIN accounts a ON a.id = b.account_id WHERE a.username = $1',
      alice.username,
    );
    let mutation: Mutation | null = null;
    const proxy = await startRewritingProxy(fixture.relay, ({ method, path, body }) =>
      mutation && method === 'GET' && path === '/v1/backup' ? { ...(body as object), blob: b64(mutate(blob!, mutation)) } : undefined,
    );
    try {
      const restoring = clientOn(createMemoryStores(), false, proxy.baseUrl);
      const codes = new Set<SecureChatErrorCode>();
      await fc.assert(
        fc.asyncProperty(mutationOf(blob!.length), async (altered) => {
          mutation = altered;
          const error = await failure(restoring.client.restoreFromBackup(alice.username, DEFAULT_TEST_PASSWORD, RECOVERY_SECRET));
          expect([SecureChatErrorCode.BackupCorrupted, SecureChatErrorCode.WrongRecoverySecret]).toContain(error.code);
          codes.add(error.code);
          expect(await restoring.stores.identity.getLocalIdentity()).toBeNull();
          expect(restoring.client.username).toBeNull();
        }),
        tamperRuns(16),
      );
      expect(codes).toContain(SecureChatErrorCode.BackupCorrupted);
      if (process.env.TAMPER_TALLY) console.log('backup', [...codes]);

      mutation = null;
      await restoring.client.restoreFromBackup(alice.username, DEFAULT_TEST_PASSWORD, RECOVERY_SECRET);
      const restored = await restoring.stores.identity.getLocalIdentity();
      const original = await alice.stores.identity.getLocalIdentity();
      expect(restored!.identityKeyPair.publicKey.serialize()).toEqual(original!.identityKeyPair.publicKey.serialize());
    } finally {
      await proxy.close();
    }
  });

  it('the relay alters the provisioning (device-link) message (a flipped bit, cut short or extended): the new device refuses it (DecryptionFailed or MalformedContent), saves nothing and is not linked; the untouched message links it', async () => {
    const alice = await registered('alice');
    let mutation: Mutation | null = null;
    const proxy: RewritingProxy = await startRewritingProxy(fixture.relay, ({ method, path, body }) => {
      if (!mutation || method !== 'POST' || !path.endsWith('/receive') || typeof (body as { message?: unknown })?.message !== 'string') return undefined;
      const sealed = new Uint8Array(Buffer.from((body as { message: string }).message, 'base64'));
      return { ...(body as object), message: b64(mutate(sealed, mutation)) };
    });
    const linkedDevices = async () => (await alice.client.listDevices()).map((d) => d.deviceId);
    try {
      const codes = new Set<SecureChatErrorCode>();
      await fc.assert(
        fc.asyncProperty(mutationOf(PROVISIONING_MESSAGE_BYTES_BOUND), async (altered) => {
          mutation = altered;
          const device = clientOn(createMemoryStores(), false, proxy.baseUrl);
          const link = await device.client.beginLinking({ pollIntervalMs: 20 });
          await alice.client.approveLink(link.uri);
          const error = await failure(link.completion);
          expect([SecureChatErrorCode.DecryptionFailed, SecureChatErrorCode.MalformedContent]).toContain(error.code);
          codes.add(error.code);
          expect(await device.stores.identity.getLocalIdentity()).toBeNull();
          await device.client.close();
        }),
        tamperRuns(10),
      );
      expect(await linkedDevices()).toEqual([1]);
      if (process.env.TAMPER_TALLY) console.log('provisioning', [...codes]);

      mutation = null;
      const device = clientOn(createMemoryStores(), false, proxy.baseUrl);
      const link = await device.client.beginLinking({ pollIntervalMs: 20 });
      await alice.client.approveLink(link.uri);
      await link.completion;
      expect(await linkedDevices()).toEqual([1, 2]);
    } finally {
      await proxy.close();
    }
  });
});

/** Where the registration-id field (protobuf field 5, a varint) sits in a serialized PreKey message of `registrationId`. */
function registrationIdTagAt(ciphertext: Uint8Array, registrationId: number): number {
  const field = [0x28, ...(registrationId < 0x80 ? [registrationId] : [(registrationId & 0x7f) | 0x80, registrationId >> 7])];
  const at = Buffer.from(ciphertext).indexOf(Buffer.from(field), 1);
  if (at < 0) throw new Error('no registration-id field in the PreKey message');
  return at;
}

describe('adversarial: replayed PreKey message', () => {
  /** bob (offline at first) gets alice's first message, a PreKey message; they talk both ways. Returns its row. */
  async function sessionFormed(bobStores?: SecureChatStores): Promise<{ alice: Party; bob: Party; first: QueuedRow }> {
    const alice = await registered('alice');
    const bob = await registered('bob', { stores: bobStores });
    await alice.client.connect();
    await alice.client.send(bob.username, 'first');
    const first = await onlyQueued(fixture.relay, bob.username);
    expect(first.type).toBe(EnvelopeType.PreKey);
    await bob.client.connect();
    await until(() => texts(bob).includes('first'));
    await say(bob, alice, 'reply');
    await say(alice, bob, 'second');
    await say(bob, alice, 'reply 2');
    await drained(bob);
    return { alice, bob, first };
  }

  it('an attacker re-sends the first PreKey message (new id) after the session formed and both sides wrote: refused as a duplicate; the session record is unchanged, nothing shown twice, no identity change, both sides still talk', async () => {
    const { alice, bob, first } = await sessionFormed();
    const session = await sessionBytes(bob, alice);
    const mark = markOf(bob.seen);

    await postAs(alice, bob, EnvelopeType.PreKey, first.ciphertext);
    await drained(bob);

    expect(await sessionBytes(bob, alice)).toEqual(session);
    expect(since(bob.seen, mark)).toEqual({ messages: [], errors: [], resets: [], identityChanges: [] });
    await say(alice, bob, 'after');
    await say(bob, alice, 'reply after');
    expect(texts(bob)).toEqual(['first', 'second', 'after']);
    expect(texts(alice)).toEqual(['reply', 'reply 2', 'reply after']);
    expect([...alice.seen.errors, ...alice.seen.identityChanges]).toEqual([]);
  });

  it('the relay replays the first PreKey message to a recipient that lost its session: the one-time prekey it used is consumed, so libsignal refuses it (unknown prekey) and nothing is shown; session repair asks the sender to start over and both sides talk again', async () => {
    const { alice, bob, first } = await sessionFormed();
    const preKeyId = PreKeySignalMessage.deserialize(new Uint8Array(first.ciphertext)).preKeyId()!;
    await expect(bob.stores.preKey.getPreKey(preKeyId)).rejects.toThrow();
    await bob.stores.session.saveSession(ProtocolAddress.new(alice.username, 1), SessionRecord.deserialize(new Uint8Array(0)));
    const mark = markOf(bob.seen);

    await postAs(alice, bob, EnvelopeType.PreKey, first.ciphertext);
    await drained(bob);

    expect(since(bob.seen, mark)).toEqual({
      messages: [],
      errors: [],
      resets: [{ peer: alice.username, device: 1, reason: SessionResetReason.UnknownPreKey, initiator: 'local' }],
      identityChanges: [],
    });
    await say(alice, bob, 'after the repair');
    await say(bob, alice, 'reply after the repair');
    expect(texts(bob)).toEqual(['first', 'second', 'after the repair']);
    expect(texts(alice)).toEqual(['reply', 'reply 2', 'reply after the repair']);
    expect(alice.seen.resets.map((r) => [r.initiator, r.reason])).toEqual([['peer', SessionResetReason.PeerRequest]]);
    expect([...alice.seen.errors, ...alice.seen.identityChanges]).toEqual([]);
  });

  it('the relay replays the first PreKey message (new id) while the recipient is down, and it restarts from its SQLite stores: refused as a duplicate, the stored session record unchanged, nothing shown twice, both sides still talk', async () => {
    const bobStores = await openSqlite('prekey-replay-bob');
    const { alice, bob: bobBefore, first } = await sessionFormed(bobStores);
    const session = await sessionBytes(bobBefore, alice);
    await bobBefore.client.close();
    await bobStores.close();

    await requeue(fixture.relay, first);
    const bob: Party = { ...clientOn(await openSqlite('prekey-replay-bob'), false), username: bobBefore.username };
    await bob.client.resume();
    await bob.client.connect();
    await drained(bob);

    expect(await sessionBytes(bob, alice)).toEqual(session);
    expect(bob.seen).toEqual({ messages: [], errors: [], resets: [], identityChanges: [] });
    await say(alice, bob, 'after the restart');
    await say(bob, alice, 'reply after the restart');
    expect(texts(bob)).toEqual(['after the restart']);
    expect(texts(alice)).toEqual(['reply', 'reply 2', 'reply after the restart']);
  });
});

describe('adversarial: unauthenticated bits of a PreKey message', () => {
  // libsignal authenticates a PreKey message's keys and inner message, not its
  // registration id: a copy with that field altered opens, and the session
  // records the altered id, which the receiver's sends then name.
  /**
   * alice's first message to bob, withheld by the relay, which delivers a
   * copy altered by `alter` (given the offset of the registration-id field's
   * tag) and then the genuine one. Resolves once bob's queue is empty.
   */
  async function firstWithRegistrationIdAltered(alter: (ciphertext: Uint8Array, tagAt: number) => void) {
    const alice = await registered('alice');
    const bob = await registered('bob');
    await alice.client.connect();
    await alice.client.send(bob.username, 'first');
    const genuine = await withhold(fixture.relay, bob.username);
    const registrationId = await registrationIdOf(fixture.relay, alice.username);
    const altered = new Uint8Array(genuine.ciphertext);
    alter(altered, registrationIdTagAt(altered, registrationId));
    await bob.client.connect();
    await postAs(alice, bob, EnvelopeType.PreKey, altered);
    await drained(bob);
    const remoteRegistrationId = async () => (await bob.stores.session.getSession(ProtocolAddress.new(alice.username, 1)))?.remoteRegistrationId();
    const openedWith = await remoteRegistrationId();
    await postAs(alice, bob, EnvelopeType.PreKey, genuine.ciphertext);
    await drained(bob);
    return { alice, bob, registrationId, openedWith, remoteRegistrationId };
  }

  it('the relay flips a bit of the registration id in the first PreKey message: the message is shown once, as sent; the relay refuses the altered id in replies (STALE_DEVICES), so the receiver opens a new session and its replies arrive', async () => {
    const { alice, bob, registrationId, openedWith, remoteRegistrationId } = await firstWithRegistrationIdAltered((ciphertext, tagAt) => {
      ciphertext[tagAt + 1]! ^= 0x02;
    });
    expect(openedWith).toBe(registrationId ^ 0x02);
    await say(bob, alice, 'reply');
    expect(await remoteRegistrationId()).toBe(registrationId);
    await say(alice, bob, 'after');
    expect(texts(bob)).toEqual(['first', 'after']);
    expect(texts(alice)).toEqual(['reply']);
    expect([...alice.seen.errors, ...bob.seen.errors, ...alice.seen.identityChanges, ...bob.seen.identityChanges]).toEqual([]);
  });

  it('the relay flips a bit of the registration-id field tag in the first PreKey message, so the field reads as absent (0): the message is shown once, as sent, and the receiver can still reply', async () => {
    const { alice, bob } = await firstWithRegistrationIdAltered((ciphertext, tagAt) => {
      ciphertext[tagAt]! ^= 0x10; // field 5 becomes field 7, which a PreKeySignalMessage does not have
    });
    await say(bob, alice, 'reply');
    await say(alice, bob, 'after');
    expect(texts(bob)).toEqual(['first', 'after']);
    expect(texts(alice)).toEqual(['reply']);
    expect([...alice.seen.errors, ...alice.seen.identityChanges, ...bob.seen.identityChanges]).toEqual([]);
  });
});

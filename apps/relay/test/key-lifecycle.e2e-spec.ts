import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { PreKeyBundleResponse, SendMessageRequest } from '@chat/protocol';
import { PREKEY_LOW_THRESHOLD } from '@chat/protocol';
import {
  ChatEvent,
  HttpRelayTransport,
  SecureChatClient,
  SecureChatError,
  SecureChatErrorCode,
  SessionResetReason,
  type SecureChatClientOptions,
  type SecureChatStores,
  type SessionReset,
} from '@chat/signal-sdk';
import { MessageCollector, createMemoryStores } from '@chat/signal-sdk/testing';
import { DEFAULT_TEST_PASSWORD, httpJson, registerUser, startTestRelay, uniqueUsername, type TestRelay } from './support/test-relay.js';
import { until } from './support/wait.js';

// Key life cycle end to end: SDK clients on the real relay, one of them on a
// clock the test moves, rotating its signed keys and topping up its one-time
// keys while other clients keep fetching its bundle and writing to it.

const DAY = 24 * 60 * 60 * 1000;
const ROTATION = 2 * DAY;

/** The real transport, except that HTTP sends wait for `held`. */
class HeldPosts extends HttpRelayTransport {
  constructor(
    relayUrl: string,
    private readonly held: Promise<void>,
  ) {
    super(relayUrl);
  }

  override async sendMessage(accessToken: string, message: SendMessageRequest) {
    await this.held;
    return super.sendMessage(accessToken, message);
  }
}

/** A clock the test moves by hand. */
function manualClock() {
  const clock = { now: Date.now(), advance: (ms: number) => void (clock.now += ms) };
  return clock;
}

describe('key life cycle through the real relay', () => {
  let relay: TestRelay;
  const clients: SecureChatClient[] = [];

  beforeAll(async () => {
    // Far more bundle fetches than the protocol's defaults allow: this suite drains bundles on purpose.
    relay = await startTestRelay({ BUNDLE_FETCHES_PER_PAIR: '100000', BUNDLE_FETCHES_PER_REQUESTER: '100000' });
  });

  afterAll(async () => {
    for (const client of clients) await client.close();
    await relay?.close();
  });

  function newClient(options: Partial<SecureChatClientOptions> = {}, stores: SecureChatStores = createMemoryStores()) {
    const client = SecureChatClient.create({ relayUrl: relay.baseUrl, stores, ...options });
    clients.push(client);
    const errors: SecureChatError[] = [];
    client.on(ChatEvent.Error, (error) => void errors.push(error));
    return { client, stores, errors, inbox: new MessageCollector(client) };
  }

  async function registered(prefix: string, options: Partial<SecureChatClientOptions> = {}, stores?: SecureChatStores) {
    const party = newClient(options, stores);
    const username = uniqueUsername(prefix);
    await party.client.register(username, DEFAULT_TEST_PASSWORD);
    return { ...party, username };
  }

  /** What the relay holds for `username`'s device 1. */
  async function relayKeys(username: string) {
    const [row] = await relay.sql<{ signed: number; kyber: number; pre: number; kyber_pre: number }>(
      `SELECT d.signed_prekey_id AS signed, d.kyber_last_resort_id AS kyber,
              (SELECT count(*) FROM one_time_prekeys k WHERE k.device_row_id = d.id)::int AS pre,
              (SELECT count(*) FROM kyber_prekeys k WHERE k.device_row_id = d.id)::int AS kyber_pre
         FROM devices d JOIN accounts a ON a.id = d.account_id
        WHERE a.username = $1 AND d.device_id = 1`,
      username,
    );
    if (!row) throw new Error(`no device of ${username}`);
    return row;
  }

  it('a client left running through many rotations and top-ups keeps chatting', async () => {
    const clock = manualClock();
    const grace = 5 * DAY;
    const alice = await registered('alice', {
      now: () => clock.now,
      oneTimePreKeyBatch: 5,
      keyMaintenanceIntervalMs: 25,
      keyGracePeriodMs: grace,
    });
    const bob = await registered('bob');
    const drainer = await registerUser(relay, uniqueUsername('drainer'));
    await alice.client.connect();
    await bob.client.connect();
    // The first upload held 5 one-time keys of each kind: the relay said keys-low on connect.
    await until(async () => (await relayKeys(alice.username)).pre >= PREKEY_LOW_THRESHOLD);

    const signedIds = new Set([(await relayKeys(alice.username)).signed]);
    const rounds = 10;
    let bundlesWithoutOneTimeKey = 0;
    for (let round = 0; round < rounds; round++) {
      // Two days pass: the timer rotates the signed pair.
      const before = await relayKeys(alice.username);
      clock.advance(ROTATION);
      await until(async () => (await relayKeys(alice.username)).signed !== before.signed);
      const rotated = await relayKeys(alice.username);
      expect(rotated.kyber).not.toBe(before.kyber);
      signedIds.add(rotated.signed);

      // Strangers fetch alice's bundle: one-time keys go below the threshold, keys-low, top-up.
      for (let i = 0; i < 6; i++) {
        const { status, body } = await httpJson<PreKeyBundleResponse>(relay, 'GET', `/v1/keys/${alice.username}`, { token: drainer.accessToken });
        expect(status).toBe(200);
        if (body.devices[0]!.preKey === null) bundlesWithoutOneTimeKey++;
      }
      await until(async () => {
        const held = await relayKeys(alice.username);
        return held.pre >= PREKEY_LOW_THRESHOLD && held.kyber_pre >= PREKEY_LOW_THRESHOLD;
      });

      // A newcomer starts a session from the current bundle; the old friend goes on as before.
      const newcomer = await registered(`new${round}`);
      await newcomer.client.connect();
      await newcomer.client.send(alice.username, `hello from newcomer ${round}`);
      expect((await alice.inbox.next()).text).toBe(`hello from newcomer ${round}`);
      await alice.client.send(newcomer.username, `welcome ${round}`);
      expect((await newcomer.inbox.next()).text).toBe(`welcome ${round}`);
      await bob.client.send(alice.username, `bob, round ${round}`);
      expect((await alice.inbox.next()).text).toBe(`bob, round ${round}`);
      await alice.client.send(bob.username, `alice, round ${round}`);
      expect((await bob.inbox.next()).text).toBe(`alice, round ${round}`);
      await newcomer.client.close();
    }

    expect(signedIds.size).toBe(rounds + 1);
    expect(bundlesWithoutOneTimeKey).toBe(0);
    // Replaced keys older than the grace period are gone: the active pair and those replaced within 5 days remain.
    const keptSigned = await alice.stores.signedPreKey.getSignedPreKeys();
    expect(keptSigned.length).toBeLessThanOrEqual(Math.ceil(grace / ROTATION) + 1);
    expect(keptSigned.map((r) => r.id())).toContain((await relayKeys(alice.username)).signed);
    expect((await alice.stores.kyberPreKey.getLastResortKyberPreKeys()).length).toBeLessThanOrEqual(Math.ceil(grace / ROTATION) + 1);
    expect(alice.errors).toEqual([]);
    expect(bob.errors).toEqual([]);
  });

  it('a PreKey message built against the previous signed prekey still decrypts inside the grace period and not after', async () => {
    const clock = manualClock();
    const grace = 5 * DAY;
    const aliceStores = createMemoryStores();
    const aliceOptions = { now: () => clock.now, keyGracePeriodMs: grace };
    const alice = await registered('alice', aliceOptions, aliceStores);
    const previous = (await relayKeys(alice.username)).signed;

    // carol's message is built now and held on its way to the relay (a slow network).
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const carol = await registered('carol', { transport: new HeldPosts(relay.baseUrl, held) });
    const carolSent = carol.client.send(alice.username, 'built before the rotation, arriving after the grace period');
    const bob = await registered('bob');
    await bob.client.send(alice.username, 'built before the rotation, arriving within the grace period');

    // Two days on, alice (offline so far) rotates at sign-in, then reads bob's message: it decrypts.
    clock.advance(ROTATION);
    await alice.client.resume();
    expect((await relayKeys(alice.username)).signed).not.toBe(previous);
    await alice.client.connect();
    expect((await alice.inbox.next()).text).toBe('built before the rotation, arriving within the grace period');
    expect((await aliceStores.signedPreKey.getSignedPreKey(previous)).id()).toBe(previous);
    await alice.client.close();

    // The grace period passes: the previous signed prekey is deleted.
    clock.advance(grace);
    const later = newClient(aliceOptions, aliceStores);
    await later.client.resume();
    await expect(aliceStores.signedPreKey.getSignedPreKey(previous)).rejects.toMatchObject({ code: SecureChatErrorCode.RecordNotFound });
    const resets: SessionReset[] = [];
    later.client.on(ChatEvent.SessionReset, (reset) => void resets.push(reset));
    await later.client.connect();
    await carol.client.connect();
    release();
    await carolSent;

    // It does not decrypt: alice asks carol to start over, and carol resends it on a new session.
    expect((await later.inbox.next(10_000)).text).toBe('built before the rotation, arriving after the grace period');
    expect(resets).toEqual([{ peer: carol.username, device: 1, reason: SessionResetReason.UnknownPreKey, initiator: 'local' }]);
    expect(later.errors).toEqual([]);
  });
});

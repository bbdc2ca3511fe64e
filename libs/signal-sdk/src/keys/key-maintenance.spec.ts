import { describe, expect, it } from '@jest/globals';
import { PreKeySignalMessage } from '@signalapp/libsignal-client';
import { EnvelopeType, PREKEY_LOW_THRESHOLD, type UploadKeysRequest } from '@chat/protocol';
import { generateRecoverySecret } from '../backup/recovery-secret.js';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { ChatEvent, SessionResetReason, type SessionReset } from '../events.js';
import { SecureChatClient, type SecureChatClientOptions } from '../secure-chat-client.js';
import { createMemoryStores } from '../stores/memory-stores.js';
import type { SecureChatStores } from '../stores/stores.js';
import { FakeRelay } from '../test-support/fake-relay.js';
import { MessageCollector } from '../testing/wait-for.js';
import { DEFAULT_KEY_GRACE_PERIOD_MS, DEFAULT_KEY_ROTATION_INTERVAL_MS } from './key-maintenance.js';
import { until } from '../test-support/spec-helpers.js';

const PASSWORD = 'correct horse battery';
const DAY = 24 * 60 * 60 * 1000;
const CHEAP_KDF = { logN: 10, r: 8, p: 1 };

/** A clock the test moves by hand. */
function manualClock(start = 1_800_000_000_000) {
  const clock = { now: start, advance: (ms: number) => void (clock.now += ms) };
  return clock;
}

function client(relay: FakeRelay, options: Partial<SecureChatClientOptions> = {}, stores: SecureChatStores = createMemoryStores()) {
  const made = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores, backupKdf: CHEAP_KDF, ...options });
  const errors: SecureChatError[] = [];
  made.on(ChatEvent.Error, (error) => void errors.push(error));
  return { client: made, stores, errors };
}

const uploadsOf = (relay: FakeRelay, username: string) => relay.uploads.filter((u) => u.username === username).map((u) => u.keys);
const signedUploads = (relay: FakeRelay, username: string) => uploadsOf(relay, username).filter((k) => k.signedPreKey);
const idsOf = (uploads: UploadKeysRequest[], pick: (u: UploadKeysRequest) => Array<{ keyId: number }> | undefined) =>
  uploads.flatMap((u) => pick(u) ?? []).map((k) => k.keyId);

/** Bundle fetches by strangers, each taking one one-time key of each kind from `username`. */
async function drain(relay: FakeRelay, username: string, fetches: number): Promise<void> {
  if (!relay.accounts.has('drainer')) await relay.transport().register({ username: 'drainer', password: PASSWORD });
  const transport = relay.transport();
  for (let i = 0; i < fetches; i++) await transport.getPreKeyBundle('token:drainer:0', username);
}

describe('one-time prekey top-up', () => {
  it('uploads a fresh batch of each kind on a keys-low frame, enough to reach the threshold and at least a batch', async () => {
    const relay = new FakeRelay();
    const alice = client(relay, { oneTimePreKeyBatch: 5 });
    await alice.client.register('alice', PASSWORD);
    await alice.client.connect();
    // The first upload had 5 of each: on connect the relay says they run low.
    await until(() => relay.countOf('alice').preKeys >= PREKEY_LOW_THRESHOLD);
    const topUp = uploadsOf(relay, 'alice')[1]!;
    expect(topUp.preKeys).toHaveLength(PREKEY_LOW_THRESHOLD - 5);
    expect(topUp.kyberPreKeys).toHaveLength(PREKEY_LOW_THRESHOLD - 5);
    expect(topUp.signedPreKey).toBeUndefined();

    // Each fetch below the threshold sends keys-low; one fetch takes one of each kind.
    await drain(relay, 'alice', 1);
    await until(() => uploadsOf(relay, 'alice').length === 3);
    await until(() => relay.countOf('alice').preKeys === PREKEY_LOW_THRESHOLD - 1 + 5);
    expect(uploadsOf(relay, 'alice')[2]!.preKeys).toHaveLength(5);
    expect(alice.errors).toEqual([]);
    await alice.client.close();
  });

  it('tops up when login or resume finds refill in the count, and uploads nothing when the relay holds enough', async () => {
    const relay = new FakeRelay();
    const stores = createMemoryStores();
    await client(relay, {}, stores).client.register('alice', PASSWORD);
    await drain(relay, 'alice', 100 - PREKEY_LOW_THRESHOLD);
    const before = uploadsOf(relay, 'alice').length;

    await client(relay, {}, stores).client.resume();
    expect(uploadsOf(relay, 'alice').length).toBe(before);

    await drain(relay, 'alice', 1);
    await client(relay, {}, stores).client.resume();
    expect(uploadsOf(relay, 'alice').length).toBe(before + 1);
    expect(relay.countOf('alice')).toMatchObject({ preKeys: PREKEY_LOW_THRESHOLD - 1 + 100, refill: false });

    await drain(relay, 'alice', 100);
    await client(relay, {}, stores).client.login('alice', PASSWORD);
    expect(uploadsOf(relay, 'alice').length).toBe(before + 2);
    expect(relay.countOf('alice')).toMatchObject({ preKeys: PREKEY_LOW_THRESHOLD - 1 + 100, kyberPreKeys: PREKEY_LOW_THRESHOLD - 1 + 100 });
  });

  it('joins keys-low frames that arrive while a top-up waits: one count and one upload for a burst, not one per frame', async () => {
    const relay = new FakeRelay();
    const transport = relay.transport();
    let counts = 0;
    const counting = { ...transport, getPreKeyCount: (token: string) => (counts++, transport.getPreKeyCount(token)) };
    const alice = client(relay, { oneTimePreKeyBatch: 30, transport: counting });
    await alice.client.register('alice', PASSWORD);
    await alice.client.connect();
    await drain(relay, 'alice', 30 - PREKEY_LOW_THRESHOLD - 1);
    await until(() => counts === 1);
    // A burst of fetches, each sending keys-low (the count is below the threshold after each).
    const burst = 15;
    await Promise.all(Array.from({ length: burst }, () => transport.getPreKeyBundle('token:drainer:0', 'alice')));
    await until(() => relay.countOf('alice').refill === false);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(counts - 1).toBeLessThanOrEqual(2);
    expect(uploadsOf(relay, 'alice').length - 1).toBe(1);
    expect(alice.errors).toEqual([]);
    await alice.client.close();
  });
});

describe('signed prekey rotation', () => {
  it('defaults to Signal’s schedule: every 2 days, replaced keys kept 30 days', () => {
    expect(DEFAULT_KEY_ROTATION_INTERVAL_MS).toBe(2 * DAY);
    expect(DEFAULT_KEY_GRACE_PERIOD_MS).toBe(30 * DAY);
  });

  it('rotates the signed EC prekey and the Kyber last-resort prekey on start when due, and while connected by the timer', async () => {
    const relay = new FakeRelay();
    const clock = manualClock();
    const stores = createMemoryStores();
    const first = client(relay, { now: () => clock.now }, stores);
    await first.client.register('alice', PASSWORD);
    expect(signedUploads(relay, 'alice')).toHaveLength(1);

    clock.advance(DEFAULT_KEY_ROTATION_INTERVAL_MS - 1);
    const again = client(relay, { now: () => clock.now, keyMaintenanceIntervalMs: 10 }, stores);
    await again.client.resume();
    expect(signedUploads(relay, 'alice')).toHaveLength(1);

    clock.advance(1);
    const due = client(relay, { now: () => clock.now, keyMaintenanceIntervalMs: 10 }, stores);
    await due.client.resume();
    expect(signedUploads(relay, 'alice')).toHaveLength(2);
    const rotation = signedUploads(relay, 'alice')[1]!;
    // A rotation carries the signed pair only, both under new ids.
    expect(rotation.preKeys).toBeUndefined();
    expect(rotation.kyberLastResortPreKey).toBeDefined();
    expect(rotation.signedPreKey!.keyId).not.toBe(signedUploads(relay, 'alice')[0]!.signedPreKey!.keyId);

    await due.client.connect();
    for (let round = 3; round <= 5; round++) {
      clock.advance(DEFAULT_KEY_ROTATION_INTERVAL_MS);
      await until(() => signedUploads(relay, 'alice').length === round);
    }
    const state = await stores.metadata.getSignedKeysState();
    expect(state?.active?.signedPreKeyId).toBe(signedUploads(relay, 'alice')[4]!.signedPreKey!.keyId);
    expect(state?.pending).toBeNull();
    // The relay hands out the newest pair.
    expect(relay.accounts.get('alice')!.keys!.signedPreKey!.keyId).toBe(state?.active?.signedPreKeyId);
    expect(due.errors).toEqual([]);
    await due.client.close();
  });

  it('keeps replaced keys for the grace period after their replacement, then deletes them (never the active pair)', async () => {
    const relay = new FakeRelay();
    const clock = manualClock();
    const stores = createMemoryStores();
    const grace = 10 * DAY;
    const options = { now: () => clock.now, keyGracePeriodMs: grace };
    await client(relay, options, stores).client.register('alice', PASSWORD);
    const ids = async () => (await stores.signedPreKey.getSignedPreKeys()).map((r) => r.id()).sort((a, b) => a - b);
    const kyberIds = async () => (await stores.kyberPreKey.getLastResortKyberPreKeys()).map((r) => r.id()).sort((a, b) => a - b);
    const original = { signed: await ids(), kyber: await kyberIds() };
    expect(original.signed).toHaveLength(1);

    // Replaced at day 30 (left alone that long), so kept until day 40, not until day 10.
    clock.advance(30 * DAY);
    await client(relay, options, stores).client.resume();
    expect(await ids()).toHaveLength(2);
    clock.advance(grace - 1);
    await client(relay, { ...options, keyRotationIntervalMs: 100 * DAY }, stores).client.resume();
    expect(await ids()).toEqual(expect.arrayContaining(original.signed));
    clock.advance(1);
    await client(relay, { ...options, keyRotationIntervalMs: 100 * DAY }, stores).client.resume();
    const after = { signed: await ids(), kyber: await kyberIds() };
    expect(after.signed).toHaveLength(1);
    expect(after.signed).not.toContain(original.signed[0]);
    expect(after.kyber).toHaveLength(1);
    expect(after.kyber).not.toContain(original.kyber[0]);
    const active = (await stores.metadata.getSignedKeysState())!.active!;
    expect(after).toEqual({ signed: [active.signedPreKeyId], kyber: [active.kyberLastResortPreKeyId] });
  });

  it('uploads a pair whose upload failed again, the same pair, rather than making another', async () => {
    const relay = new FakeRelay();
    const clock = manualClock();
    const stores = createMemoryStores();
    const transport = relay.transport();
    let failUploads = 0;
    const flaky = {
      ...transport,
      uploadKeys: async (token: string, keys: UploadKeysRequest) => {
        if (failUploads > 0) {
          failUploads--;
          throw new SecureChatError(SecureChatErrorCode.Network, 'connection reset');
        }
        return transport.uploadKeys(token, keys);
      },
    };
    const make = () => client(relay, { now: () => clock.now, transport: flaky }, stores);
    await make().client.register('alice', PASSWORD);
    clock.advance(DEFAULT_KEY_ROTATION_INTERVAL_MS);
    failUploads = 1;
    await expect(make().client.resume()).rejects.toMatchObject({ code: SecureChatErrorCode.Network });
    const pending = (await stores.metadata.getSignedKeysState())!.pending!;
    expect(pending).not.toBeNull();

    await make().client.resume();
    const state = await stores.metadata.getSignedKeysState();
    expect(state).toEqual({ active: pending, pending: null });
    expect(signedUploads(relay, 'alice').at(-1)!.signedPreKey!.keyId).toBe(pending.signedPreKeyId);
    expect(await stores.signedPreKey.getSignedPreKeys()).toHaveLength(2);
  });

  it('decrypts a PreKey message built on the previous signed prekey inside the grace period, and not after (then session repair gets it resent)', async () => {
    const relay = new FakeRelay();
    const clock = manualClock(Date.now());
    const aliceStores = createMemoryStores();
    const grace = 5 * DAY;
    const aliceOptions = { now: () => clock.now, keyGracePeriodMs: grace };
    await client(relay, aliceOptions, aliceStores).client.register('alice', PASSWORD);
    const oldSigned = relay.accounts.get('alice')!.keys!.signedPreKey!.keyId;
    // Two peers fetch alice's bundle and write while she is offline: their PreKey messages name oldSigned.
    const bob = client(relay);
    await bob.client.register('bob', PASSWORD);
    const carol = client(relay);
    await carol.client.register('carol', PASSWORD);
    await bob.client.send('alice', 'in flight, within grace');
    await carol.client.send('alice', 'in flight, after grace');
    for (const { envelope } of relay.stored) {
      expect(envelope.type).toBe(EnvelopeType.PreKey);
      expect(PreKeySignalMessage.deserialize(new Uint8Array(Buffer.from(envelope.ciphertext, 'base64'))).signedPreKeyId()).toBe(oldSigned);
    }
    // Carol's message is held on the way, to arrive after the grace period.
    const aliceQueue = relay.accounts.get('alice')!;
    const held = aliceQueue.queue.find((envelope) => relay.stored.find((s) => s.envelope === envelope)?.from === 'carol')!;
    aliceQueue.queue = aliceQueue.queue.filter((envelope) => envelope !== held);

    clock.advance(DEFAULT_KEY_ROTATION_INTERVAL_MS);
    const alice = client(relay, aliceOptions, aliceStores);
    await alice.client.resume();
    expect(relay.accounts.get('alice')!.keys!.signedPreKey!.keyId).not.toBe(oldSigned);
    const inbox = new MessageCollector(alice.client);
    await alice.client.connect();
    expect((await inbox.next()).text).toBe('in flight, within grace');
    await alice.client.close();
    expect((await aliceStores.signedPreKey.getSignedPreKey(oldSigned)).id()).toBe(oldSigned);

    clock.advance(grace);
    const later = client(relay, aliceOptions, aliceStores);
    await later.client.resume();
    await expect(aliceStores.signedPreKey.getSignedPreKey(oldSigned)).rejects.toMatchObject({ code: SecureChatErrorCode.RecordNotFound });
    const resets: SessionReset[] = [];
    later.client.on(ChatEvent.SessionReset, (reset) => void resets.push(reset));
    const laterInbox = new MessageCollector(later.client);
    await carol.client.connect();
    await later.client.connect();
    relay.deliver('alice', held);
    // It did not decrypt: alice asked carol to start over, and carol's resend on the new session arrived.
    expect((await laterInbox.next()).text).toBe('in flight, after grace');
    expect(resets).toEqual([{ peer: 'carol', device: 1, reason: SessionResetReason.UnknownPreKey, initiator: 'local' }]);
    expect(relay.acked).toContain(held.id);
    expect(later.errors).toEqual([]);
    await later.client.close();
    await carol.client.close();
  });

  it('never reuses a key id: across the first upload, top-ups and rotations, and after a restore from backup', async () => {
    const relay = new FakeRelay();
    const clock = manualClock();
    const stores = createMemoryStores();
    const options = { now: () => clock.now, oneTimePreKeyBatch: 10 };
    const alice = client(relay, options, stores);
    await alice.client.register('alice', PASSWORD);
    for (let round = 0; round < 5; round++) {
      await drain(relay, 'alice', 10);
      clock.advance(DEFAULT_KEY_ROTATION_INTERVAL_MS);
      await client(relay, options, stores).client.resume();
    }
    const secret = generateRecoverySecret();
    await alice.client.createBackup(secret);
    // The old install goes on after the backup: more top-ups and a rotation the backup does not know of.
    await drain(relay, 'alice', 10);
    clock.advance(DEFAULT_KEY_ROTATION_INTERVAL_MS);
    await client(relay, options, stores).client.resume();
    const beforeRestore = uploadsOf(relay, 'alice');

    const restored = client(relay, options);
    await restored.client.restoreFromBackup('alice', PASSWORD, secret);
    await drain(relay, 'alice', 10);
    clock.advance(DEFAULT_KEY_ROTATION_INTERVAL_MS);
    await client(relay, options, restored.stores).client.resume();
    const all = uploadsOf(relay, 'alice');
    expect(all.length).toBeGreaterThan(beforeRestore.length + 1);

    const kinds = {
      preKeys: idsOf(all, (u) => u.preKeys),
      signed: idsOf(all, (u) => (u.signedPreKey ? [u.signedPreKey] : [])),
      // One-time and last-resort Kyber keys share one id space.
      kyber: idsOf(all, (u) => [...(u.kyberPreKeys ?? []), ...(u.kyberLastResortPreKey ? [u.kyberLastResortPreKey] : [])]),
    };
    expect(signedUploads(relay, 'alice').length).toBe(1 + 5 + 1 + 1 + 1);
    for (const ids of Object.values(kinds)) expect(new Set(ids).size).toBe(ids.length);
  });

  it('deletes one-time EC and Kyber prekeys as soon as a PreKey message consumed them, and keeps the signed pair', async () => {
    const relay = new FakeRelay();
    const alice = client(relay);
    await alice.client.register('alice', PASSWORD);
    const bob = client(relay);
    await bob.client.register('bob', PASSWORD);
    const handedOut = relay.accounts.get('alice')!.keys!;
    const preKeyId = handedOut.preKeys![0]!.keyId;
    const kyberId = handedOut.kyberPreKeys![0]!.keyId;
    expect((await alice.stores.preKey.getPreKey(preKeyId)).id()).toBe(preKeyId);
    expect((await alice.stores.kyberPreKey.getKyberPreKey(kyberId)).id()).toBe(kyberId);

    const inbox = new MessageCollector(alice.client);
    await alice.client.connect();
    await bob.client.send('alice', 'first');
    expect((await inbox.next()).text).toBe('first');
    await expect(alice.stores.preKey.getPreKey(preKeyId)).rejects.toMatchObject({ code: SecureChatErrorCode.RecordNotFound });
    await expect(alice.stores.kyberPreKey.getKyberPreKey(kyberId)).rejects.toMatchObject({ code: SecureChatErrorCode.RecordNotFound });
    expect((await alice.stores.preKey.getPreKey(handedOut.preKeys![1]!.keyId)).id()).toBe(handedOut.preKeys![1]!.keyId);
    expect((await alice.stores.signedPreKey.getSignedPreKey(handedOut.signedPreKey!.keyId)).id()).toBe(handedOut.signedPreKey!.keyId);
    await alice.client.close();
  });

  it('refuses key schedule options that are not positive integers', () => {
    for (const option of ['keyRotationIntervalMs', 'keyGracePeriodMs', 'keyMaintenanceIntervalMs'] as const) {
      for (const value of [0, -1, 1.5, Number.NaN]) {
        expect(() => SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', [option]: value })).toThrow(
          expect.objectContaining({ code: SecureChatErrorCode.InvalidOptions }),
        );
      }
    }
  });
});

import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import {
  CiphertextMessageType,
  PreKeySignalMessage,
  ProtocolAddress,
  processPreKeyBundle,
  signalDecryptPreKey,
  signalEncrypt,
} from '@signalapp/libsignal-client';
import {
  BUNDLE_FETCH_PAIR_WINDOW_SECONDS,
  BUNDLE_FETCHES_PER_PAIR,
  ErrorCode,
  type AuthResponse,
  type PreKeyBundleResponse,
} from '@chat/protocol';
import { DeviceKeys, preKeyBundleOf } from './support/libsignal-keys.js';
import { httpJson, registerKeyedUser, type RelayEnvOverrides, startTestRelay, uniqueUsername } from './support/test-relay.js';

/** A relay, and helpers bound to it. */
async function relayWith(overrides: RelayEnvOverrides) {
  const relay = await startTestRelay(overrides);
  const keyedUser = async (prefix: string, options: ConstructorParameters<typeof DeviceKeys>[0] = {}) => {
    return registerKeyedUser(relay, prefix, new DeviceKeys(options));
  };
  const fetchBundle = (username: string, by: AuthResponse) =>
    httpJson<PreKeyBundleResponse>(relay, 'GET', `/v1/keys/${username}`, { token: by.accessToken });
  const count = async (user: AuthResponse) => (await httpJson(relay, 'GET', '/v1/keys', { token: user.accessToken })).body;
  return { relay, keyedUser, fetchBundle, count };
}

/** The refusal as the wire carries it: status, code, and the same whole seconds in the header and the body. */
function expectRateLimited(answer: { status: number; body: { code?: string; retryAfter?: number }; headers: Headers }, windowSeconds: number) {
  expect([answer.status, answer.body.code]).toEqual([429, ErrorCode.RateLimited]);
  const retryAfter = answer.body.retryAfter!;
  expect(Number.isInteger(retryAfter)).toBe(true);
  expect(retryAfter).toBeGreaterThanOrEqual(1);
  expect(retryAfter).toBeLessThanOrEqual(windowSeconds);
  expect(answer.headers.get('retry-after')).toBe(String(retryAfter));
  return retryAfter;
}

describe('bundle fetch limits with the default limits (e2e)', () => {
  let env: Awaited<ReturnType<typeof relayWith>>;

  beforeAll(async () => {
    // '' is unset: the relay's own defaults, the protocol's constants.
    env = await relayWith({ BUNDLE_FETCHES_PER_PAIR: '', BUNDLE_FETCHES_PER_REQUESTER: '' });
  });

  afterAll(async () => {
    await env?.relay.close();
  });

  it(`refuses a requester's ${BUNDLE_FETCHES_PER_PAIR + 1}th fetch of one target with 429 RATE_LIMITED and Retry-After while the target still has one-time keys`, async () => {
    const { user: target } = await env.keyedUser('target', { preKeys: 10, kyberPreKeys: 10 });
    const { user: hammer } = await env.keyedUser('hammer');
    for (let i = 0; i < BUNDLE_FETCHES_PER_PAIR; i++) {
      const fetched = await env.fetchBundle(target.username, hammer);
      expect(fetched.status).toBe(200);
      expect(fetched.body.devices[0]!.preKey).not.toBeNull();
    }
    const refused = await env.fetchBundle(target.username, hammer);
    expectRateLimited(refused, BUNDLE_FETCH_PAIR_WINDOW_SECONDS);
    expect(refused.body).toEqual({ code: ErrorCode.RateLimited, message: expect.any(String), retryAfter: refused.body.retryAfter });

    // The refusal claimed nothing, and another requester still gets a one-time key.
    expect(await env.count(target)).toMatchObject({ preKeys: 10 - BUNDLE_FETCHES_PER_PAIR, kyberPreKeys: 10 - BUNDLE_FETCHES_PER_PAIR });
    const { user: friend } = await env.keyedUser('friend');
    const fetched = await env.fetchBundle(target.username.toUpperCase(), friend);
    expect(fetched.status).toBe(200);
    expect(fetched.body.devices[0]!.preKey).not.toBeNull();
    // The same target in another case is the same pair.
    expectRateLimited(await env.fetchBundle(target.username.toUpperCase(), hammer), BUNDLE_FETCH_PAIR_WINDOW_SECONDS);
  });

  it('lets many requesters drain the one-time keys, and the later ones still form a session through the last-resort Kyber key', async () => {
    const { user: bob, keys: bobKeys } = await env.keyedUser('popular', { preKeys: 3, kyberPreKeys: 3 });
    const requesters = await Promise.all(Array.from({ length: 5 }, () => env.keyedUser('requester')));
    const bundles: PreKeyBundleResponse[] = [];
    for (const { user } of requesters) {
      const fetched = await env.fetchBundle(bob.username, user);
      expect(fetched.status).toBe(200);
      bundles.push(fetched.body);
    }
    const lastResortId = bobKeys.kyberLastResort.id();
    expect(bundles.map((bundle) => [bundle.devices[0]!.preKey !== null, bundle.devices[0]!.kyberPreKey.keyId === lastResortId])).toEqual([
      [true, false],
      [true, false],
      [true, false],
      [false, true],
      [false, true],
    ]);

    const last = requesters[4]!;
    const device = bundles[4]!.devices[0]!;
    const lastStores = last.keys.stores();
    const lastAddress = ProtocolAddress.new(last.user.username, 1);
    const bobAddress = ProtocolAddress.new(bob.username, device.deviceId);
    await processPreKeyBundle(preKeyBundleOf(bundles[4]!.identityKey, device), bobAddress, lastAddress, lastStores.sessions, lastStores.identities);
    const ciphertext = await signalEncrypt(new TextEncoder().encode('still private'), bobAddress, lastAddress, lastStores.sessions, lastStores.identities);
    expect(ciphertext.type()).toBe(CiphertextMessageType.PreKey);
    const bobStores = bobKeys.stores();
    const plaintext = await signalDecryptPreKey(
      PreKeySignalMessage.deserialize(ciphertext.serialize()),
      lastAddress,
      bobAddress,
      bobStores.sessions,
      bobStores.identities,
      bobStores.preKeys,
      bobStores.signed,
      bobStores.kyber,
    );
    expect(new TextDecoder().decode(plaintext)).toBe('still private');
  });
});

describe('bundle fetch limits set tight (e2e)', () => {
  const PAIR_WINDOW_SECONDS = 2;
  const PER_REQUESTER = 4;
  let env: Awaited<ReturnType<typeof relayWith>>;

  beforeAll(async () => {
    env = await relayWith({
      BUNDLE_FETCHES_PER_PAIR: '1',
      BUNDLE_FETCH_PAIR_WINDOW_SECONDS: String(PAIR_WINDOW_SECONDS),
      BUNDLE_FETCHES_PER_REQUESTER: String(PER_REQUESTER),
      BUNDLE_FETCH_REQUESTER_WINDOW_SECONDS: '3600',
    });
  });

  afterAll(async () => {
    await env?.relay.close();
  });

  it('refuses a requester over its limit across targets; other requesters still fetch those targets', async () => {
    const targets = await Promise.all(Array.from({ length: PER_REQUESTER + 1 }, () => env.keyedUser('target', { preKeys: 2 })));
    const { user: collector } = await env.keyedUser('collector');
    for (const { user } of targets.slice(0, PER_REQUESTER)) expect((await env.fetchBundle(user.username, collector)).status).toBe(200);
    const last = targets[PER_REQUESTER]!.user;
    const retryAfter = expectRateLimited(await env.fetchBundle(last.username, collector), 3600);
    expect(retryAfter).toBeGreaterThan(3500);
    expect(await env.count(last)).toMatchObject({ preKeys: 2 });

    const { user: other } = await env.keyedUser('other');
    expect((await env.fetchBundle(last.username, other)).status).toBe(200);
  });

  it('counts a fetch that fails too, and serves the pair again once Retry-After has passed', async () => {
    const { user: target } = await env.keyedUser('target', { preKeys: 2 });
    const { user: requester } = await env.keyedUser('patient');
    expect((await env.fetchBundle(target.username, requester)).status).toBe(200);
    const retryAfter = expectRateLimited(await env.fetchBundle(target.username, requester), PAIR_WINDOW_SECONDS);

    const ghost = uniqueUsername('ghost');
    expect((await env.fetchBundle(ghost, requester)).body.code).toBe(ErrorCode.UnknownRecipient);
    expect((await env.fetchBundle(ghost, requester)).body.code).toBe(ErrorCode.RateLimited);

    await new Promise((resolve) => setTimeout(resolve, retryAfter * 1000 + 100));
    const again = await env.fetchBundle(target.username, requester);
    expect(again.status).toBe(200);
    expect(again.body.devices[0]!.preKey).not.toBeNull();
  });
});

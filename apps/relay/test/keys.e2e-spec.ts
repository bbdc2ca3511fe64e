import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import {
  CiphertextMessageType,
  IdentityKeyPair,
  PreKeySignalMessage,
  ProtocolAddress,
  processPreKeyBundle,
  signalDecryptPreKey,
  signalEncrypt,
} from '@signalapp/libsignal-client';
import { ErrorCode, MAX_PREKEYS_PER_UPLOAD, PREKEY_LOW_THRESHOLD, type AuthResponse, type PreKeyBundleResponse } from '@chat/protocol';
import { DeviceKeys, preKeyBundleOf } from './support/libsignal-keys.js';
import { httpJson, registerUser, startTestRelay, uniqueUsername, type TestRelay } from './support/test-relay.js';

const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');
/** A 64-byte signature of the right shape that no identity key made. */
const forgedSignature = () => b64(IdentityKeyPair.generate().privateKey.sign(new Uint8Array([1, 2, 3])));

describe('keys (e2e)', () => {
  let relay: TestRelay;
  let fetcher: AuthResponse;

  beforeAll(async () => {
    relay = await startTestRelay();
    fetcher = await registerUser(relay, uniqueUsername('fetcher'));
  });

  afterAll(async () => {
    await relay?.close();
  });

  const upload = (user: AuthResponse, body: unknown) => httpJson(relay, 'PUT', '/v1/keys', { token: user.accessToken, body });
  const count = (user: AuthResponse) => httpJson(relay, 'GET', '/v1/keys', { token: user.accessToken });
  const fetchBundle = (username: string, by: AuthResponse = fetcher) =>
    httpJson<PreKeyBundleResponse>(relay, 'GET', `/v1/keys/${username}`, { token: by.accessToken });

  async function userWithKeys(options: ConstructorParameters<typeof DeviceKeys>[0]) {
    const user = await registerUser(relay, uniqueUsername('keys'));
    const keys = new DeviceKeys(options);
    const { status, body } = await upload(user, keys.uploadRequest());
    expect({ status, body }).toEqual({ status: 204, body: undefined });
    return { user, keys };
  }

  it('stores an upload, counts its one-time keys and hands out a bundle of the uploaded keys', async () => {
    const { user, keys } = await userWithKeys({ preKeys: 3, kyberPreKeys: 2 });
    expect((await count(user)).body).toMatchObject({ preKeys: 3, kyberPreKeys: 2 });

    const { status, body } = await fetchBundle(user.username.toUpperCase());
    expect(status).toBe(200);
    const request = keys.uploadRequest();
    expect(body).toEqual({
      username: user.username,
      accountId: user.accountId,
      identityKey: request.identityKey,
      devices: [
        {
          deviceId: 1,
          registrationId: keys.registrationId,
          signedPreKey: request.signedPreKey,
          preKey: request.preKeys?.[0],
          kyberPreKey: request.kyberPreKeys?.[0],
        },
      ],
    });
    expect((await count(user)).body).toMatchObject({ preKeys: 2, kyberPreKeys: 1 });
  });

  it.each([
    ['the signed prekey', (request: ReturnType<DeviceKeys['uploadRequest']>) => (request.signedPreKey!.signature = forgedSignature())],
    ['the Kyber last-resort prekey', (request: ReturnType<DeviceKeys['uploadRequest']>) => (request.kyberLastResortPreKey!.signature = forgedSignature())],
    ['one one-time Kyber prekey', (request: ReturnType<DeviceKeys['uploadRequest']>) => (request.kyberPreKeys![2]!.signature = forgedSignature())],
  ])('refuses a bad signature on %s with INVALID_SIGNATURE and stores nothing', async (_what, forge) => {
    const user = await registerUser(relay, uniqueUsername('forger'));
    const request = new DeviceKeys({ preKeys: 2, kyberPreKeys: 3 }).uploadRequest();
    forge(request);
    const { status, body } = await upload(user, request);
    expect(status).toBe(400);
    expect(body.code).toBe(ErrorCode.InvalidSignature);
    expect((await count(user)).body).toMatchObject({ preKeys: 0, kyberPreKeys: 0 });
    const [account] = await relay.sql<{ identity_key: Uint8Array | null }>(
      'SELECT identity_key FROM accounts WHERE id = $1::uuid',
      user.accountId,
    );
    expect(account?.identity_key).toBeNull();
    expect((await fetchBundle(user.username)).body.code).toBe(ErrorCode.UnknownRecipient);
  });

  describe('rotation of the signed prekey and the last-resort Kyber key', () => {
    /** The same device's next signed prekey and last-resort Kyber key, signed by its identity key. */
    const rotationOf = (keys: DeviceKeys) =>
      new DeviceKeys({ identity: keys.identity, registrationId: keys.registrationId, signedPreKeyId: 2, firstKeyId: 5000 });
    const rotationRequest = (keys: DeviceKeys, rotated: DeviceKeys) => {
      const { signedPreKey, kyberLastResortPreKey } = rotated.uploadRequest();
      return { identityKey: keys.uploadRequest().identityKey, registrationId: keys.registrationId, signedPreKey, kyberLastResortPreKey };
    };

    it('replaces what bundles hand out, keeps the one-time keys, and sessions form on the new keys', async () => {
      const { user: bob, keys } = await userWithKeys({ preKeys: 2 });
      const rotated = rotationOf(keys);
      expect(await upload(bob, rotationRequest(keys, rotated))).toMatchObject({ status: 204 });
      expect((await count(bob)).body).toMatchObject({ preKeys: 2, kyberPreKeys: 0 });

      const { body } = await fetchBundle(bob.username);
      const device = body.devices[0]!;
      expect(device.signedPreKey).toEqual(rotated.uploadRequest().signedPreKey);
      expect(device.kyberPreKey).toEqual(rotated.uploadRequest().kyberLastResortPreKey);
      expect(device.preKey).toEqual(keys.uploadRequest().preKeys![0]);
      expect(device.signedPreKey.keyId).not.toBe(keys.signedPreKey.id());

      const alice = new DeviceKeys();
      const aliceStores = alice.stores();
      const aliceAddress = ProtocolAddress.new('alice', 1);
      const bobAddress = ProtocolAddress.new(bob.username, 1);
      await processPreKeyBundle(preKeyBundleOf(body.identityKey, device), bobAddress, aliceAddress, aliceStores.sessions, aliceStores.identities);
      const ciphertext = await signalEncrypt(new TextEncoder().encode('after rotation'), bobAddress, aliceAddress, aliceStores.sessions, aliceStores.identities);
      // Bob's install after the rotation: the new signed and last-resort keys, the one-time keys it still has.
      const bobStores = rotated.stores();
      for (const preKey of keys.preKeys) await bobStores.preKeys.savePreKey(preKey.id(), preKey);
      const plaintext = await signalDecryptPreKey(
        PreKeySignalMessage.deserialize(ciphertext.serialize()),
        aliceAddress,
        bobAddress,
        bobStores.sessions,
        bobStores.identities,
        bobStores.preKeys,
        bobStores.signed,
        bobStores.kyber,
      );
      expect(new TextDecoder().decode(plaintext)).toBe('after rotation');
    });

    it.each([
      ['signed prekey', 'signedPreKey'],
      ['last-resort Kyber key', 'kyberLastResortPreKey'],
    ] as const)('refuses a %s not signed by the identity key with INVALID_SIGNATURE and changes nothing', async (_what, field) => {
      const { user: bob, keys } = await userWithKeys({ preKeys: 2, kyberPreKeys: 1 });
      const before = (await fetchBundle(bob.username)).body.devices[0]!;
      const request = rotationRequest(keys, rotationOf(keys));
      // Well formed and signed, but by another identity key than the account's.
      const stranger = new DeviceKeys({ signedPreKeyId: 2, firstKeyId: 5000 }).uploadRequest();
      request[field] = stranger[field] as never;
      const refused = await upload(bob, request);
      expect([refused.status, refused.body.code, refused.body.details]).toEqual([400, ErrorCode.InvalidSignature, [field]]);

      expect((await count(bob)).body).toMatchObject({ preKeys: 1, kyberPreKeys: 0 });
      const after = (await fetchBundle(bob.username)).body.devices[0]!;
      expect(after.signedPreKey).toEqual(before.signedPreKey);
      expect(after.signedPreKey).toEqual(keys.uploadRequest().signedPreKey);
      expect(after.kyberPreKey).toEqual(keys.uploadRequest().kyberLastResortPreKey);
    });
  });

  it('refuses a key of the wrong length with VALIDATION_FAILED and a 33-byte non-key with INVALID_KEY', async () => {
    const user = await registerUser(relay, uniqueUsername('garbage'));
    const keys = new DeviceKeys({ preKeys: 1 });

    const wrongLength = keys.uploadRequest();
    wrongLength.preKeys![0]!.publicKey = b64(new Uint8Array(32).fill(5));
    const tooShort = await upload(user, wrongLength);
    expect(tooShort.status).toBe(400);
    expect(tooShort.body.code).toBe(ErrorCode.ValidationFailed);
    expect(tooShort.body.details.join('\n')).toContain('preKeys[0].publicKey');

    const notAKey = keys.uploadRequest();
    notAKey.identityKey = b64(new Uint8Array(33).fill(0x42)); // 0x42 is no key type
    const garbage = await upload(user, notAKey);
    expect(garbage.status).toBe(400);
    expect(garbage.body.code).toBe(ErrorCode.InvalidKey);
    expect((await count(user)).body).toMatchObject({ preKeys: 0, kyberPreKeys: 0 });
  });

  it('refuses more than the maximum of one-time prekeys in one upload', async () => {
    const user = await registerUser(relay, uniqueUsername('greedy'));
    const request = new DeviceKeys({ preKeys: MAX_PREKEYS_PER_UPLOAD + 1 }).uploadRequest();
    const { status, body } = await upload(user, request);
    expect(status).toBe(400);
    expect(body.code).toBe(ErrorCode.ValidationFailed);
  });

  it('requires the signed and last-resort prekeys on the first upload only', async () => {
    const user = await registerUser(relay, uniqueUsername('partial'));
    const keys = new DeviceKeys({ preKeys: 2 });
    const { signedPreKey: _signed, kyberLastResortPreKey: _lastResort, ...onlyOneTime } = keys.uploadRequest();
    const first = await upload(user, onlyOneTime);
    expect(first.status).toBe(400);
    expect(first.body).toMatchObject({ code: ErrorCode.KeysIncomplete, details: ['signedPreKey', 'kyberLastResortPreKey'] });

    expect((await upload(user, keys.uploadRequest())).status).toBe(204);
    const more = new DeviceKeys({ preKeys: 1, firstKeyId: 500 }).uploadRequest();
    const refill = await upload(user, { identityKey: onlyOneTime.identityKey, registrationId: keys.registrationId, preKeys: more.preKeys });
    expect(refill.status).toBe(204);
    expect((await count(user)).body).toMatchObject({ preKeys: 3, kyberPreKeys: 0 });
  });

  it('keeps the identity key once set: another one is IDENTITY_KEY_MISMATCH', async () => {
    const { user } = await userWithKeys({ preKeys: 1 });
    const { status, body } = await upload(user, new DeviceKeys({ preKeys: 1, firstKeyId: 900 }).uploadRequest());
    expect(status).toBe(409);
    expect(body.code).toBe(ErrorCode.IdentityKeyMismatch);
    expect((await count(user)).body).toMatchObject({ preKeys: 1, kyberPreKeys: 0 });
  });

  it('refuses a prekey id repeated in one upload or already stored with DUPLICATE_KEY_ID', async () => {
    const { user, keys } = await userWithKeys({ preKeys: 2 });
    const again = await upload(user, keys.uploadRequest());
    expect(again.status).toBe(409);
    expect(again.body.code).toBe(ErrorCode.DuplicateKeyId);

    const repeated = new DeviceKeys({ preKeys: 1 }).uploadRequest();
    const twice = { ...keys.uploadRequest(), preKeys: [...repeated.preKeys!, ...repeated.preKeys!] };
    twice.preKeys = twice.preKeys.map((key) => ({ ...key, keyId: 700 }));
    const inBatch = await upload(user, twice);
    expect(inBatch.status).toBe(409);
    expect(inBatch.body.code).toBe(ErrorCode.DuplicateKeyId);
    expect((await count(user)).body).toMatchObject({ preKeys: 2, kyberPreKeys: 0 });
  });

  it('replaceOneTimePreKeys deletes the stored one-time keys before storing the batch: old ids may return, old keys are never handed out', async () => {
    const { user, keys } = await userWithKeys({ preKeys: 3, kyberPreKeys: 3 });
    // A restored install: same identity, none of the private halves, ids that overlap the stored ones.
    const restored = new DeviceKeys({
      identity: keys.identity,
      registrationId: keys.registrationId,
      preKeys: 2,
      kyberPreKeys: 2,
      firstKeyId: 101,
    });
    const request = restored.uploadRequest();
    expect((await upload(user, request)).body.code).toBe(ErrorCode.DuplicateKeyId);

    expect(await upload(user, { ...request, replaceOneTimePreKeys: true })).toMatchObject({ status: 204 });
    expect((await count(user)).body).toMatchObject({ preKeys: 2, kyberPreKeys: 2 });
    const handedOut = [];
    for (let i = 0; i < 3; i++) handedOut.push((await fetchBundle(user.username)).body.devices[0]!);
    expect(handedOut.map((device) => device.preKey)).toEqual([...request.preKeys!, null]);
    expect(handedOut.map((device) => device.kyberPreKey)).toEqual([...request.kyberPreKeys!, request.kyberLastResortPreKey]);
    expect(handedOut.every((device) => device.signedPreKey.publicKey === request.signedPreKey!.publicKey)).toBe(true);
  });

  it('keeps the stored one-time keys when a replacing upload is refused, and refuses a non-boolean flag', async () => {
    const { user } = await userWithKeys({ preKeys: 2, kyberPreKeys: 1 });
    const stranger = new DeviceKeys({ preKeys: 1, firstKeyId: 500 }).uploadRequest();
    const mismatch = await upload(user, { ...stranger, replaceOneTimePreKeys: true });
    expect(mismatch.body.code).toBe(ErrorCode.IdentityKeyMismatch);
    const notBoolean = await upload(user, { ...stranger, replaceOneTimePreKeys: 'yes' });
    expect(notBoolean.body.code).toBe(ErrorCode.ValidationFailed);
    expect(notBoolean.body.details).toEqual([expect.stringMatching(/^replaceOneTimePreKeys: /)]);
    expect((await count(user)).body).toMatchObject({ preKeys: 2, kyberPreKeys: 1 });
  });

  it('hands every one-time prekey out exactly once to 20 concurrent fetches, then the last-resort Kyber key', async () => {
    const { user, keys } = await userWithKeys({ preKeys: 12, kyberPreKeys: 12 });
    const bundles = await Promise.all(Array.from({ length: 20 }, () => fetchBundle(user.username)));
    expect(bundles.every((bundle) => bundle.status === 200)).toBe(true);
    const devices = bundles.map((bundle) => bundle.body.devices[0]!);

    const ecIds = devices.flatMap((device) => (device.preKey ? [device.preKey.keyId] : []));
    expect(ecIds).toHaveLength(12);
    expect(new Set(ecIds)).toEqual(new Set(keys.preKeys.map((key) => key.id())));
    expect(devices.filter((device) => device.preKey === null)).toHaveLength(8);

    const lastResortId = keys.kyberLastResort.id();
    const oneTimeKyberIds = devices.map((device) => device.kyberPreKey.keyId).filter((id) => id !== lastResortId);
    expect(oneTimeKyberIds).toHaveLength(12);
    expect(new Set(oneTimeKyberIds)).toEqual(new Set(keys.kyberPreKeys.map((key) => key.id())));
    expect(devices.filter((device) => device.kyberPreKey.keyId === lastResortId)).toHaveLength(8);

    expect((await count(user)).body).toMatchObject({ preKeys: 0, kyberPreKeys: 0 });
    const lastResort = keys.uploadRequest().kyberLastResortPreKey;
    for (let i = 0; i < 2; i++) expect((await fetchBundle(user.username)).body.devices[0]?.kyberPreKey).toEqual(lastResort);
  });

  it('hands out a bundle with only the last-resort Kyber key that opens a session the owner can decrypt', async () => {
    const { user: bob, keys: bobKeys } = await userWithKeys({});
    const { body } = await fetchBundle(bob.username);
    const device = body.devices[0]!;
    expect(device.preKey).toBeNull();
    expect(device.kyberPreKey.keyId).toBe(bobKeys.kyberLastResort.id());

    const alice = new DeviceKeys();
    const aliceStores = alice.stores();
    const aliceAddress = ProtocolAddress.new('alice', 1);
    const bobAddress = ProtocolAddress.new(bob.username, device.deviceId);
    await processPreKeyBundle(preKeyBundleOf(body.identityKey, device), bobAddress, aliceAddress, aliceStores.sessions, aliceStores.identities);
    const plaintext = new TextEncoder().encode('hello over PQXDH');
    const ciphertext = await signalEncrypt(plaintext, bobAddress, aliceAddress, aliceStores.sessions, aliceStores.identities);
    expect(ciphertext.type()).toBe(CiphertextMessageType.PreKey);

    const bobStores = bobKeys.stores();
    const decrypted = await signalDecryptPreKey(
      PreKeySignalMessage.deserialize(ciphertext.serialize()),
      aliceAddress,
      bobAddress,
      bobStores.sessions,
      bobStores.identities,
      bobStores.preKeys,
      bobStores.signed,
      bobStores.kyber,
    );
    expect(new TextDecoder().decode(decrypted)).toBe('hello over PQXDH');
  });

  it('answers UNKNOWN_RECIPIENT for an unknown user and for one without keys', async () => {
    expect((await fetchBundle(uniqueUsername('nobody'))).body.code).toBe(ErrorCode.UnknownRecipient);
    const keyless = await registerUser(relay, uniqueUsername('keyless'));
    const { status, body } = await fetchBundle(keyless.username);
    expect(status).toBe(404);
    expect(body.code).toBe(ErrorCode.UnknownRecipient);
  });

  it("does not hand a device its own keys: its own account's bundle has its other devices only", async () => {
    const { user } = await userWithKeys({ preKeys: 1 });
    const { status, body } = await fetchBundle(user.username, user);
    expect(status).toBe(404);
    expect(body.code).toBe(ErrorCode.UnknownRecipient);
    expect((await count(user)).body).toMatchObject({ preKeys: 1, kyberPreKeys: 0 });
  });

  it('serves the bundle of a user whose name is also a word of the keys API', async () => {
    const user = await registerUser(relay, 'count');
    await upload(user, new DeviceKeys({ preKeys: 1, kyberPreKeys: 1 }).uploadRequest());
    const { status, body } = await fetchBundle('count');
    expect(status).toBe(200);
    expect(body.username).toBe('count');
  });

  it('says in the count when the device should upload more one-time prekeys', async () => {
    const { user } = await userWithKeys({ preKeys: PREKEY_LOW_THRESHOLD, kyberPreKeys: PREKEY_LOW_THRESHOLD });
    expect((await count(user)).body).toEqual({
      preKeys: PREKEY_LOW_THRESHOLD,
      kyberPreKeys: PREKEY_LOW_THRESHOLD,
      threshold: PREKEY_LOW_THRESHOLD,
      refill: false,
    });
    await fetchBundle(user.username);
    expect((await count(user)).body).toMatchObject({ preKeys: PREKEY_LOW_THRESHOLD - 1, refill: true });
  });

  it('requires a token', async () => {
    const { status, body } = await httpJson(relay, 'GET', '/v1/keys');
    expect(status).toBe(401);
    expect(body.code).toBe(ErrorCode.AuthenticationRequired);
  });
});

import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { IdentityKeyPair, PrivateKey, PublicKey } from '@signalapp/libsignal-client';
import {
  CloseCode,
  ErrorCode,
  MAX_PROVISIONING_MESSAGE_BYTES,
  PROVISIONING_TTL_SECONDS,
  ServerFrameType,
  type AuthResponse,
  type ListDevicesResponse,
  type ProvisioningMessageResponse,
  type ProvisioningSlotResponse,
} from '@chat/protocol';
import { Clock } from '../src/common/clock.js';
import { DevicesModule } from '../src/devices/devices.module.js';
import { DeviceKeys } from './support/libsignal-keys.js';
import {
  DEFAULT_TEST_PASSWORD,
  httpJson,
  registerUser,
  startTestRelay,
  uniqueUsername,
  type TestRelay,
} from './support/test-relay.js';
import { connectWs, refusedUpgrade, waitForClose, waitForFrame } from './support/ws-client.js';

/** What the SDK seals for the new device (docs/protocol.md, "Devices"). */
const PROVISIONING_INFO = 'SecureChat provisioning v1';
const MAX_DEVICES = 3;

const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');
const utf8 = (text: string) => new Uint8Array(Buffer.from(text, 'utf8'));

interface ProvisioningPayload {
  version: number;
  username: string;
  identityPublicKey: string;
  identityPrivateKey: string;
}

/** The new device's side of a link: a slot and the ephemeral key pair whose public half it shows (QR code). */
interface NewDevice {
  slot: ProvisioningSlotResponse;
  ephemeral: PrivateKey;
}

describe('devices and linking (e2e)', () => {
  let relay: TestRelay;

  const createSlot = async (): Promise<NewDevice> => {
    const { status, body } = await httpJson<ProvisioningSlotResponse>(relay, 'POST', '/v1/provisioning');
    expect(status).toBe(201);
    return { slot: body, ephemeral: PrivateKey.generate() };
  };
  /** The approver seals its identity key pair to the new device's ephemeral key, bound to the slot id. */
  const sealFor = (device: NewDevice, username: string, identity: IdentityKeyPair): Uint8Array<ArrayBuffer> => {
    const payload: ProvisioningPayload = {
      version: 1,
      username,
      identityPublicKey: b64(identity.publicKey.serialize()),
      identityPrivateKey: b64(identity.privateKey.serialize()),
    };
    return device.ephemeral.getPublicKey().seal(utf8(JSON.stringify(payload)), PROVISIONING_INFO, utf8(device.slot.id));
  };
  const approve = (approver: AuthResponse, slotId: string, message: string | Uint8Array<ArrayBuffer>) =>
    httpJson(relay, 'PUT', `/v1/provisioning/${slotId}`, {
      token: approver.accessToken,
      body: { message: typeof message === 'string' ? message : b64(message) },
    });
  const receive = (slotId: string, secret: string) =>
    httpJson<ProvisioningMessageResponse>(relay, 'POST', `/v1/provisioning/${slotId}/receive`, { body: { secret } });
  const link = (provisioningId: string, secret: string) =>
    httpJson<AuthResponse>(relay, 'POST', '/v1/devices/link', { body: { provisioningId, secret } });
  const listDevices = async (user: AuthResponse) => {
    const { status, body } = await httpJson<ListDevicesResponse>(relay, 'GET', '/v1/devices', { token: user.accessToken });
    expect(status).toBe(200);
    return body.devices;
  };
  const unlink = (by: AuthResponse, deviceId: number | string) =>
    httpJson(relay, 'DELETE', `/v1/devices/${deviceId}`, { token: by.accessToken });
  const me = (user: AuthResponse) => httpJson(relay, 'GET', '/v1/auth/me', { token: user.accessToken });
  const uploadKeys = (user: AuthResponse, keys: DeviceKeys) =>
    httpJson(relay, 'PUT', '/v1/keys', { token: user.accessToken, body: keys.uploadRequest() });

  /** A registered account whose primary device has uploaded its keys. */
  const primary = async (prefix: string) => {
    const auth = await registerUser(relay, uniqueUsername(prefix));
    const keys = new DeviceKeys({ preKeys: 2, kyberPreKeys: 2 });
    expect((await uploadKeys(auth, keys)).status).toBe(204);
    return { auth, keys };
  };
  /** The whole flow, as the SDK runs it; returns the new device's tokens and the identity it opened. */
  const linkNewDevice = async (approver: { auth: AuthResponse; keys: DeviceKeys }) => {
    const device = await createSlot();
    expect((await approve(approver.auth, device.slot.id, sealFor(device, approver.auth.username, approver.keys.identity))).status).toBe(204);
    const received = await receive(device.slot.id, device.slot.secret);
    expect(received.status).toBe(200);
    const opened = device.ephemeral.open(new Uint8Array(Buffer.from(received.body.message, 'base64')), PROVISIONING_INFO, utf8(device.slot.id));
    const payload = JSON.parse(Buffer.from(opened).toString('utf8')) as ProvisioningPayload;
    const linked = await link(device.slot.id, device.slot.secret);
    expect(linked.status).toBe(201);
    const identity = new IdentityKeyPair(
      PublicKey.deserialize(new Uint8Array(Buffer.from(payload.identityPublicKey, 'base64'))),
      PrivateKey.deserialize(new Uint8Array(Buffer.from(payload.identityPrivateKey, 'base64'))),
    );
    return { auth: linked.body, identity, payload };
  };
  const deviceRowOf = async (accountId: string, deviceId: number) =>
    (
      await relay.sql<{ id: string }>(
        'SELECT id::text AS id FROM devices WHERE account_id = $1::uuid AND device_id = $2',
        accountId,
        deviceId,
      )
    )[0]?.id;

  beforeAll(async () => {
    relay = await startTestRelay({ MAX_DEVICES_PER_ACCOUNT: String(MAX_DEVICES) });
  });

  afterAll(async () => {
    await relay?.close();
  });

  describe('provisioning', () => {
    it('opens a slot with a UUID, a 32-byte base64url secret and the protocol TTL', async () => {
      const { slot } = await createSlot();
      expect(slot.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      expect(slot.secret).toMatch(/^[A-Za-z0-9_-]{43}$/);
      expect(Buffer.from(slot.secret, 'base64url')).toHaveLength(32);
      expect(slot.expiresIn).toBe(PROVISIONING_TTL_SECONDS);
      const [row] = await relay.sql<{ secret_hash: Buffer; account_id: string | null; message: Buffer | null }>(
        'SELECT secret_hash, account_id, message FROM provisioning_slots WHERE id = $1::uuid',
        slot.id,
      );
      expect(row).toMatchObject({ account_id: null, message: null });
      // Only the SHA-256 of the secret is kept.
      expect(Buffer.from(row!.secret_hash).toString('hex')).not.toContain(Buffer.from(slot.secret).toString('hex'));
      expect(row!.secret_hash).toHaveLength(32);
    });

    it('links a device: approval seals the identity to the new device, which opens it, links and uploads keys of that identity', async () => {
      const alice = await primary('alice');
      const device = await createSlot();

      const before = await receive(device.slot.id, device.slot.secret);
      expect([before.status, before.body]).toEqual([204, undefined]);

      const sealed = sealFor(device, alice.auth.username, alice.keys.identity);
      expect((await approve(alice.auth, device.slot.id, sealed)).status).toBe(204);

      // The relay holds exactly the sealed bytes, and nothing of the identity private key anywhere.
      const [slotRow] = await relay.sql<{ message: Buffer; account_id: string }>(
        'SELECT message, account_id::text AS account_id FROM provisioning_slots WHERE id = $1::uuid',
        device.slot.id,
      );
      expect(Buffer.from(slotRow!.message).equals(Buffer.from(sealed))).toBe(true);
      expect(slotRow!.account_id).toBe(alice.auth.accountId);
      const dump = (await relay.sql<{ row: string }>('SELECT row_to_json(t)::text AS row FROM provisioning_slots t')).map((r) => r.row).join('\n');
      const privateKey = Buffer.from(alice.keys.identity.privateKey.serialize());
      expect(dump).not.toContain(privateKey.toString('hex'));
      expect(dump).not.toContain(privateKey.toString('base64'));
      expect(dump).not.toContain(Buffer.from(alice.auth.username).toString('hex'));

      const received = await receive(device.slot.id, device.slot.secret);
      expect(received.status).toBe(200);
      expect(received.body.message).toBe(b64(sealed));
      const opened = device.ephemeral.open(new Uint8Array(Buffer.from(received.body.message, 'base64')), PROVISIONING_INFO, utf8(device.slot.id));
      const payload = JSON.parse(Buffer.from(opened).toString('utf8')) as ProvisioningPayload;
      expect(payload).toEqual({
        version: 1,
        username: alice.auth.username,
        identityPublicKey: b64(alice.keys.identity.publicKey.serialize()),
        identityPrivateKey: b64(privateKey),
      });
      // Another key cannot open it: only the holder of the ephemeral private key can.
      expect(() => PrivateKey.generate().open(opened, PROVISIONING_INFO, utf8(device.slot.id))).toThrow();

      const linked = await link(device.slot.id, device.slot.secret);
      expect(linked.status).toBe(201);
      expect(linked.body).toEqual({
        accountId: alice.auth.accountId,
        username: alice.auth.username,
        deviceId: 2,
        accessToken: expect.any(String),
        expiresIn: expect.any(Number),
        refreshToken: expect.any(String),
      });
      expect((await relay.sql('SELECT 1 FROM provisioning_slots WHERE id = $1::uuid', device.slot.id)).length).toBe(0);
      expect((await me(linked.body)).body).toMatchObject({ accountId: alice.auth.accountId, deviceId: 2 });

      // No keys until it uploads them; only keys of the account's identity are accepted.
      expect(await listDevices(alice.auth)).toEqual([
        { deviceId: 1, createdAt: expect.any(Number), hasKeys: true },
        { deviceId: 2, createdAt: expect.any(Number), hasKeys: false },
      ]);
      const foreign = await uploadKeys(linked.body, new DeviceKeys());
      expect([foreign.status, foreign.body.code]).toEqual([409, ErrorCode.IdentityKeyMismatch]);
      const identity = new IdentityKeyPair(
        PublicKey.deserialize(new Uint8Array(Buffer.from(payload.identityPublicKey, 'base64'))),
        PrivateKey.deserialize(new Uint8Array(Buffer.from(payload.identityPrivateKey, 'base64'))),
      );
      expect((await uploadKeys(linked.body, new DeviceKeys({ identity, preKeys: 1 }))).status).toBe(204);
      expect((await listDevices(linked.body)).map((d) => [d.deviceId, d.hasKeys])).toEqual([
        [1, true],
        [2, true],
      ]);

      // Its refresh token is its own: it rotates into tokens for device 2.
      const refreshed = await httpJson<AuthResponse>(relay, 'POST', '/v1/auth/refresh', { body: { refreshToken: linked.body.refreshToken } });
      expect([refreshed.status, refreshed.body.deviceId]).toEqual([200, 2]);
      expect((await me(refreshed.body)).body).toMatchObject({ deviceId: 2 });
    });

    it('signs a linked device in with its device id, and refuses a device the account does not have as INVALID_CREDENTIALS', async () => {
      const alice = await primary('login');
      await linkNewDevice(alice);
      const login = (body: object) => httpJson<AuthResponse>(relay, 'POST', '/v1/auth/login', { body });
      const credentials = { username: alice.auth.username, password: DEFAULT_TEST_PASSWORD };

      expect((await login(credentials)).body.deviceId).toBe(1);
      const asTwo = await login({ ...credentials, deviceId: 2 });
      expect([asTwo.status, asTwo.body.deviceId]).toEqual([200, 2]);
      expect((await me(asTwo.body)).body).toMatchObject({ deviceId: 2 });

      const missing = await login({ ...credentials, deviceId: 3 });
      const wrongPassword = await login({ ...credentials, password: 'not the password' });
      expect([missing.status, missing.body.code]).toEqual([401, ErrorCode.InvalidCredentials]);
      expect(missing.body).toEqual(wrongPassword.body);
      for (const deviceId of [0, 128, '2', 1.5]) {
        const invalid = await login({ ...credentials, deviceId });
        expect([invalid.status, invalid.body.code]).toEqual([400, ErrorCode.ValidationFailed]);
      }
    });
  });

  describe('no link without approval', () => {
    it('refuses to link a slot that was not approved, and links nothing', async () => {
      const alice = await primary('unapproved');
      const device = await createSlot();
      const refused = await link(device.slot.id, device.slot.secret);
      expect([refused.status, refused.body.code]).toEqual([404, ErrorCode.ProvisioningNotFound]);
      expect(await listDevices(alice.auth)).toHaveLength(1);
    });

    it('answers a wrong secret exactly as an unknown slot, on receive and on link, and links nothing', async () => {
      const alice = await primary('secret');
      const device = await createSlot();
      expect((await approve(alice.auth, device.slot.id, sealFor(device, alice.auth.username, alice.keys.identity))).status).toBe(204);
      const wrongSecret = randomBytes(32).toString('base64url');

      const unknown = await receive(randomUUID(), device.slot.secret);
      for (const answer of [await receive(device.slot.id, wrongSecret), await link(device.slot.id, wrongSecret), unknown]) {
        expect([answer.status, answer.body]).toEqual([404, unknown.body]);
        expect(answer.body.code).toBe(ErrorCode.ProvisioningNotFound);
      }
      expect(await listDevices(alice.auth)).toHaveLength(1);
      // The slot is still there for its rightful owner.
      expect((await link(device.slot.id, device.slot.secret)).status).toBe(201);
    });

    it('lets a slot be approved once: a second approval, by the same or another account, is PROVISIONING_NOT_FOUND', async () => {
      const alice = await primary('first');
      const mallory = await primary('second');
      const device = await createSlot();
      const sealed = sealFor(device, alice.auth.username, alice.keys.identity);
      expect((await approve(alice.auth, device.slot.id, sealed)).status).toBe(204);
      for (const approver of [mallory, alice]) {
        const again = await approve(approver.auth, device.slot.id, sealFor(device, approver.auth.username, approver.keys.identity));
        expect([again.status, again.body.code]).toEqual([404, ErrorCode.ProvisioningNotFound]);
      }
      expect((await receive(device.slot.id, device.slot.secret)).body.message).toBe(b64(sealed));
      const linked = await link(device.slot.id, device.slot.secret);
      expect(linked.body.accountId).toBe(alice.auth.accountId);
      expect(await listDevices(mallory.auth)).toHaveLength(1);
    });

    it('uses a slot once: a second link with it is PROVISIONING_NOT_FOUND, and so are receive and approval', async () => {
      const alice = await primary('reuse');
      const device = await createSlot();
      expect((await approve(alice.auth, device.slot.id, sealFor(device, alice.auth.username, alice.keys.identity))).status).toBe(204);
      expect((await link(device.slot.id, device.slot.secret)).status).toBe(201);
      const again = await link(device.slot.id, device.slot.secret);
      expect([again.status, again.body.code]).toEqual([404, ErrorCode.ProvisioningNotFound]);
      expect((await receive(device.slot.id, device.slot.secret)).body.code).toBe(ErrorCode.ProvisioningNotFound);
      expect((await approve(alice.auth, device.slot.id, 'AAAA')).body.code).toBe(ErrorCode.ProvisioningNotFound);
      expect((await listDevices(alice.auth)).map((d) => d.deviceId)).toEqual([1, 2]);
    });

    it('refuses an expired slot on approve, receive and link, also an approved one', async () => {
      const alice = await primary('expired');
      const clock = relay.app.select(DevicesModule).get(Clock, { strict: true });
      const unapproved = await createSlot();
      const approved = await createSlot();
      expect((await approve(alice.auth, approved.slot.id, sealFor(approved, alice.auth.username, alice.keys.identity))).status).toBe(204);

      const justBefore = new Date(Date.now() + PROVISIONING_TTL_SECONDS * 1000 - 5_000);
      const after = new Date(Date.now() + PROVISIONING_TTL_SECONDS * 1000 + 1_000);
      const timeTravel = jest.spyOn(clock, 'now').mockReturnValue(justBefore);
      try {
        expect((await receive(approved.slot.id, approved.slot.secret)).status).toBe(200);
        timeTravel.mockReturnValue(after);
        const answers = [
          await approve(alice.auth, unapproved.slot.id, sealFor(unapproved, alice.auth.username, alice.keys.identity)),
          await receive(unapproved.slot.id, unapproved.slot.secret),
          await receive(approved.slot.id, approved.slot.secret),
          await link(approved.slot.id, approved.slot.secret),
        ];
        expect(answers.map((a) => [a.status, a.body.code])).toEqual(Array(4).fill([404, ErrorCode.ProvisioningNotFound]));
      } finally {
        timeTravel.mockRestore();
      }
      expect(await listDevices(alice.auth)).toHaveLength(1);
    });
  });

  describe('the device limit', () => {
    it(`refuses approval and link with TOO_MANY_DEVICES once the account has ${MAX_DEVICES} devices`, async () => {
      const alice = await primary('full');
      const pending = await createSlot();
      expect((await approve(alice.auth, pending.slot.id, sealFor(pending, alice.auth.username, alice.keys.identity))).status).toBe(204);
      for (let i = 1; i < MAX_DEVICES; i++) await linkNewDevice(alice);
      expect((await listDevices(alice.auth)).map((d) => d.deviceId)).toEqual([1, 2, 3]);

      const late = await createSlot();
      const refused = await approve(alice.auth, late.slot.id, sealFor(late, alice.auth.username, alice.keys.identity));
      expect([refused.status, refused.body.code]).toEqual([409, ErrorCode.TooManyDevices]);
      // A slot approved while there was room is refused at link, and kept for a retry.
      const linkRefused = await link(pending.slot.id, pending.slot.secret);
      expect([linkRefused.status, linkRefused.body.code]).toEqual([409, ErrorCode.TooManyDevices]);
      expect(await listDevices(alice.auth)).toHaveLength(MAX_DEVICES);

      expect((await unlink(alice.auth, 3)).status).toBe(204);
      const retried = await link(pending.slot.id, pending.slot.secret);
      expect([retried.status, retried.body.deviceId]).toEqual([201, 3]);
    });

    it('lets exactly as many concurrent links succeed as there is room for', async () => {
      const alice = await primary('race');
      const room = MAX_DEVICES - 1;
      const devices = await Promise.all(Array.from({ length: room + 3 }, () => createSlot()));
      for (const device of devices) {
        expect((await approve(alice.auth, device.slot.id, sealFor(device, alice.auth.username, alice.keys.identity))).status).toBe(204);
      }
      const answers = await Promise.all(devices.map((device) => link(device.slot.id, device.slot.secret)));
      const linked = answers.filter((a) => a.status === 201);
      expect(linked).toHaveLength(room);
      expect(answers.filter((a) => a.status !== 201).map((a) => [a.status, a.body.code])).toEqual(
        Array(3).fill([409, ErrorCode.TooManyDevices]),
      );
      expect(linked.map((a) => a.body.deviceId).sort()).toEqual([2, 3]);
      expect((await listDevices(alice.auth)).map((d) => d.deviceId)).toEqual([1, 2, 3]);
    });
  });

  describe('unlinking', () => {
    it('deletes the device, its keys, queue and tokens, writes its tombstone and closes its socket with 4410', async () => {
      const alice = await primary('unlink');
      const second = await linkNewDevice(alice);
      const secondKeys = new DeviceKeys({ identity: second.identity, preKeys: 3, kyberPreKeys: 3 });
      expect((await uploadKeys(second.auth, secondKeys)).status).toBe(204);
      const rowId = (await deviceRowOf(alice.auth.accountId, 2))!;
      await relay.sql(
        `INSERT INTO messages (id, recipient_device_row_id, sender_username, type, ciphertext)
         VALUES ($1::uuid, $2::uuid, 'someone', 'signal', '\\x00')`,
        randomUUID(),
        rowId,
      );
      const socket = await connectWs(relay.wsUrl, second.auth.accessToken);
      await waitForFrame(socket, (frame) => frame.type === ServerFrameType.QueueEmpty);
      const closed = waitForClose(socket.socket);

      const answer = await unlink(alice.auth, 2);
      expect([answer.status, answer.body]).toEqual([204, undefined]);
      expect(await closed).toEqual({ code: CloseCode.DeviceUnlinked, reason: ErrorCode.DeviceUnlinked });

      const countOf = async (table: string, column: string) =>
        Number((await relay.sql<{ n: string }>(`SELECT count(*)::text AS n FROM ${table} WHERE ${column} = $1::uuid`, rowId))[0]!.n);
      expect(await countOf('devices', 'id')).toBe(0);
      expect(await countOf('one_time_prekeys', 'device_row_id')).toBe(0);
      expect(await countOf('kyber_prekeys', 'device_row_id')).toBe(0);
      expect(await countOf('messages', 'recipient_device_row_id')).toBe(0);
      expect(await countOf('refresh_tokens', 'device_row_id')).toBe(0);
      expect(
        await relay.sql('SELECT device_id, registration_id FROM unlinked_devices WHERE account_id = $1::uuid', alice.auth.accountId),
      ).toEqual([{ device_id: 2, registration_id: secondKeys.registrationId }]);
      expect((await listDevices(alice.auth)).map((d) => d.deviceId)).toEqual([1]);

      const http = await me(second.auth);
      expect([http.status, http.body.code]).toEqual([401, ErrorCode.DeviceUnlinked]);
      const upgrade = await refusedUpgrade(relay.wsUrl, { authorization: `Bearer ${second.auth.accessToken}` });
      expect([upgrade.status, (upgrade.body as { code: string }).code]).toEqual([401, ErrorCode.DeviceUnlinked]);
      const refresh = await httpJson(relay, 'POST', '/v1/auth/refresh', { body: { refreshToken: second.auth.refreshToken } });
      expect([refresh.status, refresh.body.code]).toEqual([401, ErrorCode.InvalidRefreshToken]);
      expect((await me(alice.auth)).status).toBe(200);
    });

    it('gives a device linked later the freed id, removes the tombstone, and does not let the old tokens act as it', async () => {
      const alice = await primary('relink');
      const old = await linkNewDevice(alice);
      expect((await unlink(alice.auth, 2)).status).toBe(204);
      const tombstones = () => relay.sql('SELECT device_id FROM unlinked_devices WHERE account_id = $1::uuid', alice.auth.accountId);
      expect(await tombstones()).toEqual([{ device_id: 2 }]);

      const again = await linkNewDevice(alice);
      expect(again.auth.deviceId).toBe(2);
      expect(await tombstones()).toEqual([]);
      expect((await me(again.auth)).status).toBe(200);
      expect((await me(old.auth)).body.code).toBe(ErrorCode.DeviceUnlinked);
      const oldRefresh = await httpJson(relay, 'POST', '/v1/auth/refresh', { body: { refreshToken: old.auth.refreshToken } });
      expect(oldRefresh.body.code).toBe(ErrorCode.InvalidRefreshToken);
    });

    it('takes the smallest free id >= 2 for a new device', async () => {
      const alice = await primary('ids');
      await linkNewDevice(alice);
      await linkNewDevice(alice);
      expect((await unlink(alice.auth, 2)).status).toBe(204);
      expect((await linkNewDevice(alice)).auth.deviceId).toBe(2);
    });

    it('lets any device of the account unlink another, and itself', async () => {
      const alice = await primary('peer');
      const second = await linkNewDevice(alice);
      const third = await linkNewDevice(alice);
      expect((await unlink(second.auth, 3)).status).toBe(204);
      expect((await me(third.auth)).body.code).toBe(ErrorCode.DeviceUnlinked);
      expect((await unlink(second.auth, 2)).status).toBe(204);
      expect((await me(second.auth)).body.code).toBe(ErrorCode.DeviceUnlinked);
      expect((await listDevices(alice.auth)).map((d) => d.deviceId)).toEqual([1]);
    });

    it('refuses device 1 with PRIMARY_DEVICE, a device the account does not have with DEVICE_NOT_FOUND, and only touches the own account', async () => {
      const alice = await primary('primary');
      const bob = await primary('other');
      await linkNewDevice(bob);
      const first = await unlink(alice.auth, 1);
      expect([first.status, first.body.code]).toEqual([409, ErrorCode.PrimaryDevice]);
      for (const deviceId of [2, 127]) {
        const missing = await unlink(alice.auth, deviceId);
        expect([missing.status, missing.body.code]).toEqual([404, ErrorCode.DeviceNotFound]);
      }
      expect((await listDevices(bob.auth)).map((d) => d.deviceId)).toEqual([1, 2]);
      expect((await me(alice.auth)).status).toBe(200);
    });

    it('ends a linked device\'s tokens with the account: CREDENTIALS_CHANGED after a password change, INVALID_TOKEN after deletion', async () => {
      const alice = await primary('lifecycle');
      const second = await linkNewDevice(alice);
      const changed = await httpJson<AuthResponse>(relay, 'POST', '/v1/auth/password', {
        token: alice.auth.accessToken,
        body: { currentPassword: DEFAULT_TEST_PASSWORD, newPassword: 'a brand new password' },
      });
      expect(changed.status).toBe(200);
      expect((await me(second.auth)).body.code).toBe(ErrorCode.CredentialsChanged);
      const relogged = await httpJson<AuthResponse>(relay, 'POST', '/v1/auth/login', {
        body: { username: alice.auth.username, password: 'a brand new password', deviceId: 2 },
      });
      expect([relogged.status, relogged.body.deviceId]).toEqual([200, 2]);

      const deleted = await httpJson(relay, 'DELETE', '/v1/account', { token: changed.body.accessToken, body: { password: 'a brand new password' } });
      expect(deleted.status).toBe(204);
      expect((await me(relogged.body)).body.code).toBe(ErrorCode.InvalidToken);
      expect(await relay.sql('SELECT 1 FROM devices WHERE account_id = $1::uuid', alice.auth.accountId)).toEqual([]);
    });
  });

  describe('validation and authentication', () => {
    it.each<[string, string, string, object | undefined, boolean]>([
      ['an approval of a slot id that is not a UUID', 'PUT', '/v1/provisioning/not-a-uuid', { message: 'AAAA' }, true],
      ['an approval without a message', 'PUT', `/v1/provisioning/${randomUUID()}`, {}, true],
      ['an approval whose message is not base64', 'PUT', `/v1/provisioning/${randomUUID()}`, { message: '!!not base64!!' }, true],
      ['an approval with an empty message', 'PUT', `/v1/provisioning/${randomUUID()}`, { message: '' }, true],
      [
        'an approval with a message over MAX_PROVISIONING_MESSAGE_BYTES',
        'PUT',
        `/v1/provisioning/${randomUUID()}`,
        { message: Buffer.alloc(MAX_PROVISIONING_MESSAGE_BYTES + 1).toString('base64') },
        true,
      ],
      ['an approval with an unknown field', 'PUT', `/v1/provisioning/${randomUUID()}`, { message: 'AAAA', account: 'x' }, true],
      ['a receive of a slot id that is not a UUID', 'POST', '/v1/provisioning/123/receive', { secret: 'A'.repeat(43) }, false],
      ['a receive with a secret of the wrong length', 'POST', `/v1/provisioning/${randomUUID()}/receive`, { secret: 'A'.repeat(42) }, false],
      ['a receive without a secret', 'POST', `/v1/provisioning/${randomUUID()}/receive`, {}, false],
      ['a link without a slot id', 'POST', '/v1/devices/link', { secret: 'A'.repeat(43) }, false],
      ['a link with a slot id that is not a UUID', 'POST', '/v1/devices/link', { provisioningId: 'slot', secret: 'A'.repeat(43) }, false],
      ['a link with a secret that is not base64url', 'POST', '/v1/devices/link', { provisioningId: randomUUID(), secret: '+'.repeat(43) }, false],
      ['an unlink of device 0', 'DELETE', '/v1/devices/0', undefined, true],
      ['an unlink of device 128', 'DELETE', '/v1/devices/128', undefined, true],
      ['an unlink of a device id that is not a number', 'DELETE', '/v1/devices/two', undefined, true],
    ])('refuses %s with 400 VALIDATION_FAILED naming the field', async (_what, method, path, body, authenticated) => {
      const token = authenticated ? (await registerUser(relay, uniqueUsername('valid'))).accessToken : undefined;
      const answer = await httpJson(relay, method, path, { token, body });
      expect([answer.status, answer.body.code]).toEqual([400, ErrorCode.ValidationFailed]);
      expect(answer.body.details?.length).toBeGreaterThan(0);
    });

    it.each([
      ['PUT', `/v1/provisioning/${randomUUID()}`, { message: 'AAAA' }],
      ['GET', '/v1/devices', undefined],
      ['DELETE', '/v1/devices/2', undefined],
    ])('requires a token for %s %s', async (method, path, body) => {
      const answer = await httpJson(relay, method, path, { body });
      expect([answer.status, answer.body.code]).toEqual([401, ErrorCode.AuthenticationRequired]);
    });
  });
});

describe('provisioning rate limits per client IP (e2e)', () => {
  let relay: TestRelay;

  beforeAll(async () => {
    relay = await startTestRelay({ PROVISIONING_SLOTS_PER_IP: '2', PROVISIONING_RECEIVES_PER_IP: '3' });
  });

  afterAll(async () => {
    await relay?.close();
  });

  const expectRateLimited = (answer: { status: number; body: { code?: string; retryAfter?: number }; headers: Headers }) => {
    expect([answer.status, answer.body.code]).toEqual([429, ErrorCode.RateLimited]);
    expect(answer.body.retryAfter).toBeGreaterThanOrEqual(1);
    expect(answer.headers.get('retry-after')).toBe(String(answer.body.retryAfter));
  };

  it('refuses a third slot from one IP with 429 RATE_LIMITED and Retry-After, creating nothing', async () => {
    for (let i = 0; i < 2; i++) expect((await httpJson(relay, 'POST', '/v1/provisioning')).status).toBe(201);
    expectRateLimited(await httpJson(relay, 'POST', '/v1/provisioning'));
    expect(await relay.sql('SELECT id FROM provisioning_slots')).toHaveLength(2);
  });

  it('counts receives and links together, failed ones included', async () => {
    const secret = randomBytes(32).toString('base64url');
    expect((await httpJson(relay, 'POST', `/v1/provisioning/${randomUUID()}/receive`, { body: { secret } })).status).toBe(404);
    expect((await httpJson(relay, 'POST', '/v1/devices/link', { body: { provisioningId: randomUUID(), secret } })).status).toBe(404);
    expect((await httpJson(relay, 'POST', `/v1/provisioning/${randomUUID()}/receive`, { body: { secret } })).status).toBe(404);
    expectRateLimited(await httpJson(relay, 'POST', `/v1/provisioning/${randomUUID()}/receive`, { body: { secret } }));
    expectRateLimited(await httpJson(relay, 'POST', '/v1/devices/link', { body: { provisioningId: randomUUID(), secret } }));
  });
});

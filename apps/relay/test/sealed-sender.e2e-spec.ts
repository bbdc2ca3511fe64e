import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { PublicKey, SenderCertificate } from '@signalapp/libsignal-client';
import { EnvelopeType, ErrorCode, UNIDENTIFIED_ACCESS_KEY_HEADER, type SealedSendRequest } from '@chat/protocol';
import { SealedAccount } from './support/sealed-sender-clients.js';
import { httpJson, registerUser, startTestRelay, uniqueUsername, type TestRelay } from './support/test-relay.js';

const DAY_MS = 24 * 60 * 60 * 1000;
const TTL_DAYS = 3;

/**
 * Sealed sender, one recipient at a time (docs/protocol.md, "Sealed
 * sender"): sender certificates, access keys and the unauthenticated send
 * endpoint, with real libsignal ciphertexts.
 */
describe('sealed sender (e2e)', () => {
  let relay: TestRelay;

  beforeAll(async () => {
    relay = await startTestRelay({ SENDER_CERTIFICATE_TTL_DAYS: String(TTL_DAYS) });
  });

  afterAll(async () => {
    await relay?.close();
  });

  const sealedSend = (body: unknown, accessKey?: string, headers: Record<string, string> = {}) =>
    httpJson(relay, 'POST', '/v1/messages/sealed', {
      body,
      headers: { ...(accessKey !== undefined && { [UNIDENTIFIED_ACCESS_KEY_HEADER]: accessKey }), ...headers },
    });
  const queuedFor = async (account: SealedAccount) =>
    Number(
      (
        await relay.sql<{ n: bigint }>(
          'SELECT count(*) AS n FROM messages m JOIN devices d ON d.id = m.recipient_device_row_id WHERE d.account_id = $1::uuid',
          account.accountId,
        )
      )[0]?.n,
    );
  const sealedRequests = async () => Number((await relay.sql<{ n: bigint }>('SELECT count(*) AS n FROM sealed_send_requests'))[0]?.n);

  describe('GET /v1/certificate/delivery', () => {
    it('certifies the account id, the token\'s device and the account identity key, until now + SENDER_CERTIFICATE_TTL_DAYS, under the trust root', async () => {
      const alice = await SealedAccount.create(relay, 'alice', 2);
      for (const device of alice.devices) {
        const before = Date.now();
        const certificate = await device.certificate(relay);
        expect(certificate.senderUuid()).toBe(alice.accountId);
        expect(certificate.senderE164()).toBeNull();
        expect(certificate.senderDeviceId()).toBe(device.deviceId);
        expect(certificate.key().serialize()).toEqual(device.keys.identity.publicKey.serialize());
        expect(certificate.expiration()).toBeGreaterThanOrEqual(before + TTL_DAYS * DAY_MS);
        expect(certificate.expiration()).toBeLessThanOrEqual(Date.now() + TTL_DAYS * DAY_MS);
        const trustRoot = PublicKey.deserialize(new Uint8Array(Buffer.from(relay.trustRoot, 'base64')));
        expect(certificate.validate(trustRoot, Date.now())).toBe(true);
        expect(certificate.validate(trustRoot, certificate.expiration() + 1)).toBe(false);
        expect(certificate.validate(PublicKey.deserialize(new Uint8Array(Buffer.from(relay.trustRoot, 'base64'))), Date.now())).toBe(true);
      }
    });

    it('is KEYS_INCOMPLETE before the first key upload and needs a token', async () => {
      const fresh = await registerUser(relay, uniqueUsername('fresh'));
      const refused = await httpJson(relay, 'GET', '/v1/certificate/delivery', { token: fresh.accessToken });
      expect([refused.status, refused.body.code]).toEqual([400, ErrorCode.KeysIncomplete]);
      const anonymous = await httpJson(relay, 'GET', '/v1/certificate/delivery');
      expect([anonymous.status, anonymous.body.code]).toEqual([401, ErrorCode.AuthenticationRequired]);
    });

    it('has no trust-root endpoint when the certificate is configured (production style)', async () => {
      const { status, body } = await httpJson(relay, 'GET', '/v1/certificate/trust-root');
      expect([status, body.code]).toEqual([404, ErrorCode.NotFound]);
    });

  });

  describe('PUT /v1/account/unidentified-access', () => {
    it('stores the access key and the setting of the token\'s account', async () => {
      const bob = await SealedAccount.create(relay, 'bob');
      const key = await bob.setAccess(relay, true);
      const [row] = await relay.sql<{ unidentified_access_key: Uint8Array; unrestricted_unidentified_access: boolean }>(
        'SELECT unidentified_access_key, unrestricted_unidentified_access FROM accounts WHERE id = $1::uuid',
        bob.accountId,
      );
      expect(Buffer.from(row!.unidentified_access_key).equals(key)).toBe(true);
      expect(row!.unrestricted_unidentified_access).toBe(true);
    });

    it.each([
      ['a 15-byte key', { accessKey: randomBytes(15).toString('base64'), unrestricted: false }, 'accessKey'],
      ['a 17-byte key', { accessKey: randomBytes(17).toString('base64'), unrestricted: false }, 'accessKey'],
      ['no key', { unrestricted: false }, 'accessKey'],
      ['a string for unrestricted', { accessKey: randomBytes(16).toString('base64'), unrestricted: 'yes' }, 'unrestricted'],
      ['no unrestricted', { accessKey: randomBytes(16).toString('base64') }, 'unrestricted'],
      ['an unknown field', { accessKey: randomBytes(16).toString('base64'), unrestricted: false, profileKey: 'x' }, 'profileKey'],
    ])('refuses %s with VALIDATION_FAILED naming the field', async (_what, body, field) => {
      const user = await registerUser(relay, uniqueUsername('access'));
      const { status, body: answer } = await httpJson(relay, 'PUT', '/v1/account/unidentified-access', { token: user.accessToken, body });
      expect([status, answer.code]).toEqual([400, ErrorCode.ValidationFailed]);
      expect(answer.details?.some((line: string) => line.startsWith(field))).toBe(true);
    });

    it('needs a token', async () => {
      const { status, body } = await httpJson(relay, 'PUT', '/v1/account/unidentified-access', {
        body: { accessKey: randomBytes(16).toString('base64'), unrestricted: true },
      });
      expect([status, body.code]).toEqual([401, ErrorCode.AuthenticationRequired]);
    });
  });

  describe('GET /v1/accounts/:accountId', () => {
    it('names the username of an account id, and refuses unknown and malformed ids and anonymous callers', async () => {
      const [asker, dave] = [await registerUser(relay, uniqueUsername('asker')), await registerUser(relay, uniqueUsername('dave'))];
      const found = await httpJson(relay, 'GET', `/v1/accounts/${dave.accountId}`, { token: asker.accessToken });
      expect([found.status, found.body]).toEqual([200, { accountId: dave.accountId, username: dave.username }]);
      const upper = await httpJson(relay, 'GET', `/v1/accounts/${dave.accountId.toUpperCase()}`, { token: asker.accessToken });
      expect(upper.body).toEqual({ accountId: dave.accountId, username: dave.username });
      const unknown = await httpJson(relay, 'GET', `/v1/accounts/${randomUUID()}`, { token: asker.accessToken });
      expect([unknown.status, unknown.body.code]).toEqual([404, ErrorCode.UnknownRecipient]);
      const malformed = await httpJson(relay, 'GET', '/v1/accounts/not-a-uuid', { token: asker.accessToken });
      expect([malformed.status, malformed.body.code]).toEqual([400, ErrorCode.ValidationFailed]);
      const anonymous = await httpJson(relay, 'GET', `/v1/accounts/${dave.accountId}`);
      expect([anonymous.status, anonymous.body.code]).toEqual([401, ErrorCode.AuthenticationRequired]);
    });
  });

  describe('POST /v1/messages/sealed', () => {
    let alice: SealedAccount;
    let bob: SealedAccount;
    let bobKey: Buffer;
    let certificate: SenderCertificate;
    let registrationIds: Map<number, number>;

    beforeAll(async () => {
      alice = await SealedAccount.create(relay, 'alice');
      bob = await SealedAccount.create(relay, 'bob', 2);
      bobKey = await bob.setAccess(relay);
      certificate = await alice.primary.certificate(relay);
      registrationIds = await alice.primary.openSessions(relay, bob);
    });

    const toBob = async (text: string, extra: Partial<SealedSendRequest> = {}): Promise<SealedSendRequest> => ({
      to: bob.username,
      messages: await Promise.all(
        bob.devices.map(async (device) => ({
          deviceId: device.deviceId,
          registrationId: registrationIds.get(device.deviceId) as number,
          ciphertext: await alice.primary.sealFor(bob, device.deviceId, `${text} (device ${device.deviceId})`, certificate),
        })),
      ),
      ...extra,
    });

    it('stores one sealed envelope per device with no sender; each decrypts with libsignal under a certificate naming alice', async () => {
      const sent = await sealedSend(await toBob('hello'), bobKey.toString('base64'));
      expect(sent.status).toBe(201);
      expect(typeof sent.body.serverTimestamp).toBe('number');

      const rows = await relay.sql<Record<string, unknown>>(
        'SELECT m.* FROM messages m JOIN devices d ON d.id = m.recipient_device_row_id WHERE d.account_id = $1::uuid',
        bob.accountId,
      );
      expect(rows).toHaveLength(2);
      for (const row of rows) {
        expect(row).toMatchObject({ type: 'sealed', sender_account_id: null, sender_username: null, sender_device_id: null });
      }

      for (const device of bob.devices) {
        const [envelope, ...rest] = await device.inbox(relay);
        expect(rest).toEqual([]);
        expect(Object.keys(envelope!).sort()).toEqual(['ciphertext', 'id', 'serverTimestamp', 'type']);
        expect(envelope).toMatchObject({ type: EnvelopeType.Sealed, serverTimestamp: sent.body.serverTimestamp });
        const opened = await device.openSealed(envelope!, relay.trustRoot, () => alice);
        expect(opened.plaintext).toBe(`hello (device ${device.deviceId})`);
        expect([opened.certificate.senderUuid(), opened.certificate.senderDeviceId()]).toEqual([alice.accountId, 1]);
        await device.ackAll(relay);
      }
    });

    it.each([
      ['without an access key', () => undefined],
      ['with a wrong access key', () => randomBytes(16).toString('base64')],
      ['with a 15-byte key', () => randomBytes(15).toString('base64')],
      ['with a 17-byte key', () => randomBytes(17).toString('base64')],
      ['with the key in unpadded base64', () => bobKey.toString('base64').replace(/=+$/, '')],
      ['with the key as hex', () => bobKey.toString('hex')],
    ])('refuses a send %s with SEALED_SENDER_REFUSED (401) and stores nothing', async (_what, key) => {
      const [queued, requests] = [await queuedFor(bob), await sealedRequests()];
      const { status, body } = await sealedSend(await toBob('refused', { id: randomUUID() }), key());
      expect([status, body.code]).toEqual([401, ErrorCode.SealedSenderRefused]);
      expect([await queuedFor(bob), await sealedRequests()]).toEqual([queued, requests]);
    });

    it('refuses an unknown recipient exactly as a wrong key, and a recipient that never set a key', async () => {
      const unknown = await sealedSend({ ...(await toBob('x')), to: uniqueUsername('nobody') }, bobKey.toString('base64'));
      expect([unknown.status, unknown.body.code]).toEqual([401, ErrorCode.SealedSenderRefused]);
      const keyless = await SealedAccount.create(relay, 'keyless');
      const regs = await alice.primary.openSessions(relay, keyless);
      const request = {
        to: keyless.username,
        messages: [{ deviceId: 1, registrationId: regs.get(1) as number, ciphertext: await alice.primary.sealFor(keyless, 1, 'x', certificate) }],
      };
      for (const key of [undefined, Buffer.alloc(16).toString('base64')]) {
        const { status, body } = await sealedSend(request, key);
        expect([status, body.code]).toEqual([401, ErrorCode.SealedSenderRefused]);
      }
      expect(await queuedFor(keyless)).toBe(0);
    });

    it('accepts a recipient that accepts sealed mail from anyone without a key, or with any key', async () => {
      const open = await SealedAccount.create(relay, 'open');
      await open.setAccess(relay, true);
      const regs = await alice.primary.openSessions(relay, open);
      for (const key of [undefined, randomBytes(16).toString('base64')]) {
        const request = {
          to: open.username,
          messages: [{ deviceId: 1, registrationId: regs.get(1) as number, ciphertext: await alice.primary.sealFor(open, 1, 'to anyone', certificate) }],
        };
        expect((await sealedSend(request, key)).status).toBe(201);
      }
      const envelopes = await open.primary.inbox(relay);
      expect(envelopes.map((envelope) => envelope.type)).toEqual([EnvelopeType.Sealed, EnvelopeType.Sealed]);
      expect((await open.primary.openSealed(envelopes[0]!, relay.trustRoot, () => alice)).plaintext).toBe('to anyone');
    });

    it('refuses a request that carries an Authorization header (valid token or not) with VALIDATION_FAILED, storing nothing', async () => {
      const queued = await queuedFor(bob);
      for (const authorization of [`Bearer ${alice.primary.token}`, 'Bearer nonsense']) {
        const { status, body } = await sealedSend(await toBob('tied'), bobKey.toString('base64'), { authorization });
        expect([status, body.code]).toEqual([400, ErrorCode.ValidationFailed]);
        expect(body.details).toEqual(['Authorization: a sealed send must not be authenticated']);
      }
      expect(await queuedFor(bob)).toBe(queued);
    });

    it('checks the devices as an authenticated send does: 409 and 410 bodies name the recipient, partial sends skip missing', async () => {
      const key = bobKey.toString('base64');
      const full = await toBob('devices');
      const missing = await sealedSend({ ...full, messages: full.messages.slice(0, 1) }, key);
      expect([missing.status, missing.body.code]).toEqual([409, ErrorCode.MismatchedDevices]);
      expect(missing.body.mismatched).toEqual([{ username: bob.username, missing: [2], extra: [] }]);
      const extra = await sealedSend({ ...full, messages: [...full.messages, { ...full.messages[0]!, deviceId: 9 }] }, key);
      expect(extra.body.mismatched).toEqual([{ username: bob.username, missing: [], extra: [9] }]);
      const stale = await sealedSend({ ...full, messages: [{ ...full.messages[0]!, registrationId: (full.messages[0]!.registrationId % 0x3ffe) + 1 }, full.messages[1]!] }, key);
      expect([stale.status, stale.body.code, stale.body.stale]).toEqual([410, ErrorCode.StaleDevices, [{ username: bob.username, devices: [1] }]]);
      const twice = await sealedSend({ ...full, messages: [full.messages[0]!, full.messages[0]!] }, key);
      expect([twice.status, twice.body.code]).toEqual([400, ErrorCode.ValidationFailed]);
      expect(await queuedFor(bob)).toBe(0);

      const partial = await sealedSend({ ...full, messages: full.messages.slice(1), partial: true }, key);
      expect(partial.status).toBe(201);
      expect(await queuedFor(bob)).toBe(1);
      for (const device of bob.devices) await device.ackAll(relay);
    });

    it('refuses bodies that fail validation, and an authenticated send claiming type sealed', async () => {
      const key = bobKey.toString('base64');
      const valid = await toBob('shape');
      for (const body of [
        { ...valid, source: alice.username },
        { ...valid, messages: valid.messages.map((m) => ({ ...m, type: EnvelopeType.Sealed })) },
        { ...valid, id: 'not-a-uuid' },
        { ...valid, messages: [] },
      ]) {
        const { status, body: answer } = await sealedSend(body, key);
        expect([status, answer.code]).toEqual([400, ErrorCode.ValidationFailed]);
      }
      const authenticated = await httpJson(relay, 'POST', '/v1/messages', {
        token: alice.primary.token,
        body: { to: bob.username, messages: valid.messages.map((m) => ({ ...m, type: EnvelopeType.Sealed })) },
      });
      expect([authenticated.status, authenticated.body.code]).toEqual([400, ErrorCode.ValidationFailed]);
      expect(await queuedFor(bob)).toBe(0);
    });

    it('makes a repeated id a no-op answered with the first send\'s timestamp, even after the devices changed', async () => {
      const id = randomUUID();
      const key = bobKey.toString('base64');
      const request = await toBob('once', { id });
      const first = await sealedSend(request, key);
      const again = await sealedSend(request, key);
      expect(first.status).toBe(201);
      expect([again.status, again.body]).toEqual([201, first.body]);
      expect(await queuedFor(bob)).toBe(2);
      expect((await relay.sql('SELECT * FROM sealed_send_requests WHERE request_id = $1::uuid', id)).length).toBe(1);
      // The relay cannot tell who sent it: a retry names only its id. A later send of the id answers the same.
      const fewer = await sealedSend({ ...request, messages: request.messages.slice(0, 1) }, key);
      expect([fewer.status, fewer.body]).toEqual([201, first.body]);
      // But not without the access key.
      expect((await sealedSend(request, undefined)).body.code).toBe(ErrorCode.SealedSenderRefused);
      for (const device of bob.devices) await device.ackAll(relay);
    });
  });

  // Last: a second relay in this process takes over Passport's global 'jwt' strategy, so the first one's tokens stop working.
  describe('a development relay', () => {
    it('serves the generated trust root of a development relay, which certifies its certificates', async () => {
      const development = await startTestRelay({ SEALED_SENDER_SERVER_CERTIFICATE: '', SEALED_SENDER_SERVER_PRIVATE_KEY: '' });
      try {
        const { status, body } = await httpJson<{ trustRoot: string }>(development, 'GET', '/v1/certificate/trust-root');
        expect(status).toBe(200);
        expect(body.trustRoot).toBe(development.trustRoot);
        const carol = await SealedAccount.create(development, 'carol');
        const certificate: SenderCertificate = await carol.primary.certificate(development);
        expect(certificate.validate(PublicKey.deserialize(new Uint8Array(Buffer.from(body.trustRoot, 'base64'))), Date.now())).toBe(true);
        // A certificate of this relay does not validate under another relay's trust root.
        expect(certificate.validate(PublicKey.deserialize(new Uint8Array(Buffer.from(relay.trustRoot, 'base64'))), Date.now())).toBe(false);
      } finally {
        await development.close();
      }
    });
  });
});

import { createHash, randomUUID } from 'node:crypto';
import { beforeEach, describe, expect, it } from '@jest/globals';
import { JwtService } from '@nestjs/jwt';
import { CloseCode, ErrorCode } from '@chat/protocol';
import { Clock } from '../common/clock.js';
import { RelayException } from '../common/relay.exception.js';
import { loadConfig } from '../config/relay-config.js';
import type { DeliveryService } from '../gateway/delivery.service.js';
import type { AccountCredentials, AuthRepository, ConsumedRefreshToken, DeviceIdentity, TokenState } from './auth.repository.js';
import type { AuthenticatedDevice } from './authenticated-device.js';
import { AuthService } from './auth.service.js';
import { TOKEN_AUDIENCE, TOKEN_ISSUER, TokenVerifier } from './token-verifier.js';
import { codeOf } from '../../test/support/relay-errors.js';

/** The repository's contract, in memory. */
class InMemoryAuthRepository implements Pick<AuthRepository, keyof AuthRepository> {
  readonly accounts = new Map<string, AccountCredentials>();
  readonly refreshTokens = new Map<string, DeviceIdentity & { expiresAt: Date }>();
  /** Username to when its account was deleted. */
  readonly retiredUsernames = new Map<string, Date>();
  /** Device rows: row id to its account and device id. */
  readonly devices = new Map<string, { accountId: string; deviceId: number }>();

  /** Links a device as the devices module would. */
  addDevice(accountId: string, deviceId: number): string {
    const rowId = randomUUID();
    this.devices.set(rowId, { accountId, deviceId });
    return rowId;
  }

  /** Unlinks a device as the devices module would: the row goes, its refresh tokens by cascade. */
  removeDevice(rowId: string): void {
    this.devices.delete(rowId);
    for (const [key, token] of this.refreshTokens) if (token.deviceRowId === rowId) this.refreshTokens.delete(key);
  }

  async createAccount(username: string, passwordHash: string, retiredAfter: Date): Promise<DeviceIdentity> {
    const retiredAt = this.retiredUsernames.get(username);
    if (this.accounts.has(username) || (retiredAt && retiredAt > retiredAfter)) {
      throw new RelayException(ErrorCode.UsernameTaken, 'taken');
    }
    this.retiredUsernames.delete(username);
    const account = { accountId: randomUUID(), username, passwordHash, credentialVersion: 0 };
    this.accounts.set(username, account);
    return { accountId: account.accountId, username, deviceId: 1, deviceRowId: this.addDevice(account.accountId, 1), credentialVersion: 0 };
  }

  async findCredentials(username: string): Promise<AccountCredentials | null> {
    return this.accounts.get(username) ?? null;
  }

  async findCredentialsById(accountId: string): Promise<AccountCredentials | null> {
    return [...this.accounts.values()].find((account) => account.accountId === accountId) ?? null;
  }

  async findTokenState(accountId: string, deviceId: number, deviceRowId?: string): Promise<TokenState | null> {
    const account = await this.findCredentialsById(accountId);
    if (!account) return null;
    const deviceExists = [...this.devices].some(
      ([rowId, device]) => device.accountId === accountId && device.deviceId === deviceId && (deviceRowId === undefined || rowId === deviceRowId),
    );
    return { credentialVersion: account.credentialVersion, deviceExists };
  }

  async findDeviceRowId(accountId: string, deviceId: number): Promise<string | null> {
    return [...this.devices].find(([, device]) => device.accountId === accountId && device.deviceId === deviceId)?.[0] ?? null;
  }

  async storeRefreshToken(device: DeviceIdentity, tokenHash: Uint8Array, expiresAt: Date): Promise<boolean> {
    if (!this.devices.has(device.deviceRowId)) return false;
    this.refreshTokens.set(Buffer.from(tokenHash).toString('hex'), { ...device, expiresAt });
    return true;
  }

  async consumeRefreshToken(tokenHash: Uint8Array): Promise<ConsumedRefreshToken | null> {
    const key = Buffer.from(tokenHash).toString('hex');
    const token = this.refreshTokens.get(key);
    this.refreshTokens.delete(key);
    const account = token && (await this.findCredentialsById(token.accountId));
    return token && account ? { ...token, currentCredentialVersion: account.credentialVersion } : null;
  }

  async changePassword(accountId: string, verifiedVersion: number, passwordHash: string): Promise<number | null> {
    const account = await this.findCredentialsById(accountId);
    if (!account || account.credentialVersion !== verifiedVersion) return null;
    account.passwordHash = passwordHash;
    account.credentialVersion += 1;
    for (const [key, token] of this.refreshTokens) if (token.accountId === accountId) this.refreshTokens.delete(key);
    return account.credentialVersion;
  }

  async deleteAccount(accountId: string, verifiedVersion: number, username: string, deletedAt: Date): Promise<boolean> {
    const account = await this.findCredentialsById(accountId);
    if (!account || account.credentialVersion !== verifiedVersion) return false;
    this.accounts.delete(account.username);
    for (const [rowId, device] of this.devices) if (device.accountId === accountId) this.removeDevice(rowId);
    this.retiredUsernames.set(username, deletedAt);
    return true;
  }
}

/** A clock the test moves by hand. */
class ManualClock extends Clock {
  current = new Date('2026-12-01T12:00:00Z');
  override now(): Date {
    return new Date(this.current);
  }
  advance(ms: number): void {
    this.current = new Date(this.current.getTime() + ms);
  }
}

const DAY_MS = 24 * 60 * 60 * 1000;

/** Records what the service asked delivery to close. */
class RecordingDelivery {
  readonly closedAccounts: Array<[string, number, string]> = [];
  closeAccount(accountId: string, code: number, reason: string): void {
    this.closedAccounts.push([accountId, code, reason]);
  }
}

const config = loadConfig({
  JWT_SECRET: 'unit-test-secret-unit-test-secret-0123',
  ARGON2_MEMORY_KIB: '1024',
  ARGON2_TIME_COST: '1',
  JWT_TTL_SECONDS: '600',
});

describe('AuthService', () => {
  let repository: InMemoryAuthRepository;
  let delivery: RecordingDelivery;
  let clock: ManualClock;
  let service: AuthService;
  let verifier: TokenVerifier;
  const jwt = new JwtService({});
  const serviceWith = (relayConfig: typeof config) =>
    new AuthService(repository as unknown as AuthRepository, jwt, relayConfig, delivery as unknown as DeliveryService, clock);

  beforeEach(() => {
    repository = new InMemoryAuthRepository();
    delivery = new RecordingDelivery();
    clock = new ManualClock();
    service = serviceWith(config);
    verifier = new TokenVerifier(jwt, config, repository as unknown as AuthRepository);
  });

  it('registers with an argon2id hash of the configured cost and never keeps the password', async () => {
    await service.register({ username: 'alice', password: 'a long password' });
    const stored = repository.accounts.get('alice');
    expect(stored?.passwordHash).toMatch(/^\$argon2id\$v=19\$/);
    expect(stored?.passwordHash.split('$')[3]?.split(',').sort()).toEqual(['m=1024', 'p=1', 't=1']);
    expect(stored?.passwordHash).not.toContain('a long password');
  });

  it('issues an access token for device 1 that the token verifier accepts', async () => {
    const auth = await service.register({ username: 'alice', password: 'a long password' });
    expect(auth).toMatchObject({ username: 'alice', deviceId: 1, expiresIn: 600 });
    const device = await verifier.verify(auth.accessToken);
    expect(device).toEqual({
      accountId: auth.accountId,
      username: 'alice',
      deviceId: 1,
      credentialVersion: 0,
      expiresAt: expect.any(Number),
    });
    const [rowId] = [...repository.devices.keys()];
    expect(jwt.decode(auth.accessToken)).toMatchObject({ sub: auth.accountId, dev: 1, did: rowId });
    expect(device.expiresAt - Date.now() / 1000).toBeGreaterThan(590);
    expect(device.expiresAt - Date.now() / 1000).toBeLessThanOrEqual(600);
  });

  it('stores only the SHA-256 of a refresh token', async () => {
    const auth = await service.register({ username: 'alice', password: 'a long password' });
    const expected = createHash('sha256').update(auth.refreshToken).digest('hex');
    expect([...repository.refreshTokens.keys()]).toEqual([expected]);
    expect(Buffer.from(auth.refreshToken, 'base64url')).toHaveLength(32);
  });

  it('refuses a taken username', async () => {
    await service.register({ username: 'alice', password: 'a long password' });
    expect(await codeOf(service.register({ username: 'alice', password: 'another password' }))).toBe(ErrorCode.UsernameTaken);
  });

  it('logs in with the right password', async () => {
    const registered = await service.register({ username: 'alice', password: 'a long password' });
    const auth = await service.login({ username: 'alice', password: 'a long password' });
    expect(auth.accountId).toBe(registered.accountId);
    expect((await verifier.verify(auth.accessToken)).accountId).toBe(registered.accountId);
  });

  it('answers a wrong password and an unknown user with the same INVALID_CREDENTIALS', async () => {
    await service.register({ username: 'alice', password: 'a long password' });
    expect(await codeOf(service.login({ username: 'alice', password: 'wrong password' }))).toBe(ErrorCode.InvalidCredentials);
    expect(await codeOf(service.login({ username: 'nobody', password: 'a long password' }))).toBe(ErrorCode.InvalidCredentials);
  });

  describe('login with a device id', () => {
    it('signs in as device 1 when no device is named, and as a linked device when it is named', async () => {
      const registered = await service.register({ username: 'alice', password: 'a long password' });
      const rowId = repository.addDevice(registered.accountId, 3);
      expect(await service.login({ username: 'alice', password: 'a long password' })).toMatchObject({ deviceId: 1 });
      const linked = await service.login({ username: 'alice', password: 'a long password', deviceId: 3 });
      expect(linked.deviceId).toBe(3);
      expect(await verifier.verify(linked.accessToken)).toMatchObject({ accountId: registered.accountId, deviceId: 3 });
      expect(jwt.decode(linked.accessToken)).toMatchObject({ did: rowId });
      await expect(service.refresh({ refreshToken: linked.refreshToken })).resolves.toMatchObject({ deviceId: 3 });
    });

    it('answers a device the account does not have with INVALID_CREDENTIALS, as a wrong password', async () => {
      await service.register({ username: 'alice', password: 'a long password' });
      expect(await codeOf(service.login({ username: 'alice', password: 'a long password', deviceId: 2 }))).toBe(ErrorCode.InvalidCredentials);
      expect(repository.refreshTokens.size).toBe(1);
    });
  });

  describe('an unlinked device', () => {
    it('has its access tokens refused with DEVICE_UNLINKED and its refresh token with INVALID_REFRESH_TOKEN', async () => {
      const registered = await service.register({ username: 'alice', password: 'a long password' });
      const rowId = repository.addDevice(registered.accountId, 2);
      const linked = await service.login({ username: 'alice', password: 'a long password', deviceId: 2 });
      repository.removeDevice(rowId);
      expect(await codeOf(verifier.verify(linked.accessToken))).toBe(ErrorCode.DeviceUnlinked);
      expect(await codeOf(service.refresh({ refreshToken: linked.refreshToken }))).toBe(ErrorCode.InvalidRefreshToken);
      await expect(verifier.verify(registered.accessToken)).resolves.toMatchObject({ deviceId: 1 });
    });

    it('does not pass its tokens on to a device linked later under the same device id', async () => {
      const registered = await service.register({ username: 'alice', password: 'a long password' });
      const oldRow = repository.addDevice(registered.accountId, 2);
      const old = await service.login({ username: 'alice', password: 'a long password', deviceId: 2 });
      repository.removeDevice(oldRow);
      repository.addDevice(registered.accountId, 2);
      expect(await codeOf(verifier.verify(old.accessToken))).toBe(ErrorCode.DeviceUnlinked);
      expect(await codeOf(service.refresh({ refreshToken: old.refreshToken }))).toBe(ErrorCode.InvalidRefreshToken);
    });

    it('gets no refresh token when its row is gone by the time the token is stored', async () => {
      const registered = await service.register({ username: 'alice', password: 'a long password' });
      const rowId = repository.addDevice(registered.accountId, 2);
      const linked = await service.login({ username: 'alice', password: 'a long password', deviceId: 2 });
      // As if the unlink committed between the refresh token's redemption and the new one's insert.
      const consume = repository.consumeRefreshToken.bind(repository);
      repository.consumeRefreshToken = async (hash) => {
        const token = await consume(hash);
        repository.removeDevice(rowId);
        return token;
      };
      expect(await codeOf(service.refresh({ refreshToken: linked.refreshToken }))).toBe(ErrorCode.InvalidRefreshToken);
      expect([...repository.refreshTokens.values()].map((token) => token.deviceId)).toEqual([1]);
    });
  });

  it('redeems a refresh token once, rotating it', async () => {
    const auth = await service.register({ username: 'alice', password: 'a long password' });
    const refreshed = await service.refresh({ refreshToken: auth.refreshToken });
    expect(refreshed.refreshToken).not.toBe(auth.refreshToken);
    expect(refreshed.accountId).toBe(auth.accountId);
    expect(await codeOf(service.refresh({ refreshToken: auth.refreshToken }))).toBe(ErrorCode.InvalidRefreshToken);
    await expect(service.refresh({ refreshToken: refreshed.refreshToken })).resolves.toMatchObject({ username: 'alice' });
  });

  it('refuses an expired or unknown refresh token', async () => {
    const auth = await service.register({ username: 'alice', password: 'a long password' });
    for (const token of repository.refreshTokens.values()) token.expiresAt = new Date(Date.now() - 1000);
    expect(await codeOf(service.refresh({ refreshToken: auth.refreshToken }))).toBe(ErrorCode.InvalidRefreshToken);
    expect(await codeOf(service.refresh({ refreshToken: 'never-issued' }))).toBe(ErrorCode.InvalidRefreshToken);
  });

  describe('changePassword', () => {
    const deviceOf = (auth: { accessToken: string }) => verifier.verify(auth.accessToken);

    it('refuses a wrong current password with INVALID_CREDENTIALS and changes nothing', async () => {
      const auth = await service.register({ username: 'alice', password: 'a long password' });
      const before = { ...repository.accounts.get('alice')! };
      const refusal = service.changePassword(await deviceOf(auth), { currentPassword: 'wrong password', newPassword: 'a new password' });
      expect(await codeOf(refusal)).toBe(ErrorCode.InvalidCredentials);
      expect(repository.accounts.get('alice')).toEqual(before);
      expect(delivery.closedAccounts).toEqual([]);
      await expect(verifier.verify(auth.accessToken)).resolves.toMatchObject({ accountId: auth.accountId });
    });

    it('ends every earlier token, closes the account\'s sockets with 4403 and answers with a working pair', async () => {
      const first = await service.register({ username: 'alice', password: 'a long password' });
      const second = await service.login({ username: 'alice', password: 'a long password' });
      const changed = await service.changePassword(await deviceOf(first), { currentPassword: 'a long password', newPassword: 'a new password' });

      expect(delivery.closedAccounts).toEqual([[first.accountId, CloseCode.CredentialsChanged, ErrorCode.CredentialsChanged]]);
      for (const old of [first, second]) {
        expect(await codeOf(verifier.verify(old.accessToken))).toBe(ErrorCode.CredentialsChanged);
        expect(await codeOf(service.refresh({ refreshToken: old.refreshToken }))).toBe(ErrorCode.InvalidRefreshToken);
      }
      expect(await deviceOf(changed)).toMatchObject({ accountId: first.accountId, deviceId: 1, credentialVersion: 1 });
      await expect(service.refresh({ refreshToken: changed.refreshToken })).resolves.toMatchObject({ accountId: first.accountId });
      expect(await codeOf(service.login({ username: 'alice', password: 'a long password' }))).toBe(ErrorCode.InvalidCredentials);
      await expect(service.login({ username: 'alice', password: 'a new password' })).resolves.toMatchObject({ username: 'alice' });
    });

    it('refuses a refresh token of an earlier credential version that escaped the deletion', async () => {
      const auth = await service.register({ username: 'alice', password: 'a long password' });
      const [hash, stored] = [...repository.refreshTokens.entries()][0]!;
      await service.changePassword(await deviceOf(auth), { currentPassword: 'a long password', newPassword: 'a new password' });
      // As if a refresh had raced the change and stored its token just before the deletion.
      repository.refreshTokens.set(hash, stored);
      expect(await codeOf(service.refresh({ refreshToken: auth.refreshToken }))).toBe(ErrorCode.InvalidRefreshToken);
    });

    it('refuses a change made with a token of an earlier version, even with the right password', async () => {
      const auth = await service.register({ username: 'alice', password: 'a long password' });
      const staleDevice: AuthenticatedDevice = await deviceOf(auth);
      await service.changePassword(staleDevice, { currentPassword: 'a long password', newPassword: 'a new password' });
      const again = service.changePassword(staleDevice, { currentPassword: 'a new password', newPassword: 'a third password' });
      expect(await codeOf(again)).toBe(ErrorCode.CredentialsChanged);
      await expect(service.login({ username: 'alice', password: 'a new password' })).resolves.toMatchObject({ username: 'alice' });
    });
  });

  describe('deleteAccount', () => {
    it('refuses a wrong password with INVALID_CREDENTIALS and keeps the account', async () => {
      const auth = await service.register({ username: 'alice', password: 'a long password' });
      const refusal = service.deleteAccount(await verifier.verify(auth.accessToken), { password: 'wrong password' });
      expect(await codeOf(refusal)).toBe(ErrorCode.InvalidCredentials);
      expect(repository.accounts.has('alice')).toBe(true);
      expect(delivery.closedAccounts).toEqual([]);
    });

    it("removes the account, ends its tokens, closes its sockets with 4403 and retires its username", async () => {
      const auth = await service.register({ username: 'alice', password: 'a long password' });
      await service.deleteAccount(await verifier.verify(auth.accessToken), { password: 'a long password' });
      expect(repository.accounts.has('alice')).toBe(false);
      expect(delivery.closedAccounts).toEqual([[auth.accountId, CloseCode.CredentialsChanged, ErrorCode.CredentialsChanged]]);
      expect(await codeOf(verifier.verify(auth.accessToken))).toBe(ErrorCode.InvalidToken);
      expect(await codeOf(service.refresh({ refreshToken: auth.refreshToken }))).toBe(ErrorCode.InvalidRefreshToken);
      expect(await codeOf(service.login({ username: 'alice', password: 'a long password' }))).toBe(ErrorCode.InvalidCredentials);
      expect(repository.retiredUsernames.get('alice')).toEqual(clock.now());
    });

    it('keeps the username taken for the cooling-off period and frees it when the period is over', async () => {
      const auth = await service.register({ username: 'alice', password: 'a long password' });
      await service.deleteAccount(await verifier.verify(auth.accessToken), { password: 'a long password' });

      clock.advance(config.usernameCoolingOffDays * DAY_MS - 1);
      expect(await codeOf(service.register({ username: 'alice', password: 'another password' }))).toBe(ErrorCode.UsernameTaken);
      clock.advance(1);
      const again = await service.register({ username: 'alice', password: 'another password' });
      expect(again.accountId).not.toBe(auth.accountId);
      expect(repository.retiredUsernames.has('alice')).toBe(false);
    });

    it('frees the username at once with a cooling-off period of 0 days', async () => {
      service = serviceWith({ ...config, usernameCoolingOffDays: 0 });
      const auth = await service.register({ username: 'alice', password: 'a long password' });
      await service.deleteAccount(await verifier.verify(auth.accessToken), { password: 'a long password' });
      clock.advance(1);
      await expect(service.register({ username: 'alice', password: 'another password' })).resolves.toMatchObject({ username: 'alice' });
    });
  });
});

describe('TokenVerifier', () => {
  const jwt = new JwtService({});
  const repository = new InMemoryAuthRepository();
  const verifier = new TokenVerifier(jwt, config, repository as unknown as AuthRepository);
  const account: AccountCredentials = { accountId: randomUUID(), username: 'alice', passwordHash: 'unused', credentialVersion: 3 };
  repository.accounts.set('alice', account);
  const deviceRowId = repository.addDevice(account.accountId, 1);
  const claims = { sub: account.accountId, dev: 1, did: deviceRowId, usr: 'alice', cv: 3 };
  const good = { secret: config.jwt.secret, issuer: TOKEN_ISSUER, audience: TOKEN_AUDIENCE, expiresIn: 60 } as const;
  const codeOfVerify = (token: string) => codeOf(verifier.verify(token));
  const unsigned = (header: object, payload: object) =>
    `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.`;

  it('accepts a token it signed for the current credential version', async () => {
    await expect(verifier.verify(jwt.sign(claims, { ...good, algorithm: 'HS256' }))).resolves.toMatchObject({
      username: 'alice',
      deviceId: 1,
      credentialVersion: 3,
    });
  });

  it('refuses a token of another credential version as CREDENTIALS_CHANGED', async () => {
    for (const cv of [2, 4]) expect(await codeOfVerify(jwt.sign({ ...claims, cv }, good))).toBe(ErrorCode.CredentialsChanged);
  });

  it('refuses a well-signed token of an account that does not exist as INVALID_TOKEN', async () => {
    expect(await codeOfVerify(jwt.sign({ ...claims, sub: randomUUID() }, good))).toBe(ErrorCode.InvalidToken);
  });

  it('refuses a well-signed token of a device row the account no longer has as DEVICE_UNLINKED', async () => {
    expect(await codeOfVerify(jwt.sign({ ...claims, did: randomUUID() }, good))).toBe(ErrorCode.DeviceUnlinked);
    expect(await codeOfVerify(jwt.sign({ ...claims, dev: 2 }, good))).toBe(ErrorCode.DeviceUnlinked);
  });

  it.each([
    ['signed with another secret', () => jwt.sign(claims, { ...good, secret: 'another-secret-another-secret-0123' })],
    ['of another audience', () => jwt.sign(claims, { ...good, audience: 'someone-else' })],
    ['of another issuer', () => jwt.sign(claims, { ...good, issuer: 'someone-else' })],
    ['signed with HS512', () => jwt.sign(claims, { ...good, algorithm: 'HS512' })],
    ['with alg none', () => unsigned({ alg: 'none', typ: 'JWT' }, { ...claims, iss: TOKEN_ISSUER, aud: TOKEN_AUDIENCE, exp: Date.now() / 1000 + 60 })],
    ['without a device claim', () => jwt.sign({ sub: claims.sub, did: deviceRowId, usr: 'alice', cv: 3 }, good)],
    ['without a device row claim', () => jwt.sign({ sub: claims.sub, dev: 1, usr: 'alice', cv: 3 }, good)],
    ['whose device row is not a UUID', () => jwt.sign({ ...claims, did: 'row-1' }, good)],
    ['without a credential version', () => jwt.sign({ sub: claims.sub, dev: 1, did: deviceRowId, usr: 'alice' }, good)],
    ['whose subject is not an account id', () => jwt.sign({ ...claims, sub: 'alice' }, good)],
    ['that is not a JWT', () => 'not-a-token'],
  ])('refuses a token %s as INVALID_TOKEN', async (_name, token) => {
    expect(await codeOfVerify(token())).toBe(ErrorCode.InvalidToken);
  });

  it('refuses an expired token as TOKEN_EXPIRED', async () => {
    const { expiresIn: _expiresIn, ...withoutExpiry } = good;
    const expired = jwt.sign({ ...claims, exp: Math.floor(Date.now() / 1000) - 10 }, withoutExpiry);
    expect(await codeOfVerify(expired)).toBe(ErrorCode.TokenExpired);
  });
});

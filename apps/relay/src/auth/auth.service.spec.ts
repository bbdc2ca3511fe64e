import { createHash, randomUUID } from 'node:crypto';
import { beforeEach, describe, expect, it } from '@jest/globals';
import { JwtService } from '@nestjs/jwt';
import { ErrorCode } from '@chat/protocol';
import { RelayException } from '../common/relay.exception.js';
import { loadConfig } from '../config/relay-config.js';
import type { AccountCredentials, AuthRepository, DeviceIdentity } from './auth.repository.js';
import { AuthService } from './auth.service.js';
import { TOKEN_AUDIENCE, TOKEN_ISSUER, TokenVerifier } from './token-verifier.js';

/** The repository's contract, in memory. */
class InMemoryAuthRepository implements Pick<AuthRepository, keyof AuthRepository> {
  readonly accounts = new Map<string, AccountCredentials>();
  readonly refreshTokens = new Map<string, DeviceIdentity & { expiresAt: Date }>();

  async createAccount(username: string, passwordHash: string): Promise<DeviceIdentity> {
    if (this.accounts.has(username)) throw new RelayException(ErrorCode.UsernameTaken, 'taken');
    const account = { accountId: randomUUID(), username, passwordHash };
    this.accounts.set(username, account);
    return { accountId: account.accountId, username, deviceId: 1 };
  }

  async findCredentials(username: string): Promise<AccountCredentials | null> {
    return this.accounts.get(username) ?? null;
  }

  async storeRefreshToken(device: DeviceIdentity, tokenHash: Uint8Array, expiresAt: Date): Promise<void> {
    this.refreshTokens.set(Buffer.from(tokenHash).toString('hex'), { ...device, expiresAt });
  }

  async consumeRefreshToken(tokenHash: Uint8Array): Promise<(DeviceIdentity & { expiresAt: Date }) | null> {
    const key = Buffer.from(tokenHash).toString('hex');
    const token = this.refreshTokens.get(key) ?? null;
    this.refreshTokens.delete(key);
    return token;
  }
}

const config = loadConfig({
  JWT_SECRET: 'unit-test-secret-unit-test-secret-0123',
  ARGON2_MEMORY_KIB: '1024',
  ARGON2_TIME_COST: '1',
  JWT_TTL_SECONDS: '600',
});

async function codeOf(promise: Promise<unknown>): Promise<ErrorCode | undefined> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof RelayException) return error.code;
    throw error;
  }
  return undefined;
}

describe('AuthService', () => {
  let repository: InMemoryAuthRepository;
  let service: AuthService;
  let verifier: TokenVerifier;

  beforeEach(() => {
    repository = new InMemoryAuthRepository();
    const jwt = new JwtService({});
    service = new AuthService(repository as unknown as AuthRepository, jwt, config);
    verifier = new TokenVerifier(jwt, config);
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
    const device = verifier.verify(auth.accessToken);
    expect(device).toEqual({
      accountId: auth.accountId,
      username: 'alice',
      deviceId: 1,
      expiresAt: expect.any(Number),
    });
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
    expect(verifier.verify(auth.accessToken).accountId).toBe(registered.accountId);
  });

  it('answers a wrong password and an unknown user with the same INVALID_CREDENTIALS', async () => {
    await service.register({ username: 'alice', password: 'a long password' });
    expect(await codeOf(service.login({ username: 'alice', password: 'wrong password' }))).toBe(ErrorCode.InvalidCredentials);
    expect(await codeOf(service.login({ username: 'nobody', password: 'a long password' }))).toBe(ErrorCode.InvalidCredentials);
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
});

describe('TokenVerifier', () => {
  const jwt = new JwtService({});
  const verifier = new TokenVerifier(jwt, config);
  const claims = { sub: randomUUID(), dev: 1, usr: 'alice' };
  const good = { secret: config.jwt.secret, issuer: TOKEN_ISSUER, audience: TOKEN_AUDIENCE, expiresIn: 60 } as const;
  const codeOfVerify = (token: string) => {
    try {
      verifier.verify(token);
    } catch (error) {
      return (error as RelayException).code;
    }
    return undefined;
  };
  const unsigned = (header: object, payload: object) =>
    `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.`;

  it('accepts a token it signed', () => {
    expect(verifier.verify(jwt.sign(claims, { ...good, algorithm: 'HS256' }))).toMatchObject({ username: 'alice', deviceId: 1 });
  });

  it.each([
    ['signed with another secret', () => jwt.sign(claims, { ...good, secret: 'another-secret-another-secret-0123' })],
    ['of another audience', () => jwt.sign(claims, { ...good, audience: 'someone-else' })],
    ['of another issuer', () => jwt.sign(claims, { ...good, issuer: 'someone-else' })],
    ['signed with HS512', () => jwt.sign(claims, { ...good, algorithm: 'HS512' })],
    ['with alg none', () => unsigned({ alg: 'none', typ: 'JWT' }, { ...claims, iss: TOKEN_ISSUER, aud: TOKEN_AUDIENCE, exp: Date.now() / 1000 + 60 })],
    ['without a device claim', () => jwt.sign({ sub: claims.sub, usr: 'alice' }, good)],
    ['that is not a JWT', () => 'not-a-token'],
  ])('refuses a token %s as INVALID_TOKEN', (_name, token) => {
    expect(codeOfVerify(token())).toBe(ErrorCode.InvalidToken);
  });

  it('refuses an expired token as TOKEN_EXPIRED', () => {
    const { expiresIn: _expiresIn, ...withoutExpiry } = good;
    const expired = jwt.sign({ ...claims, exp: Math.floor(Date.now() / 1000) - 10 }, withoutExpiry);
    expect(codeOfVerify(expired)).toBe(ErrorCode.TokenExpired);
  });
});

import { createHash, randomBytes } from 'node:crypto';
import { Inject, Injectable } from '@nestjs/common';
import { JwtService } from '@nestjs/jwt';
import * as argon2 from 'argon2';
import { ErrorCode, PRIMARY_DEVICE_ID, type AuthResponse, type LoginRequest, type RefreshRequest, type RegisterRequest } from '@chat/protocol';
import { RelayException } from '../common/relay.exception.js';
import { RELAY_CONFIG, type RelayConfig } from '../config/relay-config.js';
import { AuthRepository, type DeviceIdentity } from './auth.repository.js';
import { accessTokenSignOptions, type AccessTokenClaims } from './token-verifier.js';

const REFRESH_TOKEN_BYTES = 32;
const DAY_MS = 24 * 60 * 60 * 1000;

/** Registration, password login and refresh-token rotation. */
@Injectable()
export class AuthService {
  /** Verified against for unknown usernames, so that a login takes as long whether or not the account exists. */
  private dummyHash?: Promise<string>;

  constructor(
    private readonly accounts: AuthRepository,
    private readonly jwt: JwtService,
    @Inject(RELAY_CONFIG) private readonly config: RelayConfig,
  ) {}

  /** @throws RelayException USERNAME_TAKEN */
  async register(request: RegisterRequest): Promise<AuthResponse> {
    const passwordHash = await this.hashPassword(request.password);
    const device = await this.accounts.createAccount(request.username, passwordHash);
    return this.issueTokens(device);
  }

  /** @throws RelayException INVALID_CREDENTIALS for an unknown username and for a wrong password alike. */
  async login(request: LoginRequest): Promise<AuthResponse> {
    const account = await this.accounts.findCredentials(request.username);
    const passwordHash = account?.passwordHash ?? (await this.getDummyHash());
    const passwordMatches = await argon2.verify(passwordHash, request.password).catch(() => false);
    if (!account || !passwordMatches) {
      throw new RelayException(ErrorCode.InvalidCredentials, 'Invalid username or password');
    }
    return this.issueTokens({ accountId: account.accountId, username: account.username, deviceId: PRIMARY_DEVICE_ID });
  }

  /** Redeems a refresh token once and issues a new pair. @throws RelayException INVALID_REFRESH_TOKEN */
  async refresh(request: RefreshRequest): Promise<AuthResponse> {
    const device = await this.accounts.consumeRefreshToken(hashRefreshToken(request.refreshToken));
    if (!device || device.expiresAt.getTime() <= Date.now()) {
      throw new RelayException(ErrorCode.InvalidRefreshToken, 'The refresh token is invalid, used or expired');
    }
    return this.issueTokens(device);
  }

  private async issueTokens(device: DeviceIdentity): Promise<AuthResponse> {
    const claims: Omit<AccessTokenClaims, 'exp'> = { sub: device.accountId, dev: device.deviceId, usr: device.username };
    const accessToken = await this.jwt.signAsync(claims, accessTokenSignOptions(this.config));
    const refreshToken = randomBytes(REFRESH_TOKEN_BYTES).toString('base64url');
    const expiresAt = new Date(Date.now() + this.config.refreshTokenTtlDays * DAY_MS);
    await this.accounts.storeRefreshToken(device, hashRefreshToken(refreshToken), expiresAt);
    return {
      accountId: device.accountId,
      username: device.username,
      deviceId: device.deviceId,
      accessToken,
      expiresIn: this.config.jwt.ttlSeconds,
      refreshToken,
    };
  }

  private hashPassword(password: string): Promise<string> {
    const { memoryKib, timeCost, parallelism } = this.config.argon2;
    return argon2.hash(password, { type: argon2.argon2id, memoryCost: memoryKib, timeCost, parallelism });
  }

  private getDummyHash(): Promise<string> {
    this.dummyHash ??= this.hashPassword(randomBytes(16).toString('hex'));
    return this.dummyHash;
  }
}

/** Refresh tokens are stored as their SHA-256 only: a database leak yields no usable token. */
export function hashRefreshToken(token: string): Uint8Array<ArrayBuffer> {
  return new Uint8Array(createHash('sha256').update(token).digest());
}

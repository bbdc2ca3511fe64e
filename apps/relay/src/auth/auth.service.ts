import { createHash, randomBytes } from 'node:crypto';
import { Inject, Injectable } from '@nestjs/common';
import { JwtService } from '@nestjs/jwt';
import * as argon2 from 'argon2';
import {
  CloseCode,
  ErrorCode,
  PRIMARY_DEVICE_ID,
  type AuthResponse,
  type ChangePasswordRequest,
  type DeleteAccountRequest,
  type LoginRequest,
  type RefreshRequest,
  type RegisterRequest,
} from '@chat/protocol';
import { Clock } from '../common/clock.js';
import { RelayException } from '../common/relay.exception.js';
import { RELAY_CONFIG, type RelayConfig } from '../config/relay-config.js';
import { DeliveryService } from '../gateway/delivery.service.js';
import { AuthRepository, type AccountCredentials, type DeviceIdentity } from './auth.repository.js';
import type { AuthenticatedDevice } from './authenticated-device.js';
import { accessTokenSignOptions, type AccessTokenClaims } from './token-verifier.js';

const REFRESH_TOKEN_BYTES = 32;
const DAY_MS = 24 * 60 * 60 * 1000;

/** Registration, password login, refresh-token rotation, password changes and account deletion. */
@Injectable()
export class AuthService {
  /** Verified against for unknown usernames, so that a login takes as long whether or not the account exists. */
  private dummyHash?: Promise<string>;

  constructor(
    private readonly accounts: AuthRepository,
    private readonly jwt: JwtService,
    @Inject(RELAY_CONFIG) private readonly config: RelayConfig,
    private readonly delivery: DeliveryService,
    private readonly clock: Clock,
  ) {}

  /**
   * @throws RelayException USERNAME_TAKEN, also for the username of an
   *   account deleted less than the cooling-off period ago
   */
  async register(request: RegisterRequest): Promise<AuthResponse> {
    const passwordHash = await this.hashPassword(request.password);
    const coolingOffMs = this.config.usernameCoolingOffDays * DAY_MS;
    const device = await this.accounts.createAccount(request.username, passwordHash, new Date(this.clock.now().getTime() - coolingOffMs));
    return this.issueTokens(device);
  }

  /**
   * Signs in as `request.deviceId` (default 1, the primary device).
   * @throws RelayException INVALID_CREDENTIALS for an unknown username, a
   *   wrong password, and a device the account does not have alike
   */
  async login(request: LoginRequest): Promise<AuthResponse> {
    const account = await this.accounts.findCredentials(request.username);
    const matches = await this.passwordMatches(account, request.password);
    const invalid = () => new RelayException(ErrorCode.InvalidCredentials, 'Invalid username, password or device');
    if (!account || !matches) throw invalid();
    const deviceId = request.deviceId ?? PRIMARY_DEVICE_ID;
    const deviceRowId = await this.accounts.findDeviceRowId(account.accountId, deviceId);
    if (!deviceRowId) throw invalid();
    return this.issueTokens(
      { accountId: account.accountId, username: account.username, deviceId, deviceRowId, credentialVersion: account.credentialVersion },
      ErrorCode.InvalidCredentials,
    );
  }

  /**
   * Redeems a refresh token once and issues a new pair. A token issued
   * before the account's last password change is refused, also when it
   * raced that change to this point.
   *
   * @throws RelayException INVALID_REFRESH_TOKEN
   */
  async refresh(request: RefreshRequest): Promise<AuthResponse> {
    const token = await this.accounts.consumeRefreshToken(hashRefreshToken(request.refreshToken));
    if (!token || token.expiresAt.getTime() <= Date.now() || token.credentialVersion !== token.currentCredentialVersion) {
      throw new RelayException(ErrorCode.InvalidRefreshToken, 'The refresh token is invalid, used or expired');
    }
    // A token of an unlinked device was deleted with it; one that raced the unlink finds its row gone here.
    return this.issueTokens(token, ErrorCode.InvalidRefreshToken);
  }

  /**
   * Sets a new password after checking the current one. Every access and
   * refresh token issued before stops working and every open socket of the
   * account is closed with 4403; the answer carries the device's new pair.
   *
   * @throws RelayException INVALID_CREDENTIALS for a wrong current password;
   *   CREDENTIALS_CHANGED when another change won the race
   */
  async changePassword(device: AuthenticatedDevice, request: ChangePasswordRequest): Promise<AuthResponse> {
    const account = await this.verifiedAccount(device, request.currentPassword);
    const credentialVersion = await this.accounts.changePassword(
      account.accountId,
      account.credentialVersion,
      await this.hashPassword(request.newPassword),
    );
    if (credentialVersion === null) throw credentialsChanged();
    this.delivery.closeAccount(account.accountId, CloseCode.CredentialsChanged, ErrorCode.CredentialsChanged);
    const deviceRowId = await this.accounts.findDeviceRowId(account.accountId, device.deviceId);
    if (!deviceRowId) throw deviceUnlinked();
    return this.issueTokens(
      { accountId: account.accountId, username: account.username, deviceId: device.deviceId, deviceRowId, credentialVersion },
      ErrorCode.DeviceUnlinked,
    );
  }

  /**
   * Deletes the token's account once its password is checked: its devices,
   * prekeys, queued messages, refresh tokens and backup go, its sockets are
   * closed with 4403, its tokens stop working, and its username stays taken
   * for the cooling-off period. Messages it sent that are still queued for
   * others stay deliverable under its username.
   *
   * @throws RelayException INVALID_CREDENTIALS for a wrong password;
   *   CREDENTIALS_CHANGED when the password changed meanwhile
   */
  async deleteAccount(device: AuthenticatedDevice, request: DeleteAccountRequest): Promise<void> {
    const account = await this.verifiedAccount(device, request.password);
    if (!(await this.accounts.deleteAccount(account.accountId, account.credentialVersion, account.username, this.clock.now()))) {
      throw credentialsChanged();
    }
    this.delivery.closeAccount(account.accountId, CloseCode.CredentialsChanged, ErrorCode.CredentialsChanged);
  }

  /**
   * The token's account, once `password` is checked against it.
   * @throws RelayException INVALID_CREDENTIALS, INVALID_TOKEN (the account no longer exists)
   */
  private async verifiedAccount(device: AuthenticatedDevice, password: string): Promise<AccountCredentials> {
    const account = await this.accounts.findCredentialsById(device.accountId);
    if (!account) throw new RelayException(ErrorCode.InvalidToken, 'The token names an account that does not exist');
    if (!(await this.passwordMatches(account, password))) {
      throw new RelayException(ErrorCode.InvalidCredentials, 'The password is wrong');
    }
    // The password of the version the token was issued under, not of a later one.
    if (account.credentialVersion !== device.credentialVersion) throw credentialsChanged();
    return account;
  }

  /** Takes as long for an unknown account as for a known one. */
  private async passwordMatches(account: AccountCredentials | null, password: string): Promise<boolean> {
    const passwordHash = account?.passwordHash ?? (await this.getDummyHash());
    const matches = await argon2.verify(passwordHash, password).catch(() => false);
    return account !== null && matches;
  }

  /**
   * A new access and refresh token pair for the device (also for a device
   * just linked, by the devices module).
   * @param ifDeviceGone the code to refuse with when the device's row is gone meanwhile (unlinked, account deleted)
   */
  async issueTokens(device: DeviceIdentity, ifDeviceGone: ErrorCode = ErrorCode.DeviceUnlinked): Promise<AuthResponse> {
    const claims: Omit<AccessTokenClaims, 'exp'> = {
      sub: device.accountId,
      dev: device.deviceId,
      did: device.deviceRowId,
      usr: device.username,
      cv: device.credentialVersion,
    };
    const accessToken = await this.jwt.signAsync(claims, accessTokenSignOptions(this.config));
    const refreshToken = randomBytes(REFRESH_TOKEN_BYTES).toString('base64url');
    const expiresAt = new Date(Date.now() + this.config.refreshTokenTtlDays * DAY_MS);
    if (!(await this.accounts.storeRefreshToken(device, hashRefreshToken(refreshToken), expiresAt))) {
      throw new RelayException(ifDeviceGone, 'The device no longer exists');
    }
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

function deviceUnlinked(): RelayException {
  return new RelayException(ErrorCode.DeviceUnlinked, 'This device was unlinked from its account');
}

function credentialsChanged(): RelayException {
  return new RelayException(ErrorCode.CredentialsChanged, 'The password changed meanwhile; sign in again');
}

/** Refresh tokens are stored as their SHA-256 only: a database leak yields no usable token. */
export function hashRefreshToken(token: string): Uint8Array<ArrayBuffer> {
  return new Uint8Array(createHash('sha256').update(token).digest());
}

import { Inject, Injectable } from '@nestjs/common';
import { JwtService, type JwtSignOptions, type JwtVerifyOptions } from '@nestjs/jwt';
import { isUUID } from 'class-validator';
import { DEVICE_ID_MAX, DEVICE_ID_MIN, ErrorCode } from '@chat/protocol';
import { RelayException } from '../common/relay.exception.js';
import { RELAY_CONFIG, type RelayConfig } from '../config/relay-config.js';
import { AuthRepository } from './auth.repository.js';
import type { AuthenticatedDevice } from './authenticated-device.js';

export const TOKEN_ISSUER = 'chat-relay';
export const TOKEN_AUDIENCE = 'chat-relay';
/** The one algorithm the relay signs and accepts; pinning it rules out `alg: none` and key confusion. */
export const TOKEN_ALGORITHM = 'HS256';

/** Claims of a relay access token. */
export interface AccessTokenClaims {
  sub: string;
  dev: number;
  /**
   * The device's row id. Device ids are reused after an unlink, row ids never:
   * a token of an unlinked device 2 does not work for the device linked as 2 later.
   */
  did: string;
  usr: string;
  /** The account's credential version at issue; a password change makes every earlier token stale. */
  cv: number;
  exp: number;
}

/** Options shared by the HTTP strategy and `TokenVerifier`, so both verify the same way. */
export function accessTokenVerifyOptions(config: RelayConfig): JwtVerifyOptions & { algorithms: ['HS256'] } {
  return { secret: config.jwt.secret, algorithms: [TOKEN_ALGORITHM], issuer: TOKEN_ISSUER, audience: TOKEN_AUDIENCE };
}

export function accessTokenSignOptions(config: RelayConfig): JwtSignOptions {
  return {
    secret: config.jwt.secret,
    algorithm: TOKEN_ALGORITHM,
    issuer: TOKEN_ISSUER,
    audience: TOKEN_AUDIENCE,
    expiresIn: config.jwt.ttlSeconds,
  };
}

/** The device a verified token's claims speak for. @throws RelayException INVALID_TOKEN when a claim is missing or malformed. */
export function deviceFromClaims(claims: unknown): AuthenticatedDevice {
  return verifiedClaims(claims).device;
}

function verifiedClaims(claims: unknown): { device: AuthenticatedDevice; deviceRowId: string } {
  const { sub, dev, did, usr, cv, exp } = (claims ?? {}) as Partial<Record<keyof AccessTokenClaims, unknown>>;
  if (
    typeof sub !== 'string' ||
    !isUUID(sub) ||
    typeof did !== 'string' ||
    !isUUID(did) ||
    typeof usr !== 'string' ||
    typeof exp !== 'number' ||
    !Number.isInteger(dev) ||
    (dev as number) < DEVICE_ID_MIN ||
    (dev as number) > DEVICE_ID_MAX ||
    !Number.isInteger(cv) ||
    (cv as number) < 0
  ) {
    throw new RelayException(ErrorCode.InvalidToken, 'The access token is invalid');
  }
  return {
    device: { accountId: sub, username: usr, deviceId: dev as number, credentialVersion: cv as number, expiresAt: exp },
    deviceRowId: did,
  };
}

/**
 * Every access-token check: the WebSocket handshake calls `verify`, the HTTP
 * strategy (which has verified the signature with the same options) calls
 * `deviceOf`. Both end in `assertCurrent`, one primary-key look-up of the
 * account and its device, so that a password change, an account deletion or
 * an unlink ends every token issued before it on every relay instance at
 * once, with no cache.
 */
@Injectable()
export class TokenVerifier {
  constructor(
    private readonly jwt: JwtService,
    @Inject(RELAY_CONFIG) private readonly config: RelayConfig,
    private readonly accounts: AuthRepository,
  ) {}

  /** @throws RelayException TOKEN_EXPIRED, CREDENTIALS_CHANGED, DEVICE_UNLINKED, or INVALID_TOKEN for anything else wrong with it. */
  async verify(token: string): Promise<AuthenticatedDevice> {
    let claims: unknown;
    try {
      claims = this.jwt.verify(token, accessTokenVerifyOptions(this.config));
    } catch (error) {
      throw tokenException(error);
    }
    return this.deviceOf(claims);
  }

  /** The device of claims whose signature is verified. @throws RelayException CREDENTIALS_CHANGED, DEVICE_UNLINKED, INVALID_TOKEN */
  async deviceOf(claims: unknown): Promise<AuthenticatedDevice> {
    const { device, deviceRowId } = verifiedClaims(claims);
    await this.assertCurrent(device, deviceRowId);
    return device;
  }

  /**
   * @param deviceRowId the token's device row; without it, whichever device
   *   the account has under `device.deviceId` counts
   * @throws RelayException INVALID_TOKEN when the account no longer exists
   *   (deleted); DEVICE_UNLINKED when the account exists and the device does
   *   not (unlinked); CREDENTIALS_CHANGED when the account's password changed
   *   since the token was issued
   */
  async assertCurrent(device: AuthenticatedDevice, deviceRowId?: string): Promise<void> {
    const state = await this.accounts.findTokenState(device.accountId, device.deviceId, deviceRowId);
    if (state === null) throw new RelayException(ErrorCode.InvalidToken, 'The token names an account that does not exist');
    if (!state.deviceExists) {
      throw new RelayException(ErrorCode.DeviceUnlinked, 'The token names a device that was unlinked from its account');
    }
    const { credentialVersion } = state;
    if (credentialVersion !== device.credentialVersion) {
      throw new RelayException(ErrorCode.CredentialsChanged, 'The password changed since this token was issued; sign in again');
    }
  }
}

/** The exception a failed jsonwebtoken verification answers as. */
export function tokenException(error: unknown): RelayException {
  if (error instanceof RelayException) return error;
  // By name: passport-jwt and @nestjs/jwt may load different copies of jsonwebtoken.
  if (error instanceof Error && error.name === 'TokenExpiredError') return new RelayException(ErrorCode.TokenExpired, 'The access token has expired');
  return new RelayException(ErrorCode.InvalidToken, 'The access token is invalid');
}

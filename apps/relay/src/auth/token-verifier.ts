import { Inject, Injectable } from '@nestjs/common';
import { JwtService, type JwtSignOptions, type JwtVerifyOptions } from '@nestjs/jwt';
import { DEVICE_ID_MAX, DEVICE_ID_MIN, ErrorCode } from '@chat/protocol';
import { RelayException } from '../common/relay.exception.js';
import { RELAY_CONFIG, type RelayConfig } from '../config/relay-config.js';
import type { AuthenticatedDevice } from './authenticated-device.js';

export const TOKEN_ISSUER = 'chat-relay';
export const TOKEN_AUDIENCE = 'chat-relay';
/** The one algorithm the relay signs and accepts; pinning it rules out `alg: none` and key confusion. */
export const TOKEN_ALGORITHM = 'HS256';

/** Claims of a relay access token. */
export interface AccessTokenClaims {
  sub: string;
  dev: number;
  usr: string;
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
  const { sub, dev, usr, exp } = (claims ?? {}) as Partial<Record<keyof AccessTokenClaims, unknown>>;
  if (
    typeof sub !== 'string' ||
    typeof usr !== 'string' ||
    typeof exp !== 'number' ||
    !Number.isInteger(dev) ||
    (dev as number) < DEVICE_ID_MIN ||
    (dev as number) > DEVICE_ID_MAX
  ) {
    throw new RelayException(ErrorCode.InvalidToken, 'The access token is invalid');
  }
  return { accountId: sub, username: usr, deviceId: dev as number, expiresAt: exp };
}

/** The access-token check of the WebSocket handshake; the HTTP guard applies the same options. */
@Injectable()
export class TokenVerifier {
  constructor(
    private readonly jwt: JwtService,
    @Inject(RELAY_CONFIG) private readonly config: RelayConfig,
  ) {}

  /** @throws RelayException TOKEN_EXPIRED, or INVALID_TOKEN for anything else wrong with it. */
  verify(token: string): AuthenticatedDevice {
    let claims: unknown;
    try {
      claims = this.jwt.verify(token, accessTokenVerifyOptions(this.config));
    } catch (error) {
      throw tokenException(error);
    }
    return deviceFromClaims(claims);
  }
}

/** The exception a failed jsonwebtoken verification answers as. */
export function tokenException(error: unknown): RelayException {
  if (error instanceof RelayException) return error;
  // By name: passport-jwt and @nestjs/jwt may load different copies of jsonwebtoken.
  if (error instanceof Error && error.name === 'TokenExpiredError') return new RelayException(ErrorCode.TokenExpired, 'The access token has expired');
  return new RelayException(ErrorCode.InvalidToken, 'The access token is invalid');
}

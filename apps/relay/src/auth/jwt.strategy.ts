import { Inject, Injectable } from '@nestjs/common';
import { PassportStrategy } from '@nestjs/passport';
import { ExtractJwt, Strategy } from 'passport-jwt';
import { RELAY_CONFIG, type RelayConfig } from '../config/relay-config.js';
import type { AuthenticatedDevice } from './authenticated-device.js';
import { accessTokenVerifyOptions, TokenVerifier } from './token-verifier.js';

/** `Authorization: Bearer <jwt>` on HTTP, verified with the options `TokenVerifier` uses. */
@Injectable()
export class JwtStrategy extends PassportStrategy(Strategy, 'jwt') {
  constructor(
    @Inject(RELAY_CONFIG) config: RelayConfig,
    private readonly verifier: TokenVerifier,
  ) {
    const { secret, algorithms, issuer, audience } = accessTokenVerifyOptions(config);
    super({
      jwtFromRequest: ExtractJwt.fromAuthHeaderAsBearerToken(),
      secretOrKey: secret as string,
      algorithms,
      issuer: issuer as string,
      audience: audience as string,
      ignoreExpiration: false,
    });
  }

  /** Runs after passport-jwt verified the signature, issuer, audience and expiry. */
  validate(claims: unknown): Promise<AuthenticatedDevice> {
    return this.verifier.deviceOf(claims);
  }
}

import { Inject, Injectable, type CanActivate, type ExecutionContext } from '@nestjs/common';
import type { RateLimiterAbstract } from 'rate-limiter-flexible';
import { canonicalUsername } from '@chat/protocol';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import { consumeOrRefuse, RATE_LIMITER_FACTORY, type RateLimiterFactory } from '../common/rate-limiter.js';
import { RELAY_CONFIG, type RelayConfig } from '../config/relay-config.js';

/**
 * Limits bundle fetches (`GET /v1/keys/:username`) per pair of requesting
 * account and target username, and per requesting account over all targets,
 * so that no one drains another user's one-time prekeys: a requester that
 * keeps fetching one target is refused long before that target's batch runs
 * out, and many requesters together only reach the last-resort Kyber key,
 * with which sessions still form (the PQXDH last-resort prekey).
 *
 * Runs after `JwtAuthGuard` (the requester comes from the token) and before
 * the handler, so a refused fetch claims nothing. Every fetch let through
 * counts, also one that then fails (an unknown name, a malformed one), so
 * that names cannot be probed for free.
 */
@Injectable()
export class BundleFetchLimitGuard implements CanActivate {
  private readonly perPair: RateLimiterAbstract;
  private readonly perRequester: RateLimiterAbstract;

  constructor(@Inject(RELAY_CONFIG) config: RelayConfig, @Inject(RATE_LIMITER_FACTORY) createLimiter: RateLimiterFactory) {
    const { perPair, perRequester } = config.bundleFetchLimits;
    this.perPair = createLimiter({ name: 'bundle-fetch-pair', ...perPair });
    this.perRequester = createLimiter({ name: 'bundle-fetch-requester', ...perRequester });
  }

  /** @throws RelayException RATE_LIMITED with `retryAfter` in seconds */
  async canActivate(context: ExecutionContext): Promise<boolean> {
    const request = context.switchToHttp().getRequest<{ user: AuthenticatedDevice; params: { username?: string } }>();
    const requester = request.user.accountId;
    const target = canonicalUsername(request.params.username ?? '');
    await consumeOrRefuse(this.perPair, `${requester}:${target}`, REFUSAL);
    await consumeOrRefuse(this.perRequester, requester, REFUSAL);
    return true;
  }
}

const REFUSAL = 'Too many bundle fetches; retry later';

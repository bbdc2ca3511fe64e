import { Inject, Injectable, type CanActivate, type ExecutionContext } from '@nestjs/common';
import type { Request } from 'express';
import { RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible';
import { ErrorCode } from '@chat/protocol';
import { RATE_LIMITER_FACTORY, type RateLimiterFactory } from '../common/rate-limiter.js';
import { RelayException } from '../common/relay.exception.js';
import { RELAY_CONFIG, type RelayConfig } from '../config/relay-config.js';

/**
 * The provisioning routes need no account, so they are limited per client IP
 * (the socket's peer address; behind a reverse proxy, Express's `trust proxy`
 * decides what `request.ip` is). Every request let through counts, also one
 * that then fails, so that slot ids and secrets cannot be probed for free.
 */
abstract class PerIpLimitGuard implements CanActivate {
  protected constructor(
    private readonly limiter: RateLimiterAbstract,
    private readonly what: string,
  ) {}

  /** @throws RelayException RATE_LIMITED with `retryAfter` in seconds */
  async canActivate(context: ExecutionContext): Promise<boolean> {
    const request = context.switchToHttp().getRequest<Request>();
    const ip = request.ip ?? request.socket.remoteAddress ?? 'unknown';
    try {
      await this.limiter.consume(ip);
    } catch (rejection) {
      // A refusal is a RateLimiterRes; anything else is the store failing, and stays an error.
      if (!(rejection instanceof RateLimiterRes)) throw rejection;
      const retryAfter = Math.max(1, Math.ceil(rejection.msBeforeNext / 1000));
      throw new RelayException(ErrorCode.RateLimited, `Too many ${this.what}; retry later`, undefined, retryAfter);
    }
    return true;
  }
}

/** `POST /v1/provisioning`: slots created per client IP. */
@Injectable()
export class ProvisioningSlotLimitGuard extends PerIpLimitGuard {
  constructor(@Inject(RELAY_CONFIG) config: RelayConfig, @Inject(RATE_LIMITER_FACTORY) createLimiter: RateLimiterFactory) {
    super(createLimiter({ name: 'provisioning-slot-ip', ...config.provisioningLimits.slotsPerIp }), 'provisioning slots');
  }
}

/** `POST /v1/provisioning/:id/receive` and `POST /v1/devices/link`, together: reads of slots per client IP. */
@Injectable()
export class ProvisioningReceiveLimitGuard extends PerIpLimitGuard {
  constructor(@Inject(RELAY_CONFIG) config: RelayConfig, @Inject(RATE_LIMITER_FACTORY) createLimiter: RateLimiterFactory) {
    super(createLimiter({ name: 'provisioning-receive-ip', ...config.provisioningLimits.receivesPerIp }), 'provisioning requests');
  }
}

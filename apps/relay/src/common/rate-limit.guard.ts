import { Injectable, SetMetadata, type CanActivate, type ExecutionContext } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import type { Request } from 'express';
import { canonicalUsername } from '@chat/protocol';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import { RateLimitName, RateLimits, sendPerDeviceKey, sendPerPairKey } from './rate-limits.js';

const RATE_LIMITS_METADATA = 'relay:rate-limits';

/**
 * The limits a route counts, in order, checked by `RateLimitGuard`. Put the
 * guard after `JwtAuthGuard` on routes whose limits are per account or device.
 */
export const RateLimit = (...names: RateLimitName[]) => SetMetadata(RATE_LIMITS_METADATA, names);

type LimitedRequest = Request & { user?: AuthenticatedDevice; body?: Record<string, unknown> };

/** The client IP: the socket's peer address, or what Express's `trust proxy` setting makes of X-Forwarded-For. */
export function clientIpOf(request: Pick<Request, 'ip' | 'socket'>): string {
  return request.ip ?? request.socket.remoteAddress ?? 'unknown';
}

/** The key each limit counts a request under; undefined skips the limit (the request is refused by validation next). */
const KEY_OF: Record<RateLimitName, (request: LimitedRequest) => string | undefined> = {
  [RateLimitName.Register]: clientIpOf,
  [RateLimitName.LoginPerIp]: clientIpOf,
  [RateLimitName.LoginPerUsername]: (request) => {
    const username = request.body?.['username'];
    return typeof username === 'string' ? canonicalUsername(username) : undefined;
  },
  [RateLimitName.Refresh]: clientIpOf,
  [RateLimitName.PasswordCheck]: (request) => authenticated(request).accountId,
  [RateLimitName.SendPerDevice]: (request) => sendPerDeviceKey(authenticated(request)),
  [RateLimitName.SendPerPair]: (request) => sendPerPairKey(authenticated(request), request.body?.['to']),
  [RateLimitName.SealedSendPerIp]: clientIpOf,
  [RateLimitName.InboundBytesPerAccount]: (request) => authenticated(request).accountId,
  [RateLimitName.InboundBytesPerIp]: clientIpOf,
};

function authenticated(request: LimitedRequest): AuthenticatedDevice {
  // A wiring mistake (the guard before JwtAuthGuard), not a client's: fail loudly.
  if (!request.user) throw new Error('RateLimitGuard: a per-account limit on a route without JwtAuthGuard before it');
  return request.user;
}

/**
 * Counts the request against the limits named by `@RateLimit(...)`, before
 * the handler runs, so a refused request does nothing. Every request let
 * through counts, also one that then fails (a wrong password, a bad body),
 * so that failures cannot be probed for free.
 */
@Injectable()
export class RateLimitGuard implements CanActivate {
  constructor(
    private readonly reflector: Reflector,
    private readonly limits: RateLimits,
  ) {}

  /** @throws RelayException RATE_LIMITED with `retryAfter` in seconds */
  async canActivate(context: ExecutionContext): Promise<boolean> {
    const names = this.reflector.getAllAndOverride<RateLimitName[] | undefined>(RATE_LIMITS_METADATA, [context.getHandler(), context.getClass()]) ?? [];
    const request = context.switchToHttp().getRequest<LimitedRequest>();
    for (const name of names) {
      const key = KEY_OF[name](request);
      if (key !== undefined) await this.limits.consume(name, key);
    }
    return true;
  }
}

import { Injectable, type CallHandler, type ExecutionContext, type NestInterceptor } from '@nestjs/common';
import type { Request } from 'express';
import { from, switchMap, type Observable } from 'rxjs';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import { clientIpOf } from './rate-limit.guard.js';
import { RateLimits } from './rate-limits.js';

/**
 * The inbound byte budget of HTTP requests: a request's body bytes count
 * against its account when it is authenticated, else against its client IP.
 * Runs after the guards (so `request.user` is known) and before validation,
 * so an invalid body counts too. WebSocket frames are counted by the gateway.
 */
@Injectable()
export class InboundBytesInterceptor implements NestInterceptor {
  constructor(private readonly limits: RateLimits) {}

  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    if (context.getType() !== 'http') return next.handle();
    const request = context.switchToHttp().getRequest<Request & { user?: AuthenticatedDevice }>();
    const bytes = bodyBytesOf(request);
    if (bytes === 0) return next.handle();
    const source = request.user ? { accountId: request.user.accountId } : { ip: clientIpOf(request) };
    return from(this.limits.consumeInboundBytes(source, bytes)).pipe(switchMap(() => next.handle()));
  }
}

/**
 * The body's size on the wire: Content-Length (the body parser has checked
 * that the body had that length); for a chunked body without one, the size
 * of the parsed JSON.
 */
function bodyBytesOf(request: Request): number {
  const declared = Number(request.headers['content-length']);
  if (Number.isSafeInteger(declared) && declared >= 0) return declared;
  const body: unknown = request.body;
  return body === undefined || body === null ? 0 : Buffer.byteLength(JSON.stringify(body));
}

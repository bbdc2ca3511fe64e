import { Injectable, type ExecutionContext } from '@nestjs/common';
import { JwtAuthGuard } from '../auth/jwt-auth.guard.js';

/**
 * Authenticates a request that carries an `Authorization` header, exactly
 * as `JwtAuthGuard` does (a bad token is refused); lets one without it
 * through unauthenticated (`request.user` stays undefined).
 */
@Injectable()
export class OptionalJwtAuthGuard extends JwtAuthGuard {
  override canActivate(context: ExecutionContext) {
    const request = context.switchToHttp().getRequest<{ headers: Record<string, string | string[] | undefined> }>();
    if (request.headers.authorization === undefined) return true;
    return super.canActivate(context);
  }
}

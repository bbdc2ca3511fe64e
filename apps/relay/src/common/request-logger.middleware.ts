import { Injectable, Logger, type NestMiddleware } from '@nestjs/common';
import type { NextFunction, Request, Response } from 'express';

/**
 * One line per request: method, path, status and duration. Deliberately
 * nothing else: no body, no query string, no header (the Authorization header
 * carries a bearer token), no client address. The path is the matched
 * route's pattern (`/v1/accounts/:accountId`), so that what a path names
 * (whom a device looked up, whose keys it fetched) stays out of the log.
 */
@Injectable()
export class RequestLoggerMiddleware implements NestMiddleware {
  private readonly logger = new Logger('HTTP');

  use(request: Request, response: Response, next: NextFunction): void {
    const started = process.hrtime.bigint();
    response.on('finish', () => {
      const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
      this.logger.debug(`${request.method} ${routeOf(request)} ${response.statusCode} ${elapsedMs.toFixed(1)}ms`);
    });
    next();
  }
}

/** The matched route's pattern; for a request no route matched, its path with every segment after `/v1/<feature>` elided. */
function routeOf(request: Request): string {
  const route = (request as Request & { route?: { path?: unknown } }).route;
  if (route && typeof route.path === 'string') return `${request.baseUrl}${route.path}`;
  const segments = request.originalUrl.split('?')[0]?.split('/') ?? [];
  return segments.length > 3 ? `${segments.slice(0, 3).join('/')}/…` : segments.join('/');
}

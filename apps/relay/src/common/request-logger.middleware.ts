import { Injectable, Logger, type NestMiddleware } from '@nestjs/common';
import type { NextFunction, Request, Response } from 'express';

/**
 * One line per request: method, path, status and duration. Deliberately
 * nothing else: no body, no query string, no header (the Authorization header
 * carries a bearer token).
 */
@Injectable()
export class RequestLoggerMiddleware implements NestMiddleware {
  private readonly logger = new Logger('HTTP');

  use(request: Request, response: Response, next: NextFunction): void {
    const started = process.hrtime.bigint();
    response.on('finish', () => {
      const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
      this.logger.debug(`${request.method} ${request.originalUrl.split("?")[0]} ${response.statusCode} ${elapsedMs.toFixed(1)}ms`);
    });
    next();
  }
}

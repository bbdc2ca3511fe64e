import { Catch, HttpException, HttpStatus, Logger, type ArgumentsHost, type ExceptionFilter } from '@nestjs/common';
import type { Response } from 'express';
import { ErrorCode, type ErrorBody } from '@chat/protocol';
import { HTTP_STATUS_OF, RelayException } from './relay.exception.js';

/**
 * Maps whatever a request threw to `{ code, message, details? }` with the
 * status of its code. Unknown errors become INTERNAL with nothing of their
 * content in the answer; they are logged here, without the request body.
 */
@Catch()
export class HttpExceptionFilter implements ExceptionFilter {
  private readonly logger = new Logger('HttpExceptionFilter');

  catch(exception: unknown, host: ArgumentsHost): void {
    const http = host.switchToHttp();
    const response = http.getResponse<Response>();
    const request = http.getRequest<{ method: string; path: string }>();
    const relayException = toRelayException(exception);
    if (relayException.code === ErrorCode.Internal) {
      this.logger.error(
        `${request.method} ${request.path} failed`,
        exception instanceof Error ? exception.stack : String(exception),
      );
    }
    if (response.headersSent) return;
    if (relayException.retryAfter !== undefined) response.setHeader('Retry-After', String(relayException.retryAfter));
    response.status(HTTP_STATUS_OF[relayException.code]).json(relayException.toBody() satisfies ErrorBody);
  }
}

/** The `RelayException` an error answers as; shared with the WebSocket filter. */
export function toRelayException(exception: unknown): RelayException {
  if (exception instanceof RelayException) return exception;
  if (exception instanceof HttpException) return fromHttpException(exception);
  return new RelayException(ErrorCode.Internal, 'Internal error');
}

/** body-parser errors (http-errors `type`), Nest's own 404 and other framework refusals. */
function fromHttpException(exception: HttpException): RelayException {
  const status = exception.getStatus();
  const cause = exception.cause as { type?: unknown } | undefined;
  if (cause?.type === 'entity.parse.failed') return new RelayException(ErrorCode.MalformedJson, 'The body is not valid JSON');
  if (status === HttpStatus.PAYLOAD_TOO_LARGE) return new RelayException(ErrorCode.PayloadTooLarge, 'The body is too large');
  if (status === HttpStatus.NOT_FOUND) return new RelayException(ErrorCode.NotFound, 'No such route');
  if (status === HttpStatus.UNAUTHORIZED) return new RelayException(ErrorCode.AuthenticationRequired, 'Authentication required');
  if (status >= 400 && status < 500) return new RelayException(ErrorCode.ValidationFailed, 'The request is invalid');
  return new RelayException(ErrorCode.Internal, 'Internal error');
}

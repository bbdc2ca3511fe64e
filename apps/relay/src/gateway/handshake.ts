import type { IncomingMessage } from 'node:http';
import { Logger } from '@nestjs/common';
import { ErrorCode, type ErrorBody } from '@chat/protocol';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import type { TokenVerifier } from '../auth/token-verifier.js';
import { toRelayException } from '../common/http-exception.filter.js';
import { HTTP_STATUS_OF, RelayException } from '../common/relay.exception.js';

/** ws's `verifyClient` callback: refuse with a status, a body and headers, or accept. */
export type VerifyClientCallback = (
  verified: boolean,
  code?: number,
  message?: string,
  headers?: Record<string, string>,
) => void;

export type VerifyClient = (info: { req: IncomingMessage }, callback: VerifyClientCallback) => void;

/**
 * Authenticates a WebSocket upgrade before the socket exists: the bearer
 * token is verified as on HTTP (credential version included), and a refusal
 * is an HTTP response with the status and `ErrorBody` of its code (401 for
 * every token problem). The
 * device of an accepted upgrade is kept for `handshakeDeviceOf`.
 */
export class HandshakeAuthenticator {
  private readonly logger = new Logger('WebSocket');
  private readonly devices = new WeakMap<IncomingMessage, AuthenticatedDevice>();

  constructor(private readonly verifier: TokenVerifier) {}

  readonly verifyClient: VerifyClient = (info, callback) => {
    this.verify(info.req).then(
      (device) => {
        this.devices.set(info.req, device);
        callback(true);
      },
      (error: unknown) => {
        const exception = toRelayException(error);
        const body: ErrorBody = exception.toBody();
        callback(false, HTTP_STATUS_OF[exception.code], JSON.stringify(body), {
          'Content-Type': 'application/json; charset=utf-8',
        });
      },
    );
  };

  private async verify(request: IncomingMessage): Promise<AuthenticatedDevice> {
    return this.verifier.verify(bearerToken(request.headers.authorization));
  }

  /** The device the upgrade request authenticated as; undefined if it never passed `verifyClient`. */
  deviceOf(request: IncomingMessage): AuthenticatedDevice | undefined {
    return this.devices.get(request);
  }
}

/** @throws RelayException AUTHENTICATION_REQUIRED when there is no `Authorization: Bearer` header */
function bearerToken(authorization: string | undefined): string {
  const match = /^Bearer (\S+)$/i.exec(authorization ?? '');
  if (!match?.[1]) throw new RelayException(ErrorCode.AuthenticationRequired, 'An access token is required');
  return match[1];
}

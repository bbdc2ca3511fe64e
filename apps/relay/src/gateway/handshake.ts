import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Express, Request } from 'express';
import { ErrorCode, type ErrorBody } from '@chat/protocol';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import type { TokenVerifier } from '../auth/token-verifier.js';
import { toRelayException } from '../common/http-exception.filter.js';
import { clientIpOf } from '../common/rate-limit.guard.js';
import { HTTP_STATUS_OF, RelayException } from '../common/relay.exception.js';

/** ws's `verifyClient` callback: refuse with a status, a body and headers, or accept. */
export type VerifyClientCallback = (
  verified: boolean,
  code?: number,
  message?: string,
  headers?: Record<string, string>,
) => void;

export type VerifyClient = (info: { req: IncomingMessage }, callback: VerifyClientCallback) => void;

export interface HandshakeOptions {
  /** The client address of an upgrade request, as the HTTP side's per-IP limits see it (`clientAddressOfUpgrade`). */
  clientAddressOf: (request: IncomingMessage) => string;
  /** Open sockets one client address may hold (WS_MAX_CONNECTIONS_PER_IP). */
  maxConnectionsPerAddress: number;
}

/**
 * Admits a WebSocket upgrade before the socket exists. First the client
 * address's share of connections: at its cap the upgrade is refused with
 * 429 `TOO_MANY_CONNECTIONS` before the token is even looked at, so that
 * holding sockets open costs an attacker connections, not the relay token
 * checks. Then the bearer token, verified as on HTTP (credential version
 * included); a refusal is an HTTP response with the status and `ErrorBody`
 * of its code (401 for every token problem). The device of an accepted
 * upgrade is kept for `deviceOf`.
 */
export class HandshakeAuthenticator {
  private readonly devices = new WeakMap<IncomingMessage, AuthenticatedDevice>();
  private readonly connections: ConnectionsPerAddress;

  constructor(
    private readonly verifier: TokenVerifier,
    private readonly options: HandshakeOptions,
  ) {
    this.connections = new ConnectionsPerAddress(options.maxConnectionsPerAddress);
  }

  readonly verifyClient: VerifyClient = (info, callback) => {
    if (!this.connections.admit(this.options.clientAddressOf(info.req), info.req.socket as Socket)) {
      refuse(callback, new RelayException(ErrorCode.TooManyConnections, 'Too many open WebSockets from this address'));
      return;
    }
    this.verify(info.req).then(
      (device) => {
        this.devices.set(info.req, device);
        callback(true);
      },
      (error: unknown) => refuse(callback, toRelayException(error)),
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

function refuse(callback: VerifyClientCallback, exception: RelayException): void {
  const body: ErrorBody = exception.toBody();
  callback(false, HTTP_STATUS_OF[exception.code], JSON.stringify(body), { 'Content-Type': 'application/json; charset=utf-8' });
}

/**
 * Connections per client address, each counted from its upgrade request
 * until its TCP connection closes, however it ends: refused after the
 * count (a bad token), closed by either side, terminated, or dropped.
 */
export class ConnectionsPerAddress {
  private readonly open = new Map<string, number>();

  constructor(private readonly limit: number) {}

  /** Counts `socket` against `address` until it closes; false, and not counted, when the address is at its limit. */
  admit(address: string, socket: Socket): boolean {
    const count = this.open.get(address) ?? 0;
    if (count >= this.limit) return false;
    this.open.set(address, count + 1);
    const release = () => {
      const left = (this.open.get(address) ?? 1) - 1;
      if (left > 0) this.open.set(address, left);
      else this.open.delete(address);
    };
    // A socket that closed already emits no 'close' any more.
    if (socket.closed) release();
    else socket.once('close', release);
    return true;
  }

  countOf(address: string): number {
    return this.open.get(address) ?? 0;
  }
}

/**
 * The client address of an upgrade request exactly as Express's `req.ip`
 * makes it for an HTTP request (the app's `trust proxy`, from TRUST_PROXY,
 * applied to X-Forwarded-For), so that per-address limits of both sides
 * agree. An upgrade never passes through Express, so its request is read
 * through the app's request prototype, where `ip` is defined.
 */
export function clientAddressOfUpgrade(app: Pick<Express, 'request'>, request: IncomingMessage): string {
  const view = Object.create(app.request, { headers: { value: request.headers }, socket: { value: request.socket } }) as Request;
  return clientIpOf(view);
}

/** @throws RelayException AUTHENTICATION_REQUIRED when there is no `Authorization: Bearer` header */
function bearerToken(authorization: string | undefined): string {
  const match = /^Bearer (\S+)$/i.exec(authorization ?? '');
  if (!match?.[1]) throw new RelayException(ErrorCode.AuthenticationRequired, 'An access token is required');
  return match[1];
}

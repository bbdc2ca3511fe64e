import { createParamDecorator, type ExecutionContext } from '@nestjs/common';

/** Who a verified access token speaks for. The only source of a sender's identity. */
export interface AuthenticatedDevice {
  accountId: string;
  username: string;
  deviceId: number;
  /** The account's credential version the token was issued under (claim `cv`). */
  credentialVersion: number;
  /** Token expiry, seconds since the epoch (the gateway closes the socket then). */
  expiresAt: number;
}

/** Injects the `AuthenticatedDevice` that `JwtAuthGuard` put on the request. */
export const CurrentDevice = createParamDecorator(
  (_data: unknown, context: ExecutionContext): AuthenticatedDevice =>
    context.switchToHttp().getRequest<{ user: AuthenticatedDevice }>().user,
);

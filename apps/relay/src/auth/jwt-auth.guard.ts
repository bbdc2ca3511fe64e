import { Injectable } from '@nestjs/common';
import { AuthGuard } from '@nestjs/passport';
import { ErrorCode } from '@chat/protocol';
import { RelayException } from '../common/relay.exception.js';
import type { AuthenticatedDevice } from './authenticated-device.js';
import { tokenException } from './token-verifier.js';

/** Requires a valid access token; the handler reads the device with `@CurrentDevice()`. */
@Injectable()
export class JwtAuthGuard extends AuthGuard('jwt') {
  override handleRequest<TUser = AuthenticatedDevice>(error: unknown, device: unknown, info: unknown): TUser {
    if (error) throw tokenException(error);
    if (device) return device as TUser;
    // passport-jwt reports a missing token as this plain Error, a bad one as a jsonwebtoken error.
    if (info instanceof Error && info.name === 'Error' && info.message === 'No auth token') {
      throw new RelayException(ErrorCode.AuthenticationRequired, 'An access token is required');
    }
    throw tokenException(info);
  }
}

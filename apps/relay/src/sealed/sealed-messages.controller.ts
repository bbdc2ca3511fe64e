import { Body, Controller, Headers, HttpCode, Post, Req, UseGuards } from '@nestjs/common';
import {
  ErrorCode,
  MultiRecipientSendRequest,
  SealedSendRequest,
  UNIDENTIFIED_ACCESS_KEY_HEADER,
  type SendMessageResponse,
} from '@chat/protocol';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import { RateLimit, RateLimitGuard } from '../common/rate-limit.guard.js';
import { RateLimitName } from '../common/rate-limits.js';
import { RelayException } from '../common/relay.exception.js';
import { parseAccessKeyHeader } from './access-key.js';
import { OptionalJwtAuthGuard } from './optional-jwt-auth.guard.js';
import { SealedSendService } from './sealed-send.service.js';

const ACCESS_KEY_HEADER = UNIDENTIFIED_ACCESS_KEY_HEADER.toLowerCase();

/**
 * Sends whose sender the relay does not learn. Nothing here logs or keeps
 * anything of the request but what it stores for the recipients.
 */
@Controller('v1/messages')
export class SealedMessagesController {
  constructor(private readonly sealed: SealedSendService) {}

  /** Never authenticated: a token would tie the sealed send to an account. */
  @Post('sealed')
  @HttpCode(201)
  // Per client IP only: counting per sender would tell the relay who sent it.
  @UseGuards(RateLimitGuard)
  @RateLimit(RateLimitName.SealedSendPerIp)
  send(
    @Headers('authorization') authorization: string | undefined,
    @Headers(ACCESS_KEY_HEADER) accessKey: string | undefined,
    @Body() request: SealedSendRequest,
  ): Promise<SendMessageResponse> {
    if (authorization !== undefined) {
      throw new RelayException(ErrorCode.ValidationFailed, 'The request is invalid', [
        'Authorization: a sealed send must not be authenticated',
      ]);
    }
    return this.sealed.send(request, parseAccessKeyHeader(accessKey));
  }

  /** Unauthenticated with the combined access key, or authenticated (the fallback) without one. */
  @Post('multi-recipient')
  @HttpCode(201)
  @UseGuards(OptionalJwtAuthGuard, RateLimitGuard)
  @RateLimit(RateLimitName.SealedSendPerIp)
  sendMultiRecipient(
    @Req() http: { user?: AuthenticatedDevice },
    @Headers(ACCESS_KEY_HEADER) accessKey: string | undefined,
    @Body() request: MultiRecipientSendRequest,
  ): Promise<SendMessageResponse> {
    if (http.user) {
      if (accessKey !== undefined) {
        throw new RelayException(ErrorCode.ValidationFailed, 'The request is invalid', [
          `${UNIDENTIFIED_ACCESS_KEY_HEADER}: must be absent from an authenticated send`,
        ]);
      }
      return this.sealed.sendMultiRecipient(request, { device: http.user });
    }
    return this.sealed.sendMultiRecipient(request, { accessKey: parseAccessKeyHeader(accessKey) });
  }
}

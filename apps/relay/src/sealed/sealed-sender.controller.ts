import { Body, Controller, Get, HttpCode, HttpStatus, Param, Put, UseGuards } from '@nestjs/common';
import { isUUID } from 'class-validator';
import {
  ErrorCode,
  UnidentifiedAccessRequest,
  type AccountLookupResponse,
  type SenderCertificateResponse,
} from '@chat/protocol';
import { CurrentDevice, type AuthenticatedDevice } from '../auth/authenticated-device.js';
import { JwtAuthGuard } from '../auth/jwt-auth.guard.js';
import { RelayException } from '../common/relay.exception.js';
import { SealedSenderRepository } from './sealed.repository.js';
import { SenderCertificateService } from './sender-certificate.service.js';

/** `GET /v1/certificate/delivery` and the development-only `GET /v1/certificate/trust-root`. */
@Controller('v1/certificate')
export class CertificateController {
  constructor(private readonly certificates: SenderCertificateService) {}

  @Get('delivery')
  @UseGuards(JwtAuthGuard)
  delivery(@CurrentDevice() device: AuthenticatedDevice): Promise<SenderCertificateResponse> {
    return this.certificates.issue(device);
  }

  /** Development convenience only: clients must be configured with the trust root out of band. */
  @Get('trust-root')
  trustRoot(): { trustRoot: string } {
    return this.certificates.trustRoot();
  }
}

/** `PUT /v1/account/unidentified-access`: the token's account's access key and setting. */
@Controller('v1/account')
@UseGuards(JwtAuthGuard)
export class UnidentifiedAccessController {
  constructor(private readonly repository: SealedSenderRepository) {}

  @Put('unidentified-access')
  @HttpCode(HttpStatus.NO_CONTENT)
  async set(@CurrentDevice() device: AuthenticatedDevice, @Body() request: UnidentifiedAccessRequest): Promise<void> {
    const accessKey = new Uint8Array(Buffer.from(request.accessKey, 'base64'));
    if (!(await this.repository.setUnidentifiedAccess(device.accountId, accessKey, request.unrestricted))) {
      throw new RelayException(ErrorCode.InvalidToken, 'The token names an account that does not exist');
    }
  }
}

/**
 * `GET /v1/accounts/:accountId`: the username of the account a sealed
 * message's sender certificate names, for a recipient that has not met it.
 * The relay learns that the caller looked the account up (docs/security.md).
 */
@Controller('v1/accounts')
@UseGuards(JwtAuthGuard)
export class AccountLookupController {
  constructor(private readonly repository: SealedSenderRepository) {}

  @Get(':accountId')
  async lookUp(@Param('accountId') accountId: string): Promise<AccountLookupResponse> {
    if (!isUUID(accountId)) throw new RelayException(ErrorCode.ValidationFailed, 'The request is invalid', ['accountId: must be a UUID']);
    const username = await this.repository.findUsername(accountId.toLowerCase());
    if (username === null) throw new RelayException(ErrorCode.UnknownRecipient, 'No such account');
    return { accountId: accountId.toLowerCase(), username };
  }
}

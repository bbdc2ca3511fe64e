import { Body, Controller, Get, HttpCode, Param, Put, UseGuards } from '@nestjs/common';
import {
  canonicalUsername,
  ErrorCode,
  USERNAME_PATTERN,
  UploadKeysRequest,
  type PreKeyBundleResponse,
  type PreKeyCountResponse,
} from '@chat/protocol';
import { CurrentDevice, type AuthenticatedDevice } from '../auth/authenticated-device.js';
import { JwtAuthGuard } from '../auth/jwt-auth.guard.js';
import { RelayException } from '../common/relay.exception.js';
import { BundleFetchLimitGuard } from './bundle-fetch-limit.guard.js';
import { KeysService } from './keys.service.js';

@Controller('v1/keys')
@UseGuards(JwtAuthGuard)
export class KeysController {
  constructor(private readonly keys: KeysService) {}

  @Put()
  @HttpCode(204)
  async upload(@CurrentDevice() device: AuthenticatedDevice, @Body() request: UploadKeysRequest): Promise<void> {
    await this.keys.upload(device, request);
  }

  // Signal's layout: the collection itself answers with this device's counts,
  // so no path segment beside `:username` can shadow a username.
  @Get()
  count(@CurrentDevice() device: AuthenticatedDevice): Promise<PreKeyCountResponse> {
    return this.keys.count(device);
  }

  @Get(':username')
  @UseGuards(BundleFetchLimitGuard)
  bundle(@CurrentDevice() device: AuthenticatedDevice, @Param('username') username: string): Promise<PreKeyBundleResponse> {
    const canonical = canonicalUsername(username);
    if (!USERNAME_PATTERN.test(canonical)) {
      throw new RelayException(ErrorCode.ValidationFailed, 'The request is invalid', ['username: must be a username']);
    }
    return this.keys.claimBundle(device, canonical);
  }
}

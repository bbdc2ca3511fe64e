import { Body, Controller, Delete, HttpCode, HttpStatus, UseGuards } from '@nestjs/common';
import { DeleteAccountRequest } from '@chat/protocol';
import { RateLimit, RateLimitGuard } from '../common/rate-limit.guard.js';
import { RateLimitName } from '../common/rate-limits.js';
import { AuthService } from './auth.service.js';
import { CurrentDevice, type AuthenticatedDevice } from './authenticated-device.js';
import { JwtAuthGuard } from './jwt-auth.guard.js';

// The account comes from the token only: no path names an account.
@Controller('v1/account')
@UseGuards(JwtAuthGuard)
export class AccountController {
  constructor(private readonly auth: AuthService) {}

  @Delete()
  @HttpCode(HttpStatus.NO_CONTENT)
  // After the class's JwtAuthGuard: counted per account, with password changes.
  @UseGuards(RateLimitGuard)
  @RateLimit(RateLimitName.PasswordCheck)
  async delete(@CurrentDevice() device: AuthenticatedDevice, @Body() request: DeleteAccountRequest): Promise<void> {
    await this.auth.deleteAccount(device, request);
  }
}

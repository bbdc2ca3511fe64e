import { Body, Controller, Get, HttpCode, HttpStatus, Post, UseGuards } from '@nestjs/common';
import { RateLimit, RateLimitGuard } from '../common/rate-limit.guard.js';
import { RateLimitName } from '../common/rate-limits.js';
import { ChangePasswordRequest, LoginRequest, RefreshRequest, RegisterRequest, type AuthResponse } from '@chat/protocol';
import { AuthService } from './auth.service.js';
import { CurrentDevice, type AuthenticatedDevice } from './authenticated-device.js';
import { JwtAuthGuard } from './jwt-auth.guard.js';

@Controller('v1/auth')
export class AuthController {
  constructor(private readonly auth: AuthService) {}

  @Post('register')
  @UseGuards(RateLimitGuard)
  @RateLimit(RateLimitName.Register)
  register(@Body() request: RegisterRequest): Promise<AuthResponse> {
    return this.auth.register(request);
  }

  @Post('login')
  @HttpCode(HttpStatus.OK)
  @UseGuards(RateLimitGuard)
  @RateLimit(RateLimitName.LoginPerIp, RateLimitName.LoginPerUsername)
  login(@Body() request: LoginRequest): Promise<AuthResponse> {
    return this.auth.login(request);
  }

  @Post('refresh')
  @HttpCode(HttpStatus.OK)
  @UseGuards(RateLimitGuard)
  @RateLimit(RateLimitName.Refresh)
  refresh(@Body() request: RefreshRequest): Promise<AuthResponse> {
    return this.auth.refresh(request);
  }

  @Post('password')
  @HttpCode(HttpStatus.OK)
  @UseGuards(JwtAuthGuard, RateLimitGuard)
  @RateLimit(RateLimitName.PasswordCheck)
  changePassword(@CurrentDevice() device: AuthenticatedDevice, @Body() request: ChangePasswordRequest): Promise<AuthResponse> {
    return this.auth.changePassword(device, request);
  }

  /** Who the presented access token speaks for. */
  @Get('me')
  @UseGuards(JwtAuthGuard)
  me(@CurrentDevice() device: AuthenticatedDevice): Pick<AuthenticatedDevice, 'accountId' | 'username' | 'deviceId' | 'expiresAt'> {
    return { accountId: device.accountId, username: device.username, deviceId: device.deviceId, expiresAt: device.expiresAt };
  }
}

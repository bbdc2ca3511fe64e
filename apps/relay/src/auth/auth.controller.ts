import { Body, Controller, Get, HttpCode, HttpStatus, Post, UseGuards } from '@nestjs/common';
import { LoginRequest, RefreshRequest, RegisterRequest, type AuthResponse } from '@chat/protocol';
import { AuthService } from './auth.service.js';
import { CurrentDevice, type AuthenticatedDevice } from './authenticated-device.js';
import { JwtAuthGuard } from './jwt-auth.guard.js';

@Controller('v1/auth')
export class AuthController {
  constructor(private readonly auth: AuthService) {}

  @Post('register')
  register(@Body() request: RegisterRequest): Promise<AuthResponse> {
    return this.auth.register(request);
  }

  @Post('login')
  @HttpCode(HttpStatus.OK)
  login(@Body() request: LoginRequest): Promise<AuthResponse> {
    return this.auth.login(request);
  }

  @Post('refresh')
  @HttpCode(HttpStatus.OK)
  refresh(@Body() request: RefreshRequest): Promise<AuthResponse> {
    return this.auth.refresh(request);
  }

  /** Who the presented access token speaks for. */
  @Get('me')
  @UseGuards(JwtAuthGuard)
  me(@CurrentDevice() device: AuthenticatedDevice): AuthenticatedDevice {
    return device;
  }
}

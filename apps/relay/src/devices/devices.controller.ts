import { Body, Controller, Delete, Get, HttpCode, HttpStatus, Param, Post, UseGuards } from '@nestjs/common';
import { DeviceIdParam, LinkDeviceRequest, type AuthResponse, type ListDevicesResponse } from '@chat/protocol';
import { CurrentDevice, type AuthenticatedDevice } from '../auth/authenticated-device.js';
import { JwtAuthGuard } from '../auth/jwt-auth.guard.js';
import { DevicesService } from './devices.service.js';
import { ProvisioningReceiveLimitGuard } from './provisioning-rate-limit.guard.js';

// The account comes from the token only: no path names an account.
@Controller('v1/devices')
export class DevicesController {
  constructor(private readonly devices: DevicesService) {}

  /** The new device's side: no token yet, the slot's secret proves it. */
  @Post('link')
  @UseGuards(ProvisioningReceiveLimitGuard)
  link(@Body() request: LinkDeviceRequest): Promise<AuthResponse> {
    return this.devices.link(request);
  }

  @Get()
  @UseGuards(JwtAuthGuard)
  list(@CurrentDevice() device: AuthenticatedDevice): Promise<ListDevicesResponse> {
    return this.devices.list(device);
  }

  @Delete(':deviceId')
  @HttpCode(HttpStatus.NO_CONTENT)
  @UseGuards(JwtAuthGuard)
  async unlink(@CurrentDevice() device: AuthenticatedDevice, @Param() { deviceId }: DeviceIdParam): Promise<void> {
    await this.devices.unlink(device, deviceId);
  }
}

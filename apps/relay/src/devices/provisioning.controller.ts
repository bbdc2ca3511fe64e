import { Body, Controller, HttpCode, HttpStatus, Param, Post, Put, Res, UseGuards } from '@nestjs/common';
import type { Response } from 'express';
import {
  ProvisioningMessageRequest,
  ProvisioningReceiveRequest,
  type ProvisioningMessageResponse,
  type ProvisioningSlotResponse,
} from '@chat/protocol';
import { CurrentDevice, type AuthenticatedDevice } from '../auth/authenticated-device.js';
import { JwtAuthGuard } from '../auth/jwt-auth.guard.js';
import { DevicesService } from './devices.service.js';
import { ProvisioningIdParam } from './dto/provisioning-id.param.js';
import { ProvisioningReceiveLimitGuard, ProvisioningSlotLimitGuard } from './provisioning-rate-limit.guard.js';

/** The new device's mailbox while it is being linked. Only approving needs a token. */
@Controller('v1/provisioning')
export class ProvisioningController {
  constructor(private readonly devices: DevicesService) {}

  @Post()
  @UseGuards(ProvisioningSlotLimitGuard)
  create(): Promise<ProvisioningSlotResponse> {
    return this.devices.createSlot();
  }

  @Put(':id')
  @HttpCode(HttpStatus.NO_CONTENT)
  @UseGuards(JwtAuthGuard)
  async approve(
    @CurrentDevice() device: AuthenticatedDevice,
    @Param() { id }: ProvisioningIdParam,
    @Body() request: ProvisioningMessageRequest,
  ): Promise<void> {
    await this.devices.approve(device, id, request);
  }

  /** 200 with the sealed message once approved; 204 without a body before. */
  @Post(':id/receive')
  @HttpCode(HttpStatus.OK)
  @UseGuards(ProvisioningReceiveLimitGuard)
  async receive(
    @Param() { id }: ProvisioningIdParam,
    @Body() request: ProvisioningReceiveRequest,
    @Res({ passthrough: true }) response: Response,
  ): Promise<ProvisioningMessageResponse | undefined> {
    const message = await this.devices.receive(id, request);
    if (message) return message;
    response.status(HttpStatus.NO_CONTENT);
    return undefined;
  }
}

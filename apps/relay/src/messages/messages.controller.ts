import { Body, Controller, Delete, Get, HttpCode, Param, Post, Query, UseGuards } from '@nestjs/common';
import { isUUID } from 'class-validator';
import {
  ErrorCode,
  ListMessagesQuery,
  SendMessageRequest,
  type ListMessagesResponse,
  type SendMessageResponse,
} from '@chat/protocol';
import { CurrentDevice, type AuthenticatedDevice } from '../auth/authenticated-device.js';
import { JwtAuthGuard } from '../auth/jwt-auth.guard.js';
import { RateLimit, RateLimitGuard } from '../common/rate-limit.guard.js';
import { RateLimitName } from '../common/rate-limits.js';
import { RelayException } from '../common/relay.exception.js';
import { MessagesService } from './messages.service.js';

@Controller('v1/messages')
@UseGuards(JwtAuthGuard)
export class MessagesController {
  constructor(private readonly messages: MessagesService) {}

  @Post()
  @HttpCode(201)
  // After the class's JwtAuthGuard; the WebSocket `send` frame counts the same (ChatGateway).
  @UseGuards(RateLimitGuard)
  @RateLimit(RateLimitName.SendPerDevice, RateLimitName.SendPerPair)
  send(@CurrentDevice() sender: AuthenticatedDevice, @Body() request: SendMessageRequest): Promise<SendMessageResponse> {
    return this.messages.send(sender, request);
  }

  @Get()
  list(@CurrentDevice() device: AuthenticatedDevice, @Query() query: ListMessagesQuery): Promise<ListMessagesResponse> {
    return this.messages.list(device, query.limit);
  }

  @Delete(':id')
  @HttpCode(204)
  async ack(@CurrentDevice() device: AuthenticatedDevice, @Param('id') id: string): Promise<void> {
    if (!isUUID(id)) throw new RelayException(ErrorCode.ValidationFailed, 'The request is invalid', ['id: must be a UUID']);
    await this.messages.ack(device, id);
  }
}

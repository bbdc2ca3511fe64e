import { Module } from '@nestjs/common';
import { AuthModule } from '../auth/auth.module.js';
import { KeysModule } from '../keys/keys.module.js';
import { MessagesModule } from '../messages/messages.module.js';
import { ChatGateway } from './chat.gateway.js';
import { DeliveryModule } from './delivery.module.js';

@Module({
  imports: [AuthModule, KeysModule, MessagesModule, DeliveryModule],
  providers: [ChatGateway],
})
export class GatewayModule {}

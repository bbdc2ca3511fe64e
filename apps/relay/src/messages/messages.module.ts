import { Module } from '@nestjs/common';
import { Clock } from '../common/clock.js';
import { DeliveryModule } from '../gateway/delivery.module.js';
import { MessagesController } from './messages.controller.js';
import { MessagesRepository } from './messages.repository.js';
import { MessagesService } from './messages.service.js';
import { RetentionRepository } from './retention.repository.js';
import { RetentionService } from './retention.service.js';

@Module({
  imports: [DeliveryModule],
  controllers: [MessagesController],
  providers: [MessagesService, MessagesRepository, RetentionService, RetentionRepository, Clock],
  exports: [MessagesService, MessagesRepository],
})
export class MessagesModule {}

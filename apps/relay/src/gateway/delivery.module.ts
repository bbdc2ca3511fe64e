import { Module } from '@nestjs/common';
import { DeliveryService } from './delivery.service.js';

/** Its own module so that messages (publishing) and the gateway (connections) share one instance without a cycle. */
@Module({
  providers: [DeliveryService],
  exports: [DeliveryService],
})
export class DeliveryModule {}

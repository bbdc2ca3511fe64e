import { Module } from '@nestjs/common';
import { BusModule } from '../bus/bus.module.js';
import { DeliveryService } from './delivery.service.js';

/** Its own module so that messages (publishing) and the gateway (connections) share one instance without a cycle. */
@Module({
  imports: [BusModule],
  providers: [DeliveryService],
  exports: [DeliveryService],
})
export class DeliveryModule {}

import { Module, type OnApplicationShutdown } from '@nestjs/common';
import { ModuleRef } from '@nestjs/core';
import { RELAY_CONFIG, type RelayConfig } from '../config/relay-config.js';
import { DeliveryBus } from './delivery-bus.js';
import { InProcessDeliveryBus } from './in-process-delivery-bus.js';
import { RedisDeliveryBus } from './redis-delivery-bus.js';

/** The `DeliveryBus`: Redis pub/sub when REDIS_URL is set, else in-process. */
@Module({
  providers: [
    {
      provide: DeliveryBus,
      inject: [RELAY_CONFIG],
      useFactory: (config: RelayConfig): DeliveryBus =>
        config.redisUrl ? new RedisDeliveryBus(config.redisUrl) : new InProcessDeliveryBus(),
    },
  ],
  exports: [DeliveryBus],
})
export class BusModule implements OnApplicationShutdown {
  constructor(private readonly moduleRef: ModuleRef) {}

  /** After the HTTP server and its sockets have closed, so that their last unsubscribes still reach Redis. */
  async onApplicationShutdown(): Promise<void> {
    await this.moduleRef.get(DeliveryBus).close();
  }
}

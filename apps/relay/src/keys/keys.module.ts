import { Module } from '@nestjs/common';
import { DeliveryModule } from '../gateway/delivery.module.js';
import { BundleFetchLimitGuard } from './bundle-fetch-limit.guard.js';
import { KeysController } from './keys.controller.js';
import { KeysRepository } from './keys.repository.js';
import { KeysService } from './keys.service.js';

@Module({
  imports: [DeliveryModule],
  controllers: [KeysController],
  // The guard's counter store comes from the global RateLimitModule (Redis with REDIS_URL).
  providers: [KeysService, KeysRepository, BundleFetchLimitGuard],
  exports: [KeysService],
})
export class KeysModule {}

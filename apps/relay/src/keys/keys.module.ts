import { Module } from '@nestjs/common';
import { inMemoryRateLimiters, RATE_LIMITER_FACTORY } from '../common/rate-limiter.js';
import { DeliveryModule } from '../gateway/delivery.module.js';
import { BundleFetchLimitGuard } from './bundle-fetch-limit.guard.js';
import { KeysController } from './keys.controller.js';
import { KeysRepository } from './keys.repository.js';
import { KeysService } from './keys.service.js';

@Module({
  imports: [DeliveryModule],
  controllers: [KeysController],
  providers: [KeysService, KeysRepository, BundleFetchLimitGuard, { provide: RATE_LIMITER_FACTORY, useValue: inMemoryRateLimiters }],
  exports: [KeysService],
})
export class KeysModule {}

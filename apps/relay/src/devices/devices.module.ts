import { Module } from '@nestjs/common';
import { AuthModule } from '../auth/auth.module.js';
import { Clock } from '../common/clock.js';
import { DeliveryModule } from '../gateway/delivery.module.js';
import { DevicesController } from './devices.controller.js';
import { DevicesRepository } from './devices.repository.js';
import { DevicesService } from './devices.service.js';
import { ProvisioningController } from './provisioning.controller.js';
import { ProvisioningReceiveLimitGuard, ProvisioningSlotLimitGuard } from './provisioning-rate-limit.guard.js';

/** Linked devices: provisioning slots, linking, listing and unlinking. */
@Module({
  imports: [AuthModule, DeliveryModule],
  controllers: [ProvisioningController, DevicesController],
  providers: [
    DevicesService,
    DevicesRepository,
    Clock,
    ProvisioningSlotLimitGuard,
    // Their counter store comes from the global RateLimitModule (Redis with REDIS_URL).
    ProvisioningReceiveLimitGuard,
  ],
})
export class DevicesModule {}

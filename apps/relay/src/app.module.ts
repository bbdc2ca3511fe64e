import { Module, type DynamicModule } from '@nestjs/common';
import { AuthModule } from './auth/auth.module.js';
import { BackupModule } from './backup/backup.module.js';
import { RateLimitModule } from './common/rate-limit.module.js';
import { ConfigModule } from './config/config.module.js';
import { DevicesModule } from './devices/devices.module.js';
import type { RelayConfig } from './config/relay-config.js';
import { GatewayModule } from './gateway/gateway.module.js';
import { HealthModule } from './health/health.module.js';
import { KeysModule } from './keys/keys.module.js';
import { loggingModule } from './logging/logging.js';
import { MessagesModule } from './messages/messages.module.js';
import { MetricsModule } from './metrics/metrics.module.js';
import { PrismaModule } from './prisma/prisma.module.js';
import { RedisModule } from './redis/redis.module.js';
import { SealedSenderModule } from './sealed/sealed-sender.module.js';
import { ShutdownModule } from './shutdown/shutdown.module.js';

/** The whole relay. Built from a validated `RelayConfig` (see `createRelayApp`). */
@Module({})
export class AppModule {
  static forRoot(config: RelayConfig): DynamicModule {
    return {
      module: AppModule,
      imports: [
        // First: its request middleware gives every later log line of a request the request's id.
        loggingModule(config),
        ConfigModule.forRoot(config),
        PrismaModule,
        RedisModule,
        RateLimitModule,
        AuthModule,
        DevicesModule,
        KeysModule,
        MessagesModule,
        SealedSenderModule,
        BackupModule,
        GatewayModule,
        ShutdownModule,
        HealthModule,
        MetricsModule,
      ],
    };
  }
}

import { Module, type DynamicModule, type MiddlewareConsumer, type NestModule } from '@nestjs/common';
import { AuthModule } from './auth/auth.module.js';
import { BackupModule } from './backup/backup.module.js';
import { RequestLoggerMiddleware } from './common/request-logger.middleware.js';
import { ConfigModule } from './config/config.module.js';
import { DevicesModule } from './devices/devices.module.js';
import type { RelayConfig } from './config/relay-config.js';
import { GatewayModule } from './gateway/gateway.module.js';
import { KeysModule } from './keys/keys.module.js';
import { MessagesModule } from './messages/messages.module.js';
import { PrismaModule } from './prisma/prisma.module.js';
import { SealedSenderModule } from './sealed/sealed-sender.module.js';

/** The whole relay. Built from a validated `RelayConfig` (see `createRelayApp`). */
@Module({})
export class AppModule implements NestModule {
  static forRoot(config: RelayConfig): DynamicModule {
    return {
      module: AppModule,
      imports: [ConfigModule.forRoot(config), PrismaModule, AuthModule, DevicesModule, KeysModule, MessagesModule, SealedSenderModule, BackupModule, GatewayModule],
    };
  }

  configure(consumer: MiddlewareConsumer): void {
    consumer.apply(RequestLoggerMiddleware).forRoutes('*path');
  }
}

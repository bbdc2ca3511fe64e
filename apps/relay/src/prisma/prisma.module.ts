import { Global, Module } from '@nestjs/common';
import { RELAY_CONFIG, type RelayConfig } from '../config/relay-config.js';
import { PrismaService } from './prisma.service.js';

@Global()
@Module({
  providers: [
    {
      provide: PrismaService,
      inject: [RELAY_CONFIG],
      useFactory: (config: RelayConfig) => PrismaService.connect(config),
    },
  ],
  exports: [PrismaService],
})
export class PrismaModule {}

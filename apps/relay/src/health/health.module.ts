import { Module } from '@nestjs/common';
import { TerminusModule } from '@nestjs/terminus';
import { ShutdownModule } from '../shutdown/shutdown.module.js';
import { HealthController } from './health.controller.js';
import { RedisHealthProbe } from './redis-health.js';

@Module({
  // Terminus logs a failed check with its error; the log rule keeps errors of the probes to the JSON answer.
  imports: [TerminusModule.forRoot({ logger: false }), ShutdownModule],
  controllers: [HealthController],
  providers: [RedisHealthProbe],
})
export class HealthModule {}

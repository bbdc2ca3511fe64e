import { Global, Module } from '@nestjs/common';
import { MetricsController } from './metrics.controller.js';
import { MetricsRepository } from './metrics.repository.js';
import { RelayMetrics } from './relay-metrics.js';

/** Global, so that messages, sealed sends and the gateway count without importing it. */
@Global()
@Module({
  controllers: [MetricsController],
  providers: [RelayMetrics, MetricsRepository],
  exports: [RelayMetrics],
})
export class MetricsModule {}

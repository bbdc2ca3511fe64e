import { Controller, Get, Res } from '@nestjs/common';
import type { Response } from 'express';
import { RelayMetrics } from './relay-metrics.js';

/**
 * `GET /metrics`: the Prometheus text exposition of this instance. No
 * authentication, as Prometheus scrapes expect; it names no account or
 * device. Keep it off the public listener (see README, Operations).
 */
@Controller('metrics')
export class MetricsController {
  constructor(private readonly metrics: RelayMetrics) {}

  @Get()
  async scrape(@Res({ passthrough: true }) response: Response): Promise<string> {
    response.setHeader('Content-Type', this.metrics.registry.contentType);
    return this.metrics.registry.metrics();
  }
}

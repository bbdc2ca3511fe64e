import { Controller, Get, HttpStatus, Inject, Res, ServiceUnavailableException } from '@nestjs/common';
import type { Response } from 'express';
import {
  HealthCheck,
  HealthCheckService,
  HealthIndicatorService,
  type HealthCheckResult,
  type HealthIndicatorFunction,
} from '@nestjs/terminus';
import { RELAY_CONFIG, type RelayConfig } from '../config/relay-config.js';
import { PrismaService } from '../prisma/prisma.service.js';
import { ShutdownState } from '../shutdown/shutdown-state.js';
import { RedisHealthProbe } from './redis-health.js';

/**
 * Kubernetes-style probes (`@nestjs/terminus`, its JSON shape: `status`,
 * `info`, `error`, `details`; 200 when every check is up, else 503).
 *
 * - `/health/live`: the process runs and its event loop answers; nothing
 *   external is checked, so a database outage does not get the relay restarted.
 * - `/health/ready`: the relay can serve: the database answers `SELECT 1`,
 *   Redis answers PING when REDIS_URL is set, and it is not shutting down
 *   (a draining relay reports `shutdown: down` so load balancers stop routing to it).
 */
@Controller('health')
export class HealthController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly indicators: HealthIndicatorService,
    private readonly prisma: PrismaService,
    private readonly redis: RedisHealthProbe,
    private readonly shutdown: ShutdownState,
    @Inject(RELAY_CONFIG) private readonly config: RelayConfig,
  ) {}

  @Get('live')
  @HealthCheck()
  live(@Res({ passthrough: true }) response: Response): Promise<HealthCheckResult> {
    return this.answer(response, []);
  }

  @Get('ready')
  @HealthCheck()
  ready(@Res({ passthrough: true }) response: Response): Promise<HealthCheckResult> {
    const timeout = this.config.healthCheckTimeoutMs;
    const checks: HealthIndicatorFunction[] = [
      async () =>
        this.shutdown.isDraining
          ? this.indicators.check('shutdown').down({ message: 'the relay is shutting down' })
          : this.indicators.check('shutdown').up(),
      () =>
        this.indicators
          .check('database')
          .attempt(async () => {
            await this.prisma.$queryRaw`SELECT 1`;
          })
          .withTimeout(timeout),
    ];
    if (this.redis.configured) {
      checks.push(() =>
        this.indicators
          .check('redis')
          .attempt(() => this.redis.ping())
          .withTimeout(timeout),
      );
    }
    return this.answer(response, checks);
  }

  /**
   * Terminus answers a failed check with a 503 exception carrying its JSON;
   * the relay's exception filter knows only relay errors (any other is a
   * 500 INTERNAL), so the 503 is answered here.
   */
  private async answer(response: Response, checks: HealthIndicatorFunction[]): Promise<HealthCheckResult> {
    try {
      return await this.health.check(checks);
    } catch (error) {
      if (!(error instanceof ServiceUnavailableException)) throw error;
      response.status(HttpStatus.SERVICE_UNAVAILABLE);
      return error.getResponse() as HealthCheckResult;
    }
  }
}

import { Controller, Get, Inject } from '@nestjs/common';
import { HealthCheck, HealthCheckService, HealthIndicatorService, type HealthIndicatorResult } from '@nestjs/terminus';
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
  live() {
    return this.health.check([]);
  }

  @Get('ready')
  @HealthCheck()
  ready() {
    const timeout = this.config.healthCheckTimeoutMs;
    const checks: Array<() => PromiseLike<HealthIndicatorResult>> = [
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
    return this.health.check(checks);
  }
}

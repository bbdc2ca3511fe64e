import { Inject, Injectable, Logger, type OnApplicationBootstrap, type OnModuleDestroy } from '@nestjs/common';
import { Clock } from '../common/clock.js';
import { RELAY_CONFIG, type RelayConfig } from '../config/relay-config.js';
import { RetentionRepository } from './retention.repository.js';

const DAY_MS = 24 * 60 * 60 * 1000;

export interface SweepResult {
  messages: number;
  sentRequests: number;
  sealedSendRequests: number;
  provisioningSlots: number;
}

/**
 * Deletes what the relay keeps only for a while: undelivered messages and
 * the answers of idempotent sends (authenticated and sealed) older than `MESSAGE_RETENTION_DAYS`, and
 * expired provisioning slots. Runs every `RETENTION_SWEEP_INTERVAL_MS`; one
 * sweep at a time.
 */
@Injectable()
export class RetentionService implements OnApplicationBootstrap, OnModuleDestroy {
  private readonly logger = new Logger(RetentionService.name);
  private timer?: NodeJS.Timeout;
  private running?: Promise<SweepResult>;

  constructor(
    private readonly retention: RetentionRepository,
    private readonly clock: Clock,
    @Inject(RELAY_CONFIG) private readonly config: RelayConfig,
  ) {}

  onApplicationBootstrap(): void {
    this.timer = setInterval(() => {
      this.sweep().catch((error: unknown) =>
        this.logger.error('The retention sweep failed; it runs again at the next interval', error instanceof Error ? error.stack : String(error)),
      );
    }, this.config.retention.sweepIntervalMs);
    this.timer.unref();
  }

  onModuleDestroy(): void {
    clearInterval(this.timer);
  }

  /** One sweep; a call while one runs joins it. */
  sweep(): Promise<SweepResult> {
    this.running ??= this.sweepOnce().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async sweepOnce(): Promise<SweepResult> {
    const now = this.clock.now();
    const cutoff = new Date(now.getTime() - this.config.retention.messageDays * DAY_MS);
    const result: SweepResult = {
      messages: await this.retention.deleteMessagesBefore(cutoff),
      sentRequests: await this.retention.deleteSentRequestsBefore(cutoff),
      sealedSendRequests: await this.retention.deleteSealedSendRequestsBefore(cutoff),
      provisioningSlots: await this.retention.deleteExpiredProvisioningSlots(now),
    };
    if (result.messages + result.sentRequests + result.sealedSendRequests + result.provisioningSlots > 0) {
      this.logger.log(
        `Retention sweep: ${result.messages} expired messages, ${result.sentRequests + result.sealedSendRequests} send answers, ${result.provisioningSlots} provisioning slots deleted`,
      );
    }
    return result;
  }
}

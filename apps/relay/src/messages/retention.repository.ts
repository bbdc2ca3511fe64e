import { Injectable } from '@nestjs/common';
import { PrismaService } from '../prisma/prisma.service.js';

/** Rows deleted per statement, so that a large backlog is swept in short transactions. */
const SWEEP_BATCH = 5000;

/** The retention sweep's deletions; the only place it touches the database. */
@Injectable()
export class RetentionRepository {
  constructor(private readonly prisma: PrismaService) {}

  /** Deletes queued messages stored before `before`; returns how many. */
  deleteMessagesBefore(before: Date): Promise<number> {
    return this.inBatches(
      () => this.prisma.$executeRaw`
        DELETE FROM messages WHERE id IN (
          SELECT id FROM messages WHERE server_timestamp < ${before} LIMIT ${SWEEP_BATCH})`,
    );
  }

  /** Deletes the kept answers of idempotent sends made before `before`. */
  deleteSentRequestsBefore(before: Date): Promise<number> {
    return this.inBatches(
      () => this.prisma.$executeRaw`
        DELETE FROM sent_requests WHERE (sender_device_row_id, request_id) IN (
          SELECT sender_device_row_id, request_id FROM sent_requests WHERE created_at < ${before} LIMIT ${SWEEP_BATCH})`,
    );
  }

  /** Deletes the kept answers of idempotent sealed and multi-recipient sends made before `before`. */
  deleteSealedSendRequestsBefore(before: Date): Promise<number> {
    return this.inBatches(
      () => this.prisma.$executeRaw`
        DELETE FROM sealed_send_requests WHERE request_id IN (
          SELECT request_id FROM sealed_send_requests WHERE created_at < ${before} LIMIT ${SWEEP_BATCH})`,
    );
  }

  /** Deletes provisioning slots that expired before `now`, approved or not. */
  deleteExpiredProvisioningSlots(now: Date): Promise<number> {
    return this.prisma.$executeRaw`DELETE FROM provisioning_slots WHERE expires_at < ${now}`;
  }

  private async inBatches(deleteBatch: () => Promise<number>): Promise<number> {
    let total = 0;
    for (;;) {
      const deleted = await deleteBatch();
      total += deleted;
      if (deleted < SWEEP_BATCH) return total;
    }
  }
}

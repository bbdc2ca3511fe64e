import { Injectable } from '@nestjs/common';
import { PrismaService } from '../prisma/prisma.service.js';

@Injectable()
export class MetricsRepository {
  constructor(private readonly prisma: PrismaService) {}

  /** Every stored, unacknowledged envelope. One count per scrape; an index-only scan of the primary key where the table is vacuumed. */
  async countQueued(): Promise<number> {
    const [row] = await this.prisma.$queryRaw<Array<{ count: bigint }>>`SELECT count(*) AS count FROM messages`;
    return Number(row?.count ?? 0);
  }
}

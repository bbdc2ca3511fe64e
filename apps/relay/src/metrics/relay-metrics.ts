import { Injectable, Logger } from '@nestjs/common';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { WebSocketServer } from 'ws';
import { MetricsRepository } from './metrics.repository.js';

/** What a stored message was sent as. */
export type AcceptedKind = 'authenticated' | 'sealed';

/**
 * The relay's Prometheus metrics, in a registry of its own (several relays
 * in one test process do not share counters). Counters count envelopes:
 * a send to three devices is three accepted messages. Nothing here is
 * labelled with an account, device or username.
 */
@Injectable()
export class RelayMetrics {
  readonly registry = new Registry();
  private readonly logger = new Logger(RelayMetrics.name);
  private webSocketServers: () => readonly WebSocketServer[] = () => [];

  private readonly accepted = new Counter({
    name: 'relay_messages_accepted_total',
    help: 'Envelopes stored for a recipient device (one per device a send addresses); retries of an accepted send are not counted again',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });

  private readonly delivered = new Counter({
    name: 'relay_messages_delivered_total',
    help: 'Stored envelopes written to a device WebSocket (a redelivery after a reconnect counts again)',
    registers: [this.registry],
  });

  private readonly acked = new Counter({
    name: 'relay_messages_acked_total',
    help: 'Stored envelopes deleted because their device acknowledged them',
    registers: [this.registry],
  });

  private readonly deliveryLatency = new Histogram({
    name: 'relay_delivery_latency_seconds',
    help: 'Time from storing an envelope to writing it to its device WebSocket (includes the time the device was offline)',
    // From a live delivery (milliseconds) to a phone that was off for a day.
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60, 300, 3600, 86400],
    registers: [this.registry],
  });

  constructor(repository: MetricsRepository) {
    collectDefaultMetrics({ register: this.registry });
    const socketsOpen = () => this.webSocketServers().reduce((sum, server) => sum + server.clients.size, 0);
    const logger = this.logger;
    new Gauge({
      name: 'relay_websocket_connections',
      help: 'WebSockets open on this relay instance',
      registers: [this.registry],
      collect() {
        this.set(socketsOpen());
      },
    });
    new Gauge({
      name: 'relay_message_queue_depth',
      help: 'Envelopes stored and not yet acknowledged, all devices (read from the database on scrape; absent when it cannot be read)',
      registers: [this.registry],
      async collect() {
        this.reset();
        try {
          this.set(await repository.countQueued());
        } catch (error) {
          logger.warn(`The queue depth could not be read: ${(error as Error).message}`);
        }
      },
    });
  }

  /** Where the open WebSockets are counted (the adapter's servers, known once the app is built). */
  countSocketsOf(servers: () => readonly WebSocketServer[]): void {
    this.webSocketServers = servers;
  }

  messagesAccepted(kind: AcceptedKind, count: number): void {
    this.accepted.inc({ kind }, count);
  }

  /** A stored envelope written to its device's socket; `storedAt` is its server timestamp (ms). */
  messageDelivered(storedAt: number): void {
    this.delivered.inc();
    this.deliveryLatency.observe(Math.max(Date.now() - storedAt, 0) / 1000);
  }

  messageAcked(): void {
    this.acked.inc();
  }
}

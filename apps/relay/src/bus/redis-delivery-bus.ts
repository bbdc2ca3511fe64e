import { randomUUID } from 'node:crypto';
import { Logger } from '@nestjs/common';
import { Redis } from 'ioredis';
import { DeliveryBus, topicOf, type BusEvent, type BusEventHandler } from './delivery-bus.js';

/** What goes over a Redis channel: the event and the instance that published it (which has handled it already). */
interface BusMessage {
  origin: string;
  event: BusEvent;
}

interface Subscription {
  /** Local `subscribe` calls not yet undone. */
  count: number;
  /** The SUBSCRIBE round trip; undefined after it failed, so that the next `subscribe` tries again. */
  ready?: Promise<void>;
}

export interface RedisDeliveryBusOptions {
  /** Prefix of every channel and key; instances that share one prefix form one cluster. */
  prefix?: string;
}

export const DEFAULT_REDIS_PREFIX = 'chat-relay:';

/**
 * The bus of many relay instances: Redis pub/sub, one channel per device
 * (`<prefix>device:<row id>`) and per account (`<prefix>account:<id>`),
 * each subscribed by the instances that hold a socket of it, and a counter
 * (`<prefix>connection-generation`, INCR) that orders handshakes across
 * instances. Pub/sub keeps nothing: an instance that is not subscribed when
 * an event is published never sees it, which is why the events are only
 * hints about data in the database.
 *
 * Two connections, as Redis requires: a subscriber (in subscribe mode it can
 * run no other command) and one for PUBLISH, INCR and PING. ioredis
 * reconnects both with back-off and subscribes again by itself; after such a
 * reconnect the resync handler runs, because events may have been missed.
 */
export class RedisDeliveryBus extends DeliveryBus {
  /** Another instance may commit a message and die before its event is published: connections keep reading their queues. */
  override readonly singleInstance = false;
  private readonly logger = new Logger('DeliveryBus');
  /** Tells this instance's own messages apart when Redis echoes them back. */
  readonly instanceId = randomUUID();
  private readonly prefix: string;
  private readonly publisher: Redis;
  private readonly subscriber: Redis;
  private readonly subscriptions = new Map<string, Subscription>();
  private handler: BusEventHandler = () => undefined;
  private resync: () => void = () => undefined;
  private subscriberWasReady = false;
  private readonly unreachable = new Set<string>();

  constructor(url: string, options: RedisDeliveryBusOptions = {}) {
    super();
    this.prefix = options.prefix ?? DEFAULT_REDIS_PREFIX;
    // Named per instance, so that an operator (or a spec) can tell the connections apart in CLIENT LIST.
    this.publisher = new Redis(url, { connectionName: `relay-bus-publisher-${this.instanceId}` });
    this.subscriber = new Redis(url, { connectionName: `relay-bus-subscriber-${this.instanceId}` });
    for (const [role, client] of [
      ['publisher', this.publisher],
      ['subscriber', this.subscriber],
    ] as const) {
      // Without an 'error' listener ioredis prints every failed reconnect; one line per outage is enough.
      client.on('error', (error: Error) => {
        if (this.unreachable.has(role)) return;
        this.unreachable.add(role);
        this.logger.warn(`Redis (${role}) failed: ${error.message}; retrying`);
      });
      client.on('ready', () => {
        if (this.unreachable.delete(role)) this.logger.log(`Redis (${role}) is reachable again`);
      });
    }
    this.subscriber.on('ready', () => {
      if (this.subscriberWasReady) this.resync();
      this.subscriberWasReady = true;
    });
    this.subscriber.on('message', (channel: string, text: string) => this.receive(channel, text));
  }

  override async publish(event: BusEvent): Promise<void> {
    this.handler(event);
    const message: BusMessage = { origin: this.instanceId, event };
    await this.publisher.publish(this.channel(topicOf(event)), JSON.stringify(message));
  }

  override async subscribe(topics: readonly string[]): Promise<void> {
    await Promise.all(
      topics.map((topic) => {
        let subscription = this.subscriptions.get(topic);
        if (!subscription) {
          subscription = { count: 0 };
          this.subscriptions.set(topic, subscription);
        }
        subscription.count++;
        if (!subscription.ready) {
          const entry = subscription;
          const ready = this.subscriber.subscribe(this.channel(topic)).then(() => undefined);
          entry.ready = ready;
          ready.catch(() => {
            if (entry.ready === ready) entry.ready = undefined;
          });
        }
        return subscription.ready;
      }),
    );
  }

  override async unsubscribe(topics: readonly string[]): Promise<void> {
    const channels: string[] = [];
    for (const topic of topics) {
      const subscription = this.subscriptions.get(topic);
      if (!subscription) continue;
      if (--subscription.count > 0) continue;
      this.subscriptions.delete(topic);
      channels.push(this.channel(topic));
    }
    // Commands on one connection run in order, so an UNSUBSCRIBE never overtakes a later SUBSCRIBE of the same channel.
    if (channels.length > 0) await this.subscriber.unsubscribe(...channels);
  }

  override onEvent(handler: BusEventHandler): void {
    this.handler = handler;
  }

  override onResync(handler: () => void): void {
    this.resync = handler;
  }

  override async nextGeneration(): Promise<number> {
    return this.publisher.incr(`${this.prefix}connection-generation`);
  }

  override async ping(): Promise<void> {
    await this.publisher.ping();
  }

  override async close(): Promise<void> {
    await Promise.all([this.publisher, this.subscriber].map((client) => closeClient(client)));
  }

  /** Topics subscribed by this instance (for specs). */
  get subscribedTopics(): string[] {
    return [...this.subscriptions.keys()];
  }

  private channel(topic: string): string {
    return `${this.prefix}${topic}`;
  }

  private receive(channel: string, text: string): void {
    let message: BusMessage;
    try {
      message = JSON.parse(text) as BusMessage;
    } catch {
      this.logger.warn(`An unreadable bus message on ${channel} was dropped`);
      return;
    }
    if (message.origin === this.instanceId || typeof message.event?.type !== 'string') return;
    this.handler(message.event);
  }
}

/** QUIT when connected (the server answers, nothing is cut off); otherwise stop reconnecting at once. */
async function closeClient(client: Redis): Promise<void> {
  if (client.status === 'ready') {
    try {
      await client.quit();
      return;
    } catch {
      // Fall through: the connection is going anyway.
    }
  }
  client.disconnect();
}

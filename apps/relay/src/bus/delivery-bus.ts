import type { CloseCode, Envelope, KeysLowFrame } from '@chat/protocol';

/**
 * What one relay instance tells the instance that holds a device's (or an
 * account's) socket. Serialized as JSON between instances; it carries no
 * token, password or key (an envelope's ciphertext, stored or ephemeral,
 * which only the recipient can read, is the one payload).
 */
export type BusEvent =
  /** Something was stored for the device: its connection reads its queue again. */
  | { readonly type: 'wake'; readonly deviceRowId: string }
  /**
   * A message for the device was stored (committed): a caught-up connection
   * sends it without reading its queue, any other reads (as for `wake`).
   */
  | { readonly type: 'stored'; readonly deviceRowId: string; readonly envelope: Envelope }
  /** The device's message was deleted: its connection's window slot is free (an HTTP ack may reach another instance). */
  | { readonly type: 'acked'; readonly deviceRowId: string; readonly id: string }
  /** Sent to the device if it is connected now; never stored. */
  | { readonly type: 'ephemeral'; readonly deviceRowId: string; readonly envelope: Envelope }
  | { readonly type: 'notice'; readonly deviceRowId: string; readonly notice: KeysLowFrame }
  | { readonly type: 'close-device'; readonly deviceRowId: string; readonly code: CloseCode; readonly reason: string }
  | { readonly type: 'close-account'; readonly accountId: string; readonly code: CloseCode; readonly reason: string }
  /**
   * A connection of the device with this generation was attached: an
   * instance holding an older one closes it (4409); one holding a newer one
   * publishes its own generation, so the late attacher closes itself.
   */
  | { readonly type: 'displace'; readonly deviceRowId: string; readonly generation: number };

/** The channel an event travels on: the device's, or the account's for `close-account`. */
export function topicOf(event: BusEvent): string {
  return event.type === 'close-account' ? accountTopic(event.accountId) : deviceTopic(event.deviceRowId);
}

export const deviceTopic = (deviceRowId: string): string => `device:${deviceRowId}`;
export const accountTopic = (accountId: string): string => `account:${accountId}`;

export type BusEventHandler = (event: BusEvent) => void;

/**
 * Routes live-delivery events to the instance holding the socket they are
 * for. `publish` hands the event to this instance's handler at once (before
 * it returns) and to every other instance subscribed to its topic. An
 * instance subscribes to the topics of the sockets it holds; the handler
 * picks the matching local connection and ignores the rest. Events are
 * hints, never the data: messages are in the database until acked, so a
 * lost event delays a delivery until the next wake-up or reconnect and
 * loses nothing.
 *
 * Injected as the class (Nest token); `InProcessDeliveryBus` without
 * REDIS_URL, `RedisDeliveryBus` with it.
 */
export abstract class DeliveryBus {
  /** Delivers to this instance's handler synchronously, then to the other subscribed instances. */
  abstract publish(event: BusEvent): Promise<void>;
  /** Receives the events of `topics` from other instances from when the promise resolves on; counted per topic. */
  abstract subscribe(topics: readonly string[]): Promise<void>;
  /** Undoes one `subscribe` of each topic. */
  abstract unsubscribe(topics: readonly string[]): Promise<void>;
  /** The one handler of this instance's events. */
  abstract onEvent(handler: BusEventHandler): void;
  /**
   * Called when events from other instances may have been missed (the
   * link to Redis was lost and is back): local connections should read
   * their queues again.
   */
  abstract onResync(handler: () => void): void;
  /** A number greater than every earlier one of any instance: orders connection handshakes across instances. */
  abstract nextGeneration(): Promise<number>;
  /**
   * Whether every socket is in this process, so that every event reaches its
   * handler at once, in publish order, and none is lost (no other instance
   * can commit a message whose event comes late or never). Only then may a
   * connection rely on `stored` events to know its device's whole queue.
   */
  abstract readonly singleInstance: boolean;
  /** Resolves when the bus can carry events (a round trip to Redis), for readiness checks. */
  abstract ping(): Promise<void>;
  abstract close(): Promise<void>;
}

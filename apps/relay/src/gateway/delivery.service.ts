import { Injectable, Logger } from '@nestjs/common';
import { CloseCode, type Envelope, type ErrorCode } from '@chat/protocol';
import { accountTopic, DeliveryBus, deviceTopic, type BusEvent } from '../bus/delivery-bus.js';
import type { ConnectionStats, DeviceConnection, DeviceNotice } from './device-connection.js';

/**
 * Wakes a device's live connection when something was stored for it, hands
 * ephemeral envelopes and device notices to it, and closes an account's or
 * a device's connections, wherever that connection is: services publish
 * here and never touch sockets. Every such call is an event on the
 * `DeliveryBus`, handled by this process at once and, with REDIS_URL, by the
 * instance that holds the socket. `attach`/`detach` keep the connections of
 * this process, and subscribe to their events.
 *
 * Of two connections of one device, the one whose handshake came later
 * (the higher generation, from `nextGeneration`) is kept, also across
 * instances: see `attach`.
 */
@Injectable()
export class DeliveryService {
  private readonly logger = new Logger(DeliveryService.name);
  private readonly connections = new Map<string, DeviceConnection>();
  /** The bus topics each attached connection subscribed to, undone by `detach`. */
  private readonly subscriptions = new Map<DeviceConnection, string[]>();

  constructor(private readonly bus: DeliveryBus) {
    bus.onEvent((event) => this.receive(event));
    // Events may have been missed while the bus was down: every connection reads its queue again.
    bus.onResync(() => {
      for (const connection of this.connections.values()) connection.wake();
    });
  }

  /**
   * Called after a message for the device is stored: its connection, if
   * any, reads its queue again (within its window). Never throws, as the
   * sender's message is already safe.
   */
  notify(deviceRowId: string): void {
    this.publish({ type: 'wake', deviceRowId });
  }

  /**
   * Called after a message for the device is stored, with its envelope: a
   * connection that has every other stored message of the device in flight
   * sends it at once, without reading its queue; any other reads (as
   * `notify`). With several instances it is `notify`: an event from another
   * instance can come late or, if that instance dies, never. Never throws.
   */
  stored(deviceRowId: string, envelope: Envelope): void {
    this.publish(this.bus.singleInstance ? { type: 'stored', deviceRowId, envelope } : { type: 'wake', deviceRowId });
  }

  /** Whether a connection may rely on `stored` events to know its device's whole queue (one relay instance). */
  get everyStoreHanded(): boolean {
    return this.bus.singleInstance;
  }

  /** Called after the device's message was deleted (acked): its slot of the delivery window is free. */
  acked(deviceRowId: string, id: string): void {
    this.publish({ type: 'acked', deviceRowId, id });
  }

  /**
   * Sends an ephemeral envelope to the device if it is connected now (to
   * any instance) and its socket keeps up; it is never stored, and dropped
   * otherwise.
   */
  deliverEphemeral(deviceRowId: string, envelope: Envelope): void {
    this.publish({ type: 'ephemeral', deviceRowId, envelope });
  }

  /** Per connection of this process: its window, what is in flight and what its socket holds. */
  stats(): ConnectionStats[] {
    return [...this.connections.values()].map((connection) => connection.stats());
  }

  /**
   * Pushes a notice (such as `keys-low`) to the device if it is connected;
   * after `queue-empty` if its queue is still being sent (the latest of each
   * kind is kept until then). Nothing is kept for a device that is not
   * connected: a notice is a hint that the relay repeats when the device
   * connects, if it still applies.
   */
  notice(deviceRowId: string, notice: DeviceNotice): void {
    this.publish({ type: 'notice', deviceRowId, notice });
  }

  /** The generation of a connection whose handshake completes now: higher than any earlier one, on any instance. */
  nextGeneration(): Promise<number> {
    return this.bus.nextGeneration();
  }

  /**
   * Registers a device's connection, subscribes to its events and closes
   * the older of two connections of one device with 4409. Older means the
   * lower generation (the earlier handshake), not the earlier `attach`: the
   * two race through their own database look-ups. In this process that is
   * decided here; across instances, the `displace` event published once the
   * subscription stands closes an older connection elsewhere, and an
   * instance holding a newer one answers with its generation, which closes
   * this one. Resolves false when `connection` is the older one and closed,
   * or closed meanwhile.
   *
   * @throws when the bus cannot subscribe (the gateway closes the socket with 1011)
   */
  async attach(connection: DeviceConnection): Promise<boolean> {
    const current = this.connections.get(connection.deviceRowId);
    if (current && current !== connection && current.generation > connection.generation) {
      connection.close(CloseCode.ConnectionReplaced, 'CONNECTION_REPLACED');
      return false;
    }
    this.connections.set(connection.deviceRowId, connection);
    if (current && current !== connection) current.close(CloseCode.ConnectionReplaced, 'CONNECTION_REPLACED');
    const topics = [deviceTopic(connection.deviceRowId), accountTopic(connection.accountId)];
    this.subscriptions.set(connection, topics);
    await this.bus.subscribe(topics);
    await this.bus.publish({ type: 'displace', deviceRowId: connection.deviceRowId, generation: connection.generation });
    return this.connections.get(connection.deviceRowId) === connection && connection.isOpen;
  }

  /** Forgets the connection unless a newer one of the same device has replaced it, and drops its subscriptions. */
  detach(connection: DeviceConnection): void {
    if (this.connections.get(connection.deviceRowId) === connection) {
      this.connections.delete(connection.deviceRowId);
    }
    const topics = this.subscriptions.get(connection);
    if (!topics) return;
    this.subscriptions.delete(connection);
    this.bus.unsubscribe(topics).catch((error: unknown) => {
      this.logger.warn(`Unsubscribing a closed connection from the delivery bus failed: ${(error as Error).message}`);
    });
  }

  /** Whether the device has a connection in this process. */
  isConnected(deviceRowId: string): boolean {
    return this.connections.has(deviceRowId);
  }

  /**
   * Closes every socket of the account, on every instance (after a password
   * change or the account's deletion). A socket whose handshake was verified
   * before the change but that attaches after this call is closed by the
   * gateway, which checks its credentials again once attached.
   */
  closeAccount(accountId: string, code: CloseCode, reason: ErrorCode): void {
    this.publish({ type: 'close-account', accountId, code, reason });
  }

  /**
   * Closes the device's socket, wherever it is (after the device was
   * unlinked). Its tokens are refused from then on, so a socket whose
   * handshake raced the unlink is refused at its check after `attach`.
   */
  closeDevice(deviceRowId: string, code: CloseCode, reason: string): void {
    this.publish({ type: 'close-device', deviceRowId, code, reason });
  }

  /** Never throws: this process's part runs inside `publish`; a failure to reach other instances is logged. */
  private publish(event: BusEvent): void {
    let published: Promise<void>;
    try {
      published = this.bus.publish(event);
    } catch (error) {
      published = Promise.reject(error);
    }
    published.catch((error: unknown) => {
      this.logger.error(
        `Publishing a ${event.type} event failed; stored messages stay queued until the device's next read`,
        error instanceof Error ? error.stack : String(error),
      );
    });
  }

  /** An event from this process or another instance, for the connections of this process. */
  private receive(event: BusEvent): void {
    try {
      switch (event.type) {
        case 'wake':
          this.connections.get(event.deviceRowId)?.wake();
          return;
        case 'stored':
          this.connections.get(event.deviceRowId)?.deliverStored(event.envelope);
          return;
        case 'acked':
          this.connections.get(event.deviceRowId)?.acked(event.id);
          return;
        case 'ephemeral':
          this.connections.get(event.deviceRowId)?.sendEphemeral(event.envelope);
          return;
        case 'notice':
          this.connections.get(event.deviceRowId)?.deliverNotice(event.notice);
          return;
        case 'close-device':
          this.connections.get(event.deviceRowId)?.close(event.code, event.reason);
          return;
        case 'close-account':
          // A scan, not an index: this runs once per password change or deletion.
          for (const connection of this.connections.values()) {
            if (connection.accountId === event.accountId) connection.close(event.code, event.reason);
          }
          return;
        case 'displace':
          this.displace(event.deviceRowId, event.generation);
          return;
      }
    } catch (error) {
      this.logger.error(`Handling a ${event.type} event failed`, error instanceof Error ? error.stack : String(error));
    }
  }

  /** Another connection of the device, with `generation`, was attached (here or elsewhere). */
  private displace(deviceRowId: string, generation: number): void {
    const local = this.connections.get(deviceRowId);
    if (!local || local.generation === generation) return;
    if (local.generation < generation) {
      local.close(CloseCode.ConnectionReplaced, 'CONNECTION_REPLACED');
    } else {
      // The other one is older and attached late: tell it that a newer connection exists.
      this.publish({ type: 'displace', deviceRowId, generation: local.generation });
    }
  }
}

import { Injectable, Logger } from '@nestjs/common';
import { CloseCode, type Envelope, type ErrorCode } from '@chat/protocol';
import type { ConnectionStats, DeviceConnection, DeviceNotice } from './device-connection.js';

/**
 * Wakes a device's live connection when something was stored for it, hands
 * ephemeral envelopes and device notices to it, and closes an account's
 * connections. Services publish here and never touch sockets. This
 * implementation keeps the connections of this process; with several relay
 * instances a shared bus replaces `notify`, `acked`, `deliverEphemeral`,
 * `notice` and `closeAccount` while `attach`/`detach` stay local.
 */
@Injectable()
export class DeliveryService {
  private readonly logger = new Logger(DeliveryService.name);
  private readonly connections = new Map<string, DeviceConnection>();

  /**
   * Called after a message for the device is stored: its connection, if
   * any, reads its queue again (within its window). Never throws, as the
   * sender's message is already safe.
   */
  notify(deviceRowId: string): void {
    try {
      this.connections.get(deviceRowId)?.wake();
    } catch (error) {
      this.logger.error(`Waking a device's connection failed; the message stays queued`, (error as Error).stack);
    }
  }

  /** Called after the device's message was deleted (acked): its slot of the delivery window is free. */
  acked(deviceRowId: string, id: string): void {
    this.connections.get(deviceRowId)?.acked(id);
  }

  /** Sends an ephemeral envelope to the device if it is connected here now; it is never stored. Returns whether it was sent. */
  deliverEphemeral(deviceRowId: string, envelope: Envelope): boolean {
    try {
      return this.connections.get(deviceRowId)?.sendEphemeral(envelope) ?? false;
    } catch (error) {
      this.logger.error('Sending an ephemeral message to a device failed', (error as Error).stack);
      return false;
    }
  }

  /** Per connection of this process: its window, what is in flight and what its socket holds. */
  stats(): ConnectionStats[] {
    return [...this.connections.values()].map((connection) => connection.stats());
  }

  /**
   * Pushes a notice (such as `keys-low`) to the device if it is connected
   * here; after `queue-empty` if its queue is still being sent (the latest
   * of each kind is kept until then). Nothing is
   * kept for a device that is not connected: a notice is a hint that the
   * relay repeats when the device connects, if it still applies.
   */
  notice(deviceRowId: string, notice: DeviceNotice): void {
    try {
      this.connections.get(deviceRowId)?.deliverNotice(notice);
    } catch (error) {
      this.logger.error(`Pushing a ${notice.type} notice to a device failed`, (error as Error).stack);
    }
  }

  /**
   * Registers a device's connection and closes the older of two connections
   * of one device with 4409. Older means the earlier handshake, not the
   * earlier `attach`: the two race through their own database look-ups.
   * Returns false when `connection` itself was the older one and is closed.
   */
  attach(connection: DeviceConnection): boolean {
    const current = this.connections.get(connection.deviceRowId);
    if (current && current !== connection && current.sequence > connection.sequence) {
      connection.close(CloseCode.ConnectionReplaced, 'CONNECTION_REPLACED');
      return false;
    }
    this.connections.set(connection.deviceRowId, connection);
    if (current && current !== connection) current.close(CloseCode.ConnectionReplaced, 'CONNECTION_REPLACED');
    return true;
  }

  /** Forgets the connection unless a newer one of the same device has replaced it. */
  detach(connection: DeviceConnection): void {
    if (this.connections.get(connection.deviceRowId) === connection) {
      this.connections.delete(connection.deviceRowId);
    }
  }

  isConnected(deviceRowId: string): boolean {
    return this.connections.has(deviceRowId);
  }

  /**
   * Closes every socket of the account in this process (after a password
   * change or the account's deletion). A socket whose handshake was verified
   * before the change but that attaches after this call is closed by the
   * gateway, which checks its credentials again once attached.
   */
  closeAccount(accountId: string, code: CloseCode, reason: ErrorCode): void {
    // A scan, not an index: this runs once per password change or deletion.
    for (const connection of this.connections.values()) {
      if (connection.accountId === accountId) connection.close(code, reason);
    }
  }

  /**
   * Closes the device's socket in this process, if it has one (after the
   * device was unlinked). Its tokens are refused from then on, so a socket
   * whose handshake raced the unlink is refused at its next check.
   */
  closeDevice(deviceRowId: string, code: CloseCode, reason: string): void {
    this.connections.get(deviceRowId)?.close(code, reason);
  }
}

import { Injectable, Logger } from '@nestjs/common';
import { CloseCode, type Envelope, type ErrorCode } from '@chat/protocol';
import type { DeviceConnection, DeviceNotice } from './device-connection.js';

/**
 * Hands stored envelopes and device notices to the device's live connection,
 * and closes an account's connections. Services publish here and never touch
 * sockets. This implementation keeps the connections of this process; with
 * several relay instances a shared bus replaces `notify`, `notice` and
 * `closeAccount` while `attach`/`detach` stay local.
 */
@Injectable()
export class DeliveryService {
  private readonly logger = new Logger(DeliveryService.name);
  private readonly connections = new Map<string, DeviceConnection>();

  /** Called after the envelope is stored; never throws, as the sender's message is already safe. */
  notify(deviceRowId: string, envelope: Envelope): void {
    try {
      this.connections.get(deviceRowId)?.deliverLive(envelope);
    } catch (error) {
      this.logger.error(`Live delivery to a device failed; the message stays queued`, (error as Error).stack);
    }
  }

  /**
   * Pushes a notice (such as `keys-low`) to the device if it is connected
   * here; after `queue-empty` if its queue is still being sent. Nothing is
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
}

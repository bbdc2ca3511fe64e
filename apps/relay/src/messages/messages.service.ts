import { randomUUID } from 'node:crypto';
import { Injectable } from '@nestjs/common';
import {
  DEFAULT_MESSAGES_PER_PAGE,
  ErrorCode,
  type Envelope,
  type ListMessagesResponse,
  type SendMessageRequest,
  type SendMessageResponse,
} from '@chat/protocol';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import { RelayException } from '../common/relay.exception.js';
import { DeliveryService } from '../gateway/delivery.service.js';
import { MessagesRepository, type NewMessage, type StoredMessage } from './messages.repository.js';

function unknownRecipient(): RelayException {
  return new RelayException(ErrorCode.UnknownRecipient, 'No such user, or it has no device with keys');
}

/** Envelopes read per query while a connecting device's queue is sent. */
const QUEUE_PAGE_SIZE = 100;

export function envelopeOf(message: StoredMessage): Envelope {
  return {
    id: message.id,
    source: message.source,
    sourceDevice: message.sourceDevice,
    type: message.type,
    ciphertext: Buffer.from(message.ciphertext).toString('base64'),
    serverTimestamp: message.serverTimestamp.getTime(),
  };
}

/**
 * Stores opaque ciphertext until the recipient device acks it. The relay
 * never reads a ciphertext; it checks only who it is addressed to.
 */
@Injectable()
export class MessagesService {
  constructor(
    private readonly messages: MessagesRepository,
    private readonly delivery: DeliveryService,
  ) {}

  /**
   * Stores one ciphertext per recipient device, then hands them to delivery.
   * The sender is the token's device, never a field of the request. Sending
   * to one's own account addresses one's other devices.
   *
   * @throws RelayException UNKNOWN_RECIPIENT, MISMATCHED_DEVICES, VALIDATION_FAILED
   */
  async send(sender: AuthenticatedDevice, request: SendMessageRequest): Promise<SendMessageResponse> {
    const recipient = await this.messages.findRecipient(request.to);
    const devices = recipient?.devices.filter(
      (device) => !(recipient.accountId === sender.accountId && device.deviceId === sender.deviceId),
    );
    if (!recipient || !devices || devices.length === 0) throw unknownRecipient();

    const addressed = request.messages.map((message) => message.deviceId);
    const repeated = addressed.filter((deviceId, index) => addressed.indexOf(deviceId) !== index);
    if (repeated.length > 0) {
      throw new RelayException(ErrorCode.ValidationFailed, 'The request is invalid', [
        `messages: device ${[...new Set(repeated)].join(', ')} addressed more than once`,
      ]);
    }
    const rowIdOf = new Map(devices.map((device) => [device.deviceId, device.deviceRowId]));
    const missing = devices.map((device) => device.deviceId).filter((deviceId) => !addressed.includes(deviceId));
    const extra = addressed.filter((deviceId) => !rowIdOf.has(deviceId));
    if (missing.length > 0 || extra.length > 0) {
      throw new RelayException(ErrorCode.MismatchedDevices, "The send does not address exactly the recipient's devices", [
        ...(missing.length > 0 ? [`missing: ${missing.join(',')}`] : []),
        ...(extra.length > 0 ? [`extra: ${extra.sort((a, b) => a - b).join(',')}`] : []),
      ]);
    }

    const serverTimestamp = new Date();
    const stored: NewMessage[] = request.messages.map((message) => ({
      id: randomUUID(),
      recipientDeviceRowId: rowIdOf.get(message.deviceId) as string,
      senderAccountId: sender.accountId,
      senderUsername: sender.username,
      senderDeviceId: sender.deviceId,
      type: message.type,
      ciphertext: new Uint8Array(Buffer.from(message.ciphertext, 'base64')),
      serverTimestamp,
    }));
    if (!(await this.messages.insertMessages(stored))) throw unknownRecipient();

    for (const message of stored) {
      this.delivery.notify(message.recipientDeviceRowId, {
        id: message.id,
        source: sender.username,
        sourceDevice: sender.deviceId,
        type: message.type,
        ciphertext: Buffer.from(message.ciphertext).toString('base64'),
        serverTimestamp: serverTimestamp.getTime(),
      });
    }
    return { serverTimestamp: serverTimestamp.getTime() };
  }

  /** The oldest `limit` queued envelopes of the device. */
  async list(device: AuthenticatedDevice, limit = DEFAULT_MESSAGES_PER_PAGE): Promise<ListMessagesResponse> {
    const deviceRowId = await this.deviceRowIdOf(device);
    const page = await this.messages.findQueued(deviceRowId, 0n, limit + 1);
    return { messages: page.slice(0, limit).map(envelopeOf), more: page.length > limit };
  }

  /** @throws RelayException MESSAGE_NOT_FOUND when the device has no queued message of that id */
  async ack(device: AuthenticatedDevice, id: string): Promise<void> {
    const deviceRowId = await this.deviceRowIdOf(device);
    if (!(await this.messages.deleteQueued(deviceRowId, id))) {
      throw new RelayException(ErrorCode.MessageNotFound, 'No queued message of that id for this device');
    }
  }

  /** Deletes the device's message if it has one of that id; an ack of anything else changes nothing. */
  async ackQueued(deviceRowId: string, id: string): Promise<boolean> {
    return this.messages.deleteQueued(deviceRowId, id);
  }

  /** @throws RelayException INVALID_TOKEN when the token's device no longer exists */
  async deviceRowIdOf(device: AuthenticatedDevice): Promise<string> {
    const deviceRowId = await this.messages.findDeviceRowId(device.accountId, device.deviceId);
    if (!deviceRowId) throw new RelayException(ErrorCode.InvalidToken, 'The token names a device that does not exist');
    return deviceRowId;
  }

  /** The device's whole queue, oldest first, a page at a time. */
  async *queued(deviceRowId: string): AsyncGenerator<Envelope> {
    let afterSeq = 0n;
    for (;;) {
      const page = await this.messages.findQueued(deviceRowId, afterSeq, QUEUE_PAGE_SIZE);
      for (const message of page) yield envelopeOf(message);
      const last = page.at(-1);
      if (!last || page.length < QUEUE_PAGE_SIZE) return;
      afterSeq = last.seq;
    }
  }
}

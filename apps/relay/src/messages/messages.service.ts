import { randomUUID } from 'node:crypto';
import { Injectable, Optional } from '@nestjs/common';
import {
  DEFAULT_MESSAGES_PER_PAGE,
  EnvelopeType,
  ErrorCode,
  type DeviceMismatch,
  type Envelope,
  type ListMessagesResponse,
  type OutgoingDeviceMessage,
  type SendMessageRequest,
  type SendMessageResponse,
  type StaleDeviceList,
} from '@chat/protocol';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import { RelayException } from '../common/relay.exception.js';
import { DeliveryService } from '../gateway/delivery.service.js';
import { RelayMetrics } from '../metrics/relay-metrics.js';
import { MessagesRepository, type AddressedAccount, type NewMessage, type StoredMessage } from './messages.repository.js';

function unknownRecipient(): RelayException {
  return new RelayException(ErrorCode.UnknownRecipient, 'No such user, or it has no device with keys');
}

/**
 * The envelope of a stored message. A sealed one names no sender (the row
 * has none); an authenticated one names the sender's username, device and
 * account id.
 */
export function envelopeOf(message: StoredMessage): Envelope {
  const ciphertext = Buffer.from(message.ciphertext).toString('base64');
  const serverTimestamp = message.serverTimestamp.getTime();
  if (message.type === EnvelopeType.Sealed || message.source === null) {
    return { id: message.id, type: message.type, ciphertext, serverTimestamp };
  }
  return {
    id: message.id,
    source: message.source,
    sourceDevice: message.sourceDevice ?? 0,
    ...(message.sourceAccountId !== null && { sourceAccountId: message.sourceAccountId }),
    type: message.type,
    ciphertext,
    serverTimestamp,
  };
}

/** The envelope of a message as stored: the same as `envelopeOf` gives when its row is read back. */
export function envelopeOfNew(message: NewMessage): Envelope {
  return envelopeOf({
    id: message.id,
    seq: 0n,
    source: message.senderUsername,
    sourceDevice: message.senderDeviceId,
    sourceAccountId: message.senderAccountId,
    type: message.type,
    ciphertext: message.ciphertext,
    serverTimestamp: message.serverTimestamp,
  });
}

/** What the device checks read of an addressed device message. */
export type AddressedDevice = Pick<OutgoingDeviceMessage, 'deviceId' | 'registrationId'>;

/** One account's side of a send: the device messages addressed to it and the devices they may address. */
export interface AddressedSide<Message extends AddressedDevice = OutgoingDeviceMessage> {
  /** `messages` or `sync`, for `details`. */
  list: 'messages' | 'sync';
  account: AddressedAccount;
  /** The account's keyed devices the list must address: all, less the sender's own device. */
  devices: AddressedAccount['devices'];
  messages: readonly Message[];
  /** A session-repair send to some of the devices: none is missing. */
  partial: boolean;
}

interface Classification {
  missing: number[];
  extra: number[];
  stale: number[];
}

const ascending = (a: number, b: number) => a - b;

/**
 * Sorts each addressed device id: a current keyed device with the same
 * registration id is right; with another, stale; a device unlinked since
 * (tombstoned) is stale too; anything else is extra. Current keyed devices
 * not addressed are missing.
 */
function classify(side: AddressedSide<AddressedDevice>): Classification {
  const current = new Map(side.devices.map((device) => [device.deviceId, device.registrationId]));
  const addressed = new Set(side.messages.map((message) => message.deviceId));
  const result: Classification = {
    missing: side.partial ? [] : side.devices.map((device) => device.deviceId).filter((deviceId) => !addressed.has(deviceId)),
    extra: [],
    stale: [],
  };
  for (const { deviceId, registrationId } of side.messages) {
    const currentRegistrationId = current.get(deviceId);
    if (currentRegistrationId === registrationId) continue;
    if (currentRegistrationId !== undefined || side.account.unlinked.has(deviceId)) result.stale.push(deviceId);
    else result.extra.push(deviceId);
  }
  result.extra.sort(ascending);
  result.stale.sort(ascending);
  return result;
}

/** `details` lines: the recipient's unprefixed (`missing: 2`), the sender's own account's after `sync ` (`sync extra: 3`). */
const detailLine = (side: AddressedSide<AddressedDevice>, what: string, deviceIds: number[]) =>
  `${side.list === 'sync' ? 'sync ' : ''}${what}: ${deviceIds.join(',')}`;

/**
 * Stores opaque ciphertext until the recipient device acks it. The relay
 * never reads a ciphertext; it checks only who it is addressed to.
 */
@Injectable()
export class MessagesService {
  constructor(
    private readonly messages: MessagesRepository,
    private readonly delivery: DeliveryService,
    @Optional() private readonly metrics?: RelayMetrics,
  ) {}

  /**
   * Stores one ciphertext per recipient device (and per other device of the
   * sender's own account, for `sync`), then wakes their connections. The
   * sender is the token's device, never a field of the request. Sending to
   * one's own account addresses one's other devices. A send whose `id` this
   * device has used before stores nothing and answers as the first did. An
   * ephemeral send is stored nowhere and reaches only connected devices.
   *
   * @throws RelayException UNKNOWN_RECIPIENT, MISMATCHED_DEVICES (409), STALE_DEVICES (410), VALIDATION_FAILED, INVALID_TOKEN
   */
  async send(sender: AuthenticatedDevice, request: SendMessageRequest): Promise<SendMessageResponse> {
    assertEachDeviceOnce('messages', request.messages);
    if (request.sync) assertEachDeviceOnce('sync', request.sync);
    assertNotSealed('messages', request.messages);
    if (request.sync) assertNotSealed('sync', request.sync);

    const durable = !request.ephemeral;
    // One look-up for both (batched with other sends'); the sender's answer is still checked first.
    const { sender: senderDevice, recipient } = await this.messages.findSendContext(
      sender.accountId,
      sender.deviceId,
      durable ? request.id : undefined,
      request.to,
    );
    if (!senderDevice) throw new RelayException(ErrorCode.InvalidToken, 'The token names a device that does not exist');
    // A retry of an accepted send is answered before anything else is checked: the devices may have changed since.
    if (senderDevice.previousServerTimestamp) return { serverTimestamp: senderDevice.previousServerTimestamp.getTime() };

    if (request.partial && request.sync) {
      throw new RelayException(ErrorCode.ValidationFailed, 'The request is invalid', ['sync: must be absent from a partial send']);
    }
    if (recipient && recipient.accountId === sender.accountId && request.sync) {
      throw new RelayException(ErrorCode.ValidationFailed, 'The request is invalid', [
        'sync: must be absent when sending to your own account (messages addresses your other devices)',
      ]);
    }
    const others = (account: AddressedAccount) =>
      account.devices.filter((device) => !(account.accountId === sender.accountId && device.deviceId === sender.deviceId));
    const recipientDevices = recipient ? others(recipient) : [];
    if (!recipient || recipientDevices.length === 0) throw unknownRecipient();

    const sides: AddressedSide[] = [
      { list: 'messages', account: recipient, devices: recipientDevices, messages: request.messages, partial: request.partial === true },
    ];
    if (request.sync) {
      const own = await this.messages.findAccountById(sender.accountId);
      if (!own) throw new RelayException(ErrorCode.InvalidToken, 'The token names a device that does not exist');
      sides.push({ list: 'sync', account: own, devices: others(own), messages: request.sync, partial: false });
    }
    assertAddressedExactly(sides);

    const serverTimestamp = new Date();
    const rowIdOf = new Map(sides.flatMap((side) => side.devices.map((device) => [`${side.list}:${device.deviceId}`, device.deviceRowId] as const)));
    const addressed = sides.flatMap((side) =>
      side.messages.map((message) => ({ message, deviceRowId: rowIdOf.get(`${side.list}:${message.deviceId}`) as string })),
    );

    if (request.ephemeral) {
      for (const { message, deviceRowId } of addressed) {
        this.delivery.deliverEphemeral(deviceRowId, {
          id: randomUUID(),
          source: sender.username,
          sourceDevice: sender.deviceId,
          sourceAccountId: sender.accountId,
          type: message.type,
          ciphertext: message.ciphertext,
          serverTimestamp: serverTimestamp.getTime(),
          ephemeral: true,
        });
      }
      return { serverTimestamp: serverTimestamp.getTime() };
    }

    const stored: NewMessage[] = addressed.map(({ message, deviceRowId }) => ({
      id: randomUUID(),
      recipientDeviceRowId: deviceRowId,
      senderAccountId: sender.accountId,
      senderUsername: sender.username,
      senderDeviceId: sender.deviceId,
      type: message.type,
      ciphertext: new Uint8Array(Buffer.from(message.ciphertext, 'base64')),
      serverTimestamp,
    }));
    const outcome = await this.messages.storeSend(
      stored,
      request.id === undefined ? undefined : { senderDeviceRowId: senderDevice.deviceRowId, requestId: request.id, serverTimestamp },
    );
    if (outcome.kind === 'duplicate') return { serverTimestamp: outcome.serverTimestamp.getTime() };
    if (outcome.kind === 'recipient-gone') throw unknownRecipient();
    this.metrics?.messagesAccepted('authenticated', stored.length);

    for (const message of stored) this.delivery.stored(message.recipientDeviceRowId, envelopeOfNew(message));
    return { serverTimestamp: serverTimestamp.getTime() };
  }

  /** The oldest `limit` queued envelopes of the device. */
  async list(device: AuthenticatedDevice, limit = DEFAULT_MESSAGES_PER_PAGE): Promise<ListMessagesResponse> {
    const deviceRowId = await this.deviceRowIdOf(device);
    const page = await this.messages.findQueued(deviceRowId, [], limit + 1);
    return { messages: page.slice(0, limit).map(envelopeOf), more: page.length > limit };
  }

  /** @throws RelayException MESSAGE_NOT_FOUND when the device has no queued message of that id */
  async ack(device: AuthenticatedDevice, id: string): Promise<void> {
    const deviceRowId = await this.deviceRowIdOf(device);
    if (!(await this.ackQueued(deviceRowId, id))) {
      throw new RelayException(ErrorCode.MessageNotFound, 'No queued message of that id for this device');
    }
  }

  /**
   * Deletes the device's message if it has one of that id; an ack of
   * anything else changes nothing. Either way the id no longer holds a slot
   * of the connection's window, released only after the delete so that a
   * read cannot send the message again.
   */
  async ackQueued(deviceRowId: string, id: string): Promise<boolean> {
    const deleted = await this.messages.deleteQueued(deviceRowId, id);
    if (deleted) this.metrics?.messageAcked();
    this.delivery.acked(deviceRowId, id);
    return deleted;
  }

  /** @throws RelayException INVALID_TOKEN when the token's device no longer exists */
  async deviceRowIdOf(device: AuthenticatedDevice): Promise<string> {
    const deviceRowId = await this.messages.findDeviceRowId(device.accountId, device.deviceId);
    if (!deviceRowId) throw new RelayException(ErrorCode.InvalidToken, 'The token names a device that does not exist');
    return deviceRowId;
  }

  /** The device's oldest `limit` queued envelopes other than `excluding` (a connection's in-flight ones). */
  async readQueue(deviceRowId: string, excluding: readonly string[], limit: number): Promise<Envelope[]> {
    return (await this.messages.findQueued(deviceRowId, excluding, limit)).map(envelopeOf);
  }
}

/** @throws RelayException VALIDATION_FAILED when a device is addressed twice in one list */
export function assertEachDeviceOnce(list: 'messages' | 'sync', messages: ReadonlyArray<Pick<OutgoingDeviceMessage, 'deviceId'>>): void {
  const addressed = messages.map((message) => message.deviceId);
  const repeated = addressed.filter((deviceId, index) => addressed.indexOf(deviceId) !== index);
  if (repeated.length > 0) {
    throw new RelayException(ErrorCode.ValidationFailed, 'The request is invalid', [
      `${list}: device ${[...new Set(repeated)].join(', ')} addressed more than once`,
    ]);
  }
}

/**
 * Any missing or extra device, in either list: 409 with every account's
 * mismatch (recipient first). Else any stale device: 410.
 *
 * @throws RelayException MISMATCHED_DEVICES, STALE_DEVICES
 */
export function assertAddressedExactly(sides: ReadonlyArray<AddressedSide<AddressedDevice>>): void {
  const classified = sides.map((side) => ({ side, ...classify(side) }));
  const mismatched = classified.filter(({ missing, extra }) => missing.length > 0 || extra.length > 0);
  if (mismatched.length > 0) {
    throw new RelayException(
      ErrorCode.MismatchedDevices,
      'The send does not address exactly the devices of the account',
      mismatched.flatMap(({ side, missing, extra }) => [
        ...(missing.length > 0 ? [detailLine(side, 'missing', missing)] : []),
        ...(extra.length > 0 ? [detailLine(side, 'extra', extra)] : []),
      ]),
      undefined,
      {
        mismatched: mismatched.map(({ side, missing, extra }): DeviceMismatch => ({ username: side.account.username, missing, extra })),
      },
    );
  }
  const stale = classified.filter((entry) => entry.stale.length > 0);
  if (stale.length > 0) {
    throw new RelayException(
      ErrorCode.StaleDevices,
      'The send names registration ids that are not the devices\' current ones',
      stale.map(({ side, stale: devices }) => detailLine(side, 'stale', devices)),
      undefined,
      { stale: stale.map(({ side, stale: devices }): StaleDeviceList => ({ username: side.account.username, devices })) },
    );
  }
}

/** @throws RelayException VALIDATION_FAILED when an authenticated send claims the sealed type, which only envelopes carry */
function assertNotSealed(list: 'messages' | 'sync', messages: OutgoingDeviceMessage[]): void {
  if (messages.some((message) => message.type === EnvelopeType.Sealed)) {
    throw new RelayException(ErrorCode.ValidationFailed, 'The request is invalid', [
      `${list}: type sealed is only for POST /v1/messages/sealed and /v1/messages/multi-recipient`,
    ]);
  }
}

import { randomUUID } from 'node:crypto';
import { Injectable, Optional } from '@nestjs/common';
// Not re-exported by the package's index; the package has no `exports` map, so its file is the public path.
import SealedSenderMultiRecipientMessage, { type Recipient } from '@signalapp/libsignal-client/dist/SealedSenderMultiRecipientMessage.js';
import {
  EnvelopeType,
  ErrorCode,
  type MultiRecipientSendRequest,
  type SealedSendRequest,
  type SendMessageResponse,
} from '@chat/protocol';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import { RelayException } from '../common/relay.exception.js';
import { DeliveryService } from '../gateway/delivery.service.js';
import { RelayMetrics } from '../metrics/relay-metrics.js';
import { MessagesRepository, type AddressedAccount, type NewMessage } from '../messages/messages.repository.js';
import { assertAddressedExactly, assertEachDeviceOnce, type AddressedDevice, type AddressedSide } from '../messages/messages.service.js';
import { accessGranted, multiAccessGranted } from './access-key.js';
import { SealedSenderRepository } from './sealed.repository.js';

const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function refused(): RelayException {
  return new RelayException(ErrorCode.SealedSenderRefused, 'The recipient does not accept sealed messages without its access key');
}

function unknownRecipient(): RelayException {
  return new RelayException(ErrorCode.UnknownRecipient, 'No such user, or it has no device with keys');
}

/** Who a multi-recipient send comes from: nobody the relay knows (an access key), or an authenticated device (the fallback). */
export type MultiRecipientSender = { accessKey: Buffer | null } | { device: AuthenticatedDevice };

/**
 * Sealed sends (docs/protocol.md, "Sealed sender"): the relay checks that
 * the sender holds the recipient's access key and addresses its devices
 * exactly, then stores one sealed envelope per device with no sender. It
 * never learns, stores or logs who sent them.
 */
@Injectable()
export class SealedSendService {
  constructor(
    private readonly access: SealedSenderRepository,
    private readonly messages: MessagesRepository,
    private readonly delivery: DeliveryService,
    @Optional() private readonly metrics?: RelayMetrics,
  ) {}

  /**
   * One sealed ciphertext per device of `to`, admitted by `accessKey` (or
   * by the recipient's unrestricted setting).
   *
   * @throws RelayException SEALED_SENDER_REFUSED (also for an unknown recipient), UNKNOWN_RECIPIENT (no keyed device), MISMATCHED_DEVICES, STALE_DEVICES, VALIDATION_FAILED
   */
  async send(request: SealedSendRequest, accessKey: Buffer | null): Promise<SendMessageResponse> {
    assertEachDeviceOnce('messages', request.messages);
    if (!accessGranted(await this.access.findAccessByUsername(request.to), accessKey)) throw refused();

    const previous = await this.previousAnswer(request.id);
    if (previous) return previous;

    const recipient = await this.messages.findAccountByUsername(request.to);
    if (!recipient || recipient.devices.length === 0) throw unknownRecipient();
    assertAddressedExactly([
      { list: 'messages', account: recipient, devices: recipient.devices, messages: request.messages, partial: request.partial === true },
    ]);
    const rowIdOf = new Map(recipient.devices.map((device) => [device.deviceId, device.deviceRowId]));
    return this.store(
      request.messages.map((message) => ({
        deviceRowId: rowIdOf.get(message.deviceId) as string,
        ciphertext: new Uint8Array(Buffer.from(message.ciphertext, 'base64')),
      })),
      request.id,
    );
  }

  /**
   * A libsignal multi-recipient sealed message (Sealed Sender v2), split
   * into one sealed envelope per recipient device: each recipient's
   * `messageForRecipient`. Recipients are account ids. Unauthenticated, the
   * access key must be the XOR of every recipient's; authenticated (the
   * fallback), the sender's own device is exempt from its account's list.
   *
   * @throws RelayException VALIDATION_FAILED (payload), SEALED_SENDER_REFUSED, UNKNOWN_RECIPIENT (authenticated), MISMATCHED_DEVICES, STALE_DEVICES
   */
  async sendMultiRecipient(request: MultiRecipientSendRequest, sender: MultiRecipientSender): Promise<SendMessageResponse> {
    const message = parseMultiRecipient(request.payload);
    const recipients: Array<[string, Recipient]> = Object.entries(message.recipientsByServiceIdString());
    const accountIds = recipients.map(([serviceId]) => serviceId);
    const known = accountIds.filter((id) => UUID_PATTERN.test(id));

    if ('accessKey' in sender) {
      const access = await this.access.findAccessByIds(known);
      // An unknown recipient is refused like a wrong key: unauthenticated callers learn nothing about which accounts exist.
      if (access.length !== accountIds.length || !multiAccessGranted(access, sender.accessKey)) throw refused();
    }

    const previous = await this.previousAnswer(request.id);
    if (previous) return previous;

    const accounts = new Map((await this.messages.findAccountsByIds(known)).map((account) => [account.accountId, account]));
    const sides: Array<AddressedSide<AddressedDevice> & { recipient: Recipient }> = [];
    for (const [accountId, recipient] of recipients) {
      const account = accounts.get(accountId);
      const devices = account?.devices.filter((device) => !isSendingDevice(account, device.deviceId, sender)) ?? [];
      if (!account || devices.length === 0) throw unknownRecipient();
      const addressed = recipient.deviceIds.map((deviceId, i) => ({ deviceId, registrationId: recipient.registrationIds[i] as number }));
      assertEachDeviceOnce('messages', addressed);
      sides.push({ list: 'messages', account, devices, messages: addressed, partial: false, recipient });
    }
    assertAddressedExactly(sides);

    return this.store(
      sides.flatMap((side) => {
        const ciphertext = message.messageForRecipient(side.recipient);
        const rowIdOf = new Map(side.devices.map((device) => [device.deviceId, device.deviceRowId]));
        return side.messages.map((addressed) => ({ deviceRowId: rowIdOf.get(addressed.deviceId) as string, ciphertext }));
      }),
      request.id,
    );
  }

  private async previousAnswer(requestId: string | undefined): Promise<SendMessageResponse | null> {
    if (requestId === undefined) return null;
    const previous = await this.messages.findSealedSendAnswer(requestId);
    return previous ? { serverTimestamp: previous.getTime() } : null;
  }

  /** Stores the sealed envelopes, with no sender, and wakes their devices' connections. */
  private async store(
    addressed: Array<{ deviceRowId: string; ciphertext: Uint8Array<ArrayBuffer> }>,
    requestId: string | undefined,
  ): Promise<SendMessageResponse> {
    const serverTimestamp = new Date();
    const stored: NewMessage[] = addressed.map(({ deviceRowId, ciphertext }) => ({
      id: randomUUID(),
      recipientDeviceRowId: deviceRowId,
      senderAccountId: null,
      senderUsername: null,
      senderDeviceId: null,
      type: EnvelopeType.Sealed,
      ciphertext,
      serverTimestamp,
    }));
    const outcome = await this.messages.storeSealedSend(stored, requestId, serverTimestamp);
    if (outcome.kind === 'duplicate') return { serverTimestamp: outcome.serverTimestamp.getTime() };
    if (outcome.kind === 'recipient-gone') throw unknownRecipient();
    this.metrics?.messagesAccepted('sealed', stored.length);
    for (const message of stored) this.delivery.notify(message.recipientDeviceRowId);
    return { serverTimestamp: serverTimestamp.getTime() };
  }
}

/** The device that sends an authenticated multi-recipient message need not (cannot) address itself. */
function isSendingDevice(account: AddressedAccount, deviceId: number, sender: MultiRecipientSender): boolean {
  return 'device' in sender && sender.device.accountId === account.accountId && sender.device.deviceId === deviceId;
}

/** @throws RelayException VALIDATION_FAILED when libsignal cannot parse the payload */
function parseMultiRecipient(payload: string): SealedSenderMultiRecipientMessage {
  let message: SealedSenderMultiRecipientMessage;
  try {
    message = new SealedSenderMultiRecipientMessage(new Uint8Array(Buffer.from(payload, 'base64')));
  } catch {
    throw new RelayException(ErrorCode.ValidationFailed, 'The request is invalid', [
      'payload: must be a libsignal multi-recipient sealed sender message',
    ]);
  }
  if (Object.keys(message.recipientsByServiceIdString()).length === 0) {
    throw new RelayException(ErrorCode.ValidationFailed, 'The request is invalid', ['payload: must name at least one recipient']);
  }
  return message;
}

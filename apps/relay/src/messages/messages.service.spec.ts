import { describe, expect, it } from '@jest/globals';
import { EnvelopeType, ErrorCode, type Envelope, type SendMessageRequest } from '@chat/protocol';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import { RelayException } from '../common/relay.exception.js';
import type { DeliveryService } from '../gateway/delivery.service.js';
import type { MessagesRepository, NewMessage, Recipient } from './messages.repository.js';
import { MessagesService } from './messages.service.js';

const alice: AuthenticatedDevice = { accountId: 'acc-alice', username: 'alice', deviceId: 1, credentialVersion: 0, expiresAt: 0 };
const bobRecipient: Recipient = {
  accountId: 'acc-bob',
  devices: [
    { deviceRowId: 'row-bob-1', deviceId: 1 },
    { deviceRowId: 'row-bob-2', deviceId: 2 },
  ],
};

/** Records the order of stores and notifications in one log. */
function setUp(recipient: Recipient | null = bobRecipient) {
  const log: string[] = [];
  const stored: NewMessage[] = [];
  const repository = {
    findRecipient: async () => recipient,
    insertMessages: async (messages: NewMessage[]) => {
      stored.push(...messages);
      log.push(`insert ${messages.length}`);
      return true;
    },
  } as unknown as MessagesRepository;
  const notified: Array<[string, Envelope]> = [];
  const delivery = {
    notify: (deviceRowId: string, envelope: Envelope) => {
      notified.push([deviceRowId, envelope]);
      log.push(`notify ${deviceRowId}`);
    },
  } as unknown as DeliveryService;
  return { service: new MessagesService(repository, delivery), log, stored, notified };
}

const request = (...deviceIds: number[]): SendMessageRequest => ({
  to: 'bob',
  messages: deviceIds.map((deviceId) => ({ deviceId, type: EnvelopeType.Signal, ciphertext: Buffer.from(`to ${deviceId}`).toString('base64') })),
});

async function refusal(promise: Promise<unknown>): Promise<RelayException> {
  const error = await promise.then(() => undefined, (e: unknown) => e);
  expect(error).toBeInstanceOf(RelayException);
  return error as RelayException;
}

describe('MessagesService.send', () => {
  it('stores every device message in one insert, then notifies each recipient device', async () => {
    const { service, log, stored, notified } = setUp();
    const { serverTimestamp } = await service.send(alice, request(2, 1));
    expect(log).toEqual(['insert 2', 'notify row-bob-2', 'notify row-bob-1']);
    expect(stored.map((m) => [m.recipientDeviceRowId, Buffer.from(m.ciphertext).toString()])).toEqual([
      ['row-bob-2', 'to 2'],
      ['row-bob-1', 'to 1'],
    ]);
    expect(stored.every((m) => m.senderAccountId === 'acc-alice' && m.senderUsername === 'alice' && m.senderDeviceId === 1)).toBe(true);
    expect(new Set(stored.map((m) => m.id)).size).toBe(2);
    expect(notified[0]?.[1]).toEqual({
      id: stored[0]?.id,
      source: 'alice',
      sourceDevice: 1,
      type: EnvelopeType.Signal,
      ciphertext: Buffer.from('to 2').toString('base64'),
      serverTimestamp,
    });
  });

  it('refuses missing and extra devices with MISMATCHED_DEVICES and stores nothing', async () => {
    const { service, log } = setUp();
    const error = await refusal(service.send(alice, request(1, 3)));
    expect(error.code).toBe(ErrorCode.MismatchedDevices);
    expect(error.details).toEqual(['missing: 2', 'extra: 3']);
    expect(log).toEqual([]);
  });

  it('refuses a device addressed twice with VALIDATION_FAILED', async () => {
    const { service, log } = setUp();
    expect((await refusal(service.send(alice, request(1, 2, 2)))).code).toBe(ErrorCode.ValidationFailed);
    expect(log).toEqual([]);
  });

  it('refuses an account without keyed devices with UNKNOWN_RECIPIENT', async () => {
    const { service } = setUp(null);
    expect((await refusal(service.send(alice, request(1)))).code).toBe(ErrorCode.UnknownRecipient);
  });

  it("addresses only the sender's other devices when it sends to its own account", async () => {
    const { service, log } = setUp(bobRecipient);
    const bobOnDevice1: AuthenticatedDevice = { accountId: 'acc-bob', username: 'bob', deviceId: 1, credentialVersion: 0, expiresAt: 0 };
    expect((await refusal(service.send(bobOnDevice1, request(1, 2)))).details).toEqual(['extra: 1']);
    await service.send(bobOnDevice1, request(2));
    expect(log).toEqual(['insert 1', 'notify row-bob-2']);
  });

  it('refuses with UNKNOWN_RECIPIENT, notifying no one, when the recipient device is deleted before the insert', async () => {
    const { service, log } = setUp();
    (service as unknown as { messages: { insertMessages: () => Promise<boolean> } }).messages.insertMessages = async () => false;
    expect((await refusal(service.send(alice, request(1, 2)))).code).toBe(ErrorCode.UnknownRecipient);
    expect(log).toEqual([]);
  });

  it('does not notify anyone when the insert fails', async () => {
    const { service, log } = setUp();
    (service as unknown as { messages: { insertMessages: () => Promise<boolean> } }).messages.insertMessages = async () => {
      throw new Error('database down');
    };
    await expect(service.send(alice, request(1, 2))).rejects.toThrow('database down');
    expect(log).toEqual([]);
  });
});

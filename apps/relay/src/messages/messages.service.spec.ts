import { describe, expect, it } from '@jest/globals';
import { EnvelopeType, ErrorCode, type Envelope, type SendMessageRequest } from '@chat/protocol';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import { RelayException } from '../common/relay.exception.js';
import type { DeliveryService } from '../gateway/delivery.service.js';
import type { AddressedAccount, MessagesRepository, NewMessage, SentRequestRecord, StoreOutcome } from './messages.repository.js';
import { envelopeOf, MessagesService } from './messages.service.js';

const alice: AuthenticatedDevice = { accountId: 'acc-alice', username: 'alice', deviceId: 1, credentialVersion: 0, expiresAt: 0 };
const bob = (): AddressedAccount => ({
  accountId: 'acc-bob',
  username: 'bob',
  devices: [
    { deviceRowId: 'row-bob-1', deviceId: 1, registrationId: 101 },
    { deviceRowId: 'row-bob-2', deviceId: 2, registrationId: 102 },
  ],
  unlinked: new Set([3]),
});
const aliceAccount = (): AddressedAccount => ({
  accountId: 'acc-alice',
  username: 'alice',
  devices: [
    { deviceRowId: 'row-alice-1', deviceId: 1, registrationId: 201 },
    { deviceRowId: 'row-alice-2', deviceId: 2, registrationId: 202 },
  ],
  unlinked: new Set([4]),
});

/** Records the order of stores and notifications in one log. */
function setUp(accounts: AddressedAccount[] = [bob(), aliceAccount()]) {
  const log: string[] = [];
  const stored: NewMessage[] = [];
  const sentRequests = new Map<string, Date>();
  const byName = new Map(accounts.map((account) => [account.username, account]));
  const byId = new Map(accounts.map((account) => [account.accountId, account]));
  const repository = {
    findSendContext: async (_accountId: string, deviceId: number, requestId: string | undefined, to: string) => ({
      sender: { deviceRowId: `row-sender-${deviceId}`, previousServerTimestamp: requestId ? (sentRequests.get(requestId) ?? null) : null },
      recipient: byName.get(to) ?? null,
    }),
    findAccountById: async (accountId: string) => byId.get(accountId) ?? null,
    storeSend: async (messages: NewMessage[], sentRequest?: SentRequestRecord): Promise<StoreOutcome> => {
      if (sentRequest) {
        const earlier = sentRequests.get(sentRequest.requestId);
        if (earlier) return { kind: 'duplicate', serverTimestamp: earlier };
        sentRequests.set(sentRequest.requestId, sentRequest.serverTimestamp);
      }
      stored.push(...messages);
      log.push(`store ${messages.length}`);
      return { kind: 'stored' };
    },
  } as unknown as MessagesRepository;
  const ephemeral: Array<[string, Envelope]> = [];
  const handed: Array<[string, Envelope]> = [];
  const delivery = {
    stored: (deviceRowId: string, envelope: Envelope) => {
      log.push(`stored ${deviceRowId}`);
      handed.push([deviceRowId, envelope]);
    },
    deliverEphemeral: (deviceRowId: string, envelope: Envelope) => {
      ephemeral.push([deviceRowId, envelope]);
      return true;
    },
  } as unknown as DeliveryService;
  return { service: new MessagesService(repository, delivery), log, stored, ephemeral, handed, repository };
}

const to = (deviceId: number, registrationId: number) => ({
  deviceId,
  registrationId,
  type: EnvelopeType.Signal,
  ciphertext: Buffer.from(`to ${deviceId}`).toString('base64'),
});
const request = (...messages: Array<[number, number]>): SendMessageRequest => ({
  to: 'bob',
  messages: messages.map(([deviceId, registrationId]) => to(deviceId, registrationId)),
});
const toBob = () => request([1, 101], [2, 102]);

async function refusal(promise: Promise<unknown>): Promise<RelayException> {
  const error = await promise.then(() => undefined, (e: unknown) => e);
  expect(error).toBeInstanceOf(RelayException);
  return error as RelayException;
}

describe('MessagesService.send', () => {
  it('hands each recipient device the envelope a read of its stored row gives, once stored', async () => {
    const { service, stored, handed } = setUp();
    const { serverTimestamp } = await service.send(alice, request([2, 102], [1, 101]));
    expect(handed).toEqual(stored.map((message) => [message.recipientDeviceRowId, envelopeOf({ ...message, seq: 1n, source: message.senderUsername, sourceDevice: message.senderDeviceId, sourceAccountId: message.senderAccountId })]));
    expect(handed[0][1]).toEqual({
      id: stored[0].id,
      source: 'alice',
      sourceDevice: 1,
      sourceAccountId: 'acc-alice',
      type: EnvelopeType.Signal,
      ciphertext: Buffer.from('to 2').toString('base64'),
      serverTimestamp,
    });
  });

  it('stores every device message in one store, then hands each recipient device its envelope', async () => {
    const { service, log, stored } = setUp();
    await service.send(alice, request([2, 102], [1, 101]));
    expect(log).toEqual(['store 2', 'stored row-bob-2', 'stored row-bob-1']);
    expect(stored.map((m) => [m.recipientDeviceRowId, Buffer.from(m.ciphertext).toString()])).toEqual([
      ['row-bob-2', 'to 2'],
      ['row-bob-1', 'to 1'],
    ]);
    expect(stored.every((m) => m.senderAccountId === 'acc-alice' && m.senderUsername === 'alice' && m.senderDeviceId === 1)).toBe(true);
    expect(new Set(stored.map((m) => m.id)).size).toBe(2);
  });

  it("stores sync copies for the sender's other devices with the messages", async () => {
    const { service, log, stored } = setUp();
    await service.send(alice, { ...toBob(), sync: [to(2, 202)] });
    expect(log).toEqual(['store 3', 'stored row-bob-1', 'stored row-bob-2', 'stored row-alice-2']);
    expect(stored.map((m) => m.recipientDeviceRowId)).toEqual(['row-bob-1', 'row-bob-2', 'row-alice-2']);
  });

  it('refuses missing and extra devices of either list with one 409 entry per account, recipient first', async () => {
    const { service, log } = setUp();
    const error = await refusal(service.send(alice, { ...request([1, 101], [5, 1]), sync: [to(1, 201), to(2, 999)] }));
    expect(error.code).toBe(ErrorCode.MismatchedDevices);
    expect(error.toBody()).toMatchObject({
      details: ['missing: 2', 'extra: 5', 'sync extra: 1'],
      mismatched: [
        { username: 'bob', missing: [2], extra: [5] },
        { username: 'alice', missing: [], extra: [1] },
      ],
    });
    expect(error.toBody().stale).toBeUndefined();
    expect(log).toEqual([]);
  });

  it('refuses a wrong registration id and an unlinked device with 410 STALE_DEVICES once nothing is missing or extra', async () => {
    const { service, log } = setUp();
    const error = await refusal(service.send(alice, { ...request([1, 101], [2, 7], [3, 103]), sync: [to(2, 202), to(4, 204)] }));
    expect(error.code).toBe(ErrorCode.StaleDevices);
    expect(error.toBody()).toMatchObject({
      details: ['stale: 2,3', 'sync stale: 4'],
      stale: [
        { username: 'bob', devices: [2, 3] },
        { username: 'alice', devices: [4] },
      ],
    });
    expect(log).toEqual([]);
  });

  it('puts a mismatch before staleness', async () => {
    const { service } = setUp();
    expect((await refusal(service.send(alice, request([1, 7])))).code).toBe(ErrorCode.MismatchedDevices);
  });

  it('refuses a device addressed twice with VALIDATION_FAILED', async () => {
    const { service, log } = setUp();
    expect((await refusal(service.send(alice, request([1, 101], [2, 102], [2, 102])))).code).toBe(ErrorCode.ValidationFailed);
    expect((await refusal(service.send(alice, { ...toBob(), sync: [to(2, 202), to(2, 202)] }))).code).toBe(ErrorCode.ValidationFailed);
    expect(log).toEqual([]);
  });

  it('refuses an account without keyed devices with UNKNOWN_RECIPIENT', async () => {
    const { service } = setUp([{ ...bob(), devices: [] }]);
    expect((await refusal(service.send(alice, toBob()))).code).toBe(ErrorCode.UnknownRecipient);
    expect((await refusal(service.send(alice, { ...toBob(), to: 'nobody' }))).code).toBe(ErrorCode.UnknownRecipient);
  });

  it("addresses only the sender's other devices when it sends to its own account, and refuses sync there", async () => {
    const { service, log } = setUp();
    const bobOnDevice1: AuthenticatedDevice = { accountId: 'acc-bob', username: 'bob', deviceId: 1, credentialVersion: 0, expiresAt: 0 };
    expect((await refusal(service.send(bobOnDevice1, toBob()))).details).toEqual(['extra: 1']);
    expect((await refusal(service.send(bobOnDevice1, { ...request([2, 102]), sync: [] }))).code).toBe(ErrorCode.ValidationFailed);
    await service.send(bobOnDevice1, request([2, 102]));
    expect(log).toEqual(['store 1', 'stored row-bob-2']);
  });

  it('answers a repeated id with the first serverTimestamp and stores nothing more', async () => {
    const { service, log } = setUp();
    const id = '6f1c1f0e-8a49-4c39-9f0e-2f4b7c8f9a10';
    const first = await service.send(alice, { ...toBob(), id });
    const again = await service.send(alice, { ...request([1, 999]), id }); // checked before anything else
    expect(again).toEqual(first);
    expect(log).toEqual(['store 2', 'stored row-bob-1', 'stored row-bob-2']);
  });

  it('answers from the store when an identical send won the race after the first look-up', async () => {
    const { service, log, repository } = setUp();
    const id = '6f1c1f0e-8a49-4c39-9f0e-2f4b7c8f9a11';
    (repository as unknown as { storeSend: () => Promise<StoreOutcome> }).storeSend = async () => ({
      kind: 'duplicate',
      serverTimestamp: new Date(1234),
    });
    expect(await service.send(alice, { ...toBob(), id })).toEqual({ serverTimestamp: 1234 });
    expect(log).toEqual([]);
  });

  it('hands an ephemeral send to delivery only, as ephemeral envelopes with fresh ids', async () => {
    const { service, log, ephemeral } = setUp();
    const { serverTimestamp } = await service.send(alice, { ...toBob(), ephemeral: true });
    expect(log).toEqual([]);
    expect(ephemeral.map(([row]) => row)).toEqual(['row-bob-1', 'row-bob-2']);
    expect(ephemeral[0]?.[1]).toEqual({
      id: expect.stringMatching(/^[0-9a-f-]{36}$/),
      source: 'alice',
      sourceDevice: 1,
      sourceAccountId: 'acc-alice',
      type: EnvelopeType.Signal,
      ciphertext: Buffer.from('to 1').toString('base64'),
      serverTimestamp,
      ephemeral: true,
    });
    expect((await refusal(service.send(alice, { ...request([1, 101]), ephemeral: true }))).code).toBe(ErrorCode.MismatchedDevices);
  });

  it('refuses with UNKNOWN_RECIPIENT, waking no one, when a recipient device is deleted before the store', async () => {
    const { service, log, repository } = setUp();
    (repository as unknown as { storeSend: () => Promise<StoreOutcome> }).storeSend = async () => ({ kind: 'recipient-gone' });
    expect((await refusal(service.send(alice, toBob()))).code).toBe(ErrorCode.UnknownRecipient);
    expect(log).toEqual([]);
  });

  it('does not wake anyone when the store fails', async () => {
    const { service, log, repository } = setUp();
    (repository as unknown as { storeSend: () => Promise<StoreOutcome> }).storeSend = async () => {
      throw new Error('database down');
    };
    await expect(service.send(alice, toBob())).rejects.toThrow('database down');
    expect(log).toEqual([]);
  });
});

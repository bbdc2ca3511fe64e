import { randomBytes } from 'node:crypto';
import { describe, expect, it } from '@jest/globals';
import { CloseCode, ErrorCode, PROVISIONING_TTL_SECONDS } from '@chat/protocol';
import type { AuthService } from '../auth/auth.service.js';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import { Clock } from '../common/clock.js';
import { loadConfig } from '../config/relay-config.js';
import type { DeliveryService } from '../gateway/delivery.service.js';
import { smallestFreeDeviceId, type DevicesRepository, type ProvisioningSlotRecord } from './devices.repository.js';
import { DevicesService, hashSecret } from './devices.service.js';
import { codeOf } from '../../test/support/relay-errors.js';

const config = loadConfig({ JWT_SECRET: 'unit-test-secret-unit-test-secret-0123', MAX_DEVICES_PER_ACCOUNT: '4' });
const alice: AuthenticatedDevice = { accountId: 'acc-alice', username: 'alice', deviceId: 1, credentialVersion: 0, expiresAt: 0 };

class FixedClock extends Clock {
  constructor(public current: Date) {
    super();
  }
  override now(): Date {
    return this.current;
  }
}

/** A repository holding slots in memory, recording unlinks. */
function fakeRepository(unlinked: string | null = 'row-2') {
  const slots = new Map<string, ProvisioningSlotRecord>();
  const calls: string[] = [];
  const repository = {
    createSlot: async (id: string, secretHash: Uint8Array<ArrayBuffer>, expiresAt: Date) => {
      slots.set(id, { id, secretHash, accountId: null, message: null, expiresAt });
    },
    findSlot: async (id: string) => slots.get(id) ?? null,
    unlinkDevice: async (_accountId: string, deviceId: number) => {
      calls.push(`unlink ${deviceId}`);
      return unlinked;
    },
    approveSlot: async () => 'approved' as const,
    linkDevice: async () => 'not-found' as const,
  };
  return { repository: repository as unknown as DevicesRepository, slots, calls };
}

function serviceWith(repository: DevicesRepository, clock = new FixedClock(new Date('2026-12-01T12:00:00Z'))) {
  const closed: Array<[string, number, string]> = [];
  const delivery = { closeDevice: (row: string, code: number, reason: string) => closed.push([row, code, reason]) };
  const auth = {} as AuthService;
  const service = new DevicesService(repository, auth, delivery as unknown as DeliveryService, clock, config);
  return { service, closed, clock };
}

describe('DevicesService', () => {
  it('opens a slot whose stored hash is the SHA-256 of the secret it answers, expiring after the TTL', async () => {
    const { repository, slots } = fakeRepository();
    const { service, clock } = serviceWith(repository);
    const slot = await service.createSlot();
    const stored = slots.get(slot.id)!;
    expect(Buffer.from(stored.secretHash).equals(Buffer.from(hashSecret(slot.secret)))).toBe(true);
    expect(stored.expiresAt.getTime() - clock.now().getTime()).toBe(PROVISIONING_TTL_SECONDS * 1000);
  });

  it('answers receive with nothing before approval, and PROVISIONING_NOT_FOUND for a wrong secret or once expired', async () => {
    const { repository } = fakeRepository();
    const { service, clock } = serviceWith(repository);
    const slot = await service.createSlot();
    await expect(service.receive(slot.id, { secret: slot.secret })).resolves.toBeNull();
    expect(await codeOf(service.receive(slot.id, { secret: randomBytes(32).toString('base64url') }))).toBe(ErrorCode.ProvisioningNotFound);
    clock.current = new Date(clock.current.getTime() + PROVISIONING_TTL_SECONDS * 1000);
    expect(await codeOf(service.receive(slot.id, { secret: slot.secret }))).toBe(ErrorCode.ProvisioningNotFound);
  });

  it('refuses to link a slot that is not approved without asking the repository to link', async () => {
    const { repository } = fakeRepository();
    let linkCalls = 0;
    (repository as unknown as { linkDevice: () => Promise<string> }).linkDevice = async () => {
      linkCalls++;
      return 'not-found';
    };
    const { service } = serviceWith(repository);
    const slot = await service.createSlot();
    expect(await codeOf(service.link({ provisioningId: slot.id, secret: slot.secret }))).toBe(ErrorCode.ProvisioningNotFound);
    expect(linkCalls).toBe(0);
  });

  it('refuses to unlink device 1 with PRIMARY_DEVICE, touching nothing', async () => {
    const { repository, calls } = fakeRepository();
    const { service, closed } = serviceWith(repository);
    expect(await codeOf(service.unlink(alice, 1))).toBe(ErrorCode.PrimaryDevice);
    expect(calls).toEqual([]);
    expect(closed).toEqual([]);
  });

  it('closes the unlinked device\'s socket with 4410 DEVICE_UNLINKED, and nothing for a device the account does not have', async () => {
    const unlinked = serviceWith(fakeRepository('row-2').repository);
    await unlinked.service.unlink(alice, 2);
    expect(unlinked.closed).toEqual([['row-2', CloseCode.DeviceUnlinked, ErrorCode.DeviceUnlinked]]);

    const missing = serviceWith(fakeRepository(null).repository);
    expect(await codeOf(missing.service.unlink(alice, 5))).toBe(ErrorCode.DeviceNotFound);
    expect(missing.closed).toEqual([]);
  });

  it('maps the repository\'s outcomes of an approval to their codes', async () => {
    for (const [outcome, code] of [
      ['approved', undefined],
      ['not-found', ErrorCode.ProvisioningNotFound],
      ['too-many-devices', ErrorCode.TooManyDevices],
    ] as const) {
      const { repository } = fakeRepository();
      (repository as unknown as { approveSlot: () => Promise<string> }).approveSlot = async () => outcome;
      const { service } = serviceWith(repository);
      expect(await codeOf(service.approve(alice, 'slot', { message: 'AAAA' }))).toBe(code);
    }
  });
});

describe('smallestFreeDeviceId', () => {
  it.each([
    [[1], 2],
    [[1, 2, 3], 4],
    [[1, 3], 2],
    [[1, 2, 4, 5], 3],
  ])('picks the smallest id >= 2 not in %j: %i', (taken, expected) => {
    expect(smallestFreeDeviceId(new Set(taken))).toBe(expected);
  });
});

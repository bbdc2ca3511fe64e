import { createHash, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { Inject, Injectable } from '@nestjs/common';
import {
  CloseCode,
  ErrorCode,
  PRIMARY_DEVICE_ID,
  PROVISIONING_TTL_SECONDS,
  type AuthResponse,
  type LinkDeviceRequest,
  type ListDevicesResponse,
  type ProvisioningMessageRequest,
  type ProvisioningMessageResponse,
  type ProvisioningReceiveRequest,
  type ProvisioningSlotResponse,
} from '@chat/protocol';
import { AuthService } from '../auth/auth.service.js';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import { Clock } from '../common/clock.js';
import { RelayException } from '../common/relay.exception.js';
import { RELAY_CONFIG, type RelayConfig } from '../config/relay-config.js';
import { DeliveryService } from '../gateway/delivery.service.js';
import { DevicesRepository, type ProvisioningSlotRecord } from './devices.repository.js';

const SECRET_BYTES = 32;

/**
 * Linking devices through provisioning slots, listing and unlinking them
 * (docs/protocol.md, "Devices").
 *
 * The relay stores the provisioning message as opaque bytes: it is sealed
 * (HPKE, libsignal `PublicKey.seal`) to an ephemeral key that the new device
 * shows the approving device out of band. A slot's secret, which only the
 * new device knows, is kept as its SHA-256 and compared in constant time.
 */
@Injectable()
export class DevicesService {
  constructor(
    private readonly devices: DevicesRepository,
    private readonly auth: AuthService,
    private readonly delivery: DeliveryService,
    private readonly clock: Clock,
    @Inject(RELAY_CONFIG) private readonly config: RelayConfig,
  ) {}

  /** A new slot, open for `PROVISIONING_TTL_SECONDS`. */
  async createSlot(): Promise<ProvisioningSlotResponse> {
    const id = randomUUID();
    const secret = randomBytes(SECRET_BYTES).toString('base64url');
    const expiresAt = new Date(this.clock.now().getTime() + PROVISIONING_TTL_SECONDS * 1000);
    await this.devices.createSlot(id, hashSecret(secret), expiresAt);
    return { id, secret, expiresIn: PROVISIONING_TTL_SECONDS };
  }

  /**
   * Stores the sealed message in the slot and binds the slot to the
   * approver's account.
   * @throws RelayException PROVISIONING_NOT_FOUND (unknown, expired or already
   *   approved); TOO_MANY_DEVICES when the account has no room for another device
   */
  async approve(approver: AuthenticatedDevice, slotId: string, request: ProvisioningMessageRequest): Promise<void> {
    const message = new Uint8Array(Buffer.from(request.message, 'base64'));
    const outcome = await this.devices.approveSlot(slotId, approver.accountId, message, this.clock.now(), this.config.maxDevicesPerAccount);
    if (outcome === 'not-found') throw provisioningNotFound();
    if (outcome === 'too-many-devices') throw tooManyDevices(this.config.maxDevicesPerAccount);
  }

  /**
   * The sealed message once the slot is approved, null before.
   * @throws RelayException PROVISIONING_NOT_FOUND for an unknown or expired slot and a wrong secret alike
   */
  async receive(slotId: string, request: ProvisioningReceiveRequest): Promise<ProvisioningMessageResponse | null> {
    const slot = await this.openSlot(slotId, request.secret);
    return slot.message ? { message: Buffer.from(slot.message).toString('base64') } : null;
  }

  /**
   * Links a new device to the account that approved the slot and signs it
   * in. The slot is consumed. The device has no keys until it uploads them.
   * @throws RelayException PROVISIONING_NOT_FOUND (unknown, expired, not
   *   approved, used, wrong secret); TOO_MANY_DEVICES
   */
  async link(request: LinkDeviceRequest): Promise<AuthResponse> {
    const slot = await this.openSlot(request.provisioningId, request.secret);
    if (!slot.accountId || !slot.message) throw provisioningNotFound();
    const outcome = await this.devices.linkDevice(
      slot.id,
      slot.accountId,
      slot.secretHash,
      this.clock.now(),
      this.config.maxDevicesPerAccount,
    );
    if (outcome === 'not-found') throw provisioningNotFound();
    if (outcome === 'too-many-devices') throw tooManyDevices(this.config.maxDevicesPerAccount);
    return this.auth.issueTokens(outcome.linked);
  }

  async list(device: AuthenticatedDevice): Promise<ListDevicesResponse> {
    const devices = await this.devices.listDevices(device.accountId);
    return { devices: devices.map((d) => ({ deviceId: d.deviceId, createdAt: d.createdAt.getTime(), hasKeys: d.hasKeys })) };
  }

  /**
   * Unlinks a device of the caller's account: its keys, queue and tokens go,
   * a tombstone keeps its registration id (senders still addressing it get
   * STALE_DEVICES), and its socket is closed with 4410.
   * @throws RelayException PRIMARY_DEVICE for device 1; DEVICE_NOT_FOUND
   */
  async unlink(device: AuthenticatedDevice, deviceId: number): Promise<void> {
    if (deviceId === PRIMARY_DEVICE_ID) {
      throw new RelayException(ErrorCode.PrimaryDevice, 'The primary device cannot be unlinked; delete the account instead');
    }
    const deviceRowId = await this.devices.unlinkDevice(device.accountId, deviceId, this.clock.now());
    if (!deviceRowId) throw new RelayException(ErrorCode.DeviceNotFound, 'The account has no device of that id');
    this.delivery.closeDevice(deviceRowId, CloseCode.DeviceUnlinked, ErrorCode.DeviceUnlinked);
  }

  /** The slot, if it exists, is unexpired and `secret` is its secret; one answer for every other case. */
  private async openSlot(slotId: string, secret: string): Promise<ProvisioningSlotRecord> {
    const slot = await this.devices.findSlot(slotId);
    if (!slot || slot.expiresAt.getTime() <= this.clock.now().getTime() || !secretMatches(slot.secretHash, secret)) {
      throw provisioningNotFound();
    }
    return slot;
  }
}

/** Slot secrets are stored as the SHA-256 of their base64url text, as refresh tokens are. */
export function hashSecret(secret: string): Uint8Array<ArrayBuffer> {
  return new Uint8Array(createHash('sha256').update(secret).digest());
}

function secretMatches(storedHash: Uint8Array, secret: string): boolean {
  const presented = hashSecret(secret);
  return storedHash.length === presented.length && timingSafeEqual(storedHash, presented);
}

function provisioningNotFound(): RelayException {
  return new RelayException(ErrorCode.ProvisioningNotFound, 'No open provisioning slot of that id and secret');
}

function tooManyDevices(max: number): RelayException {
  return new RelayException(ErrorCode.TooManyDevices, `The account already has ${max} devices, the most this relay allows`);
}

import { IsInt, IsString, IsUUID, Matches, Max, Min } from 'class-validator';
import { DEVICE_ID_MAX, DEVICE_ID_MIN, MAX_PROVISIONING_MESSAGE_BYTES } from './limits.js';
import { FromDecimalString, IsBase64Bytes } from './validators.js';

/**
 * Linking a new device (docs/protocol.md, "Devices"). The new device opens a
 * provisioning slot and shows its id and an ephemeral public key to the user
 * (a QR code or URI, never to the relay); a signed-in device of the account
 * seals the account's identity key pair to that key and stores the sealed
 * message in the slot, which approves the link; the new device reads it,
 * opens it, and links itself with the slot's secret.
 */

/** A provisioning slot's secret: 32 random bytes, base64url without padding (43 characters). */
export const PROVISIONING_SECRET_PATTERN = /^[A-Za-z0-9_-]{43}$/;

/** `POST /v1/provisioning` (no authentication): 201. */
export interface ProvisioningSlotResponse {
  /** UUID; shown to the approving device with the ephemeral public key. */
  id: string;
  /** Known only to the new device; proves it is the slot's creator. Never show it. */
  secret: string;
  /** Seconds until the slot expires. */
  expiresIn: number;
}

/** `PUT /v1/provisioning/:id` (authenticated, the approving device): 204. */
export class ProvisioningMessageRequest {
  /** HPKE-sealed (libsignal `PublicKey.seal`) provisioning message; opaque to the relay. */
  @IsBase64Bytes(1, MAX_PROVISIONING_MESSAGE_BYTES)
  message!: string;
}

/** `POST /v1/provisioning/:id/receive` (no authentication). */
export class ProvisioningReceiveRequest {
  @IsString() @Matches(PROVISIONING_SECRET_PATTERN, { message: 'secret must be 43 characters of base64url' })
  secret!: string;
}

/** Answer to `POST /v1/provisioning/:id/receive` once the slot is approved: 200 (204 without a body before). */
export interface ProvisioningMessageResponse {
  message: string;
}

/** `POST /v1/devices/link` (no authentication): 201 with an `AuthResponse` for the new device. */
export class LinkDeviceRequest {
  @IsUUID()
  provisioningId!: string;

  @IsString() @Matches(PROVISIONING_SECRET_PATTERN, { message: 'secret must be 43 characters of base64url' })
  secret!: string;
}

/** One device of the account, as `GET /v1/devices` lists it. */
export interface DeviceInfo {
  deviceId: number;
  /** When it was registered or linked, ms since the epoch. */
  createdAt: number;
  /** Whether it has uploaded its keys (only such devices receive messages). */
  hasKeys: boolean;
}

/** `GET /v1/devices` (authenticated): 200. */
export interface ListDevicesResponse {
  /** Ascending device id. */
  devices: DeviceInfo[];
}

/** `DELETE /v1/devices/:deviceId` */
export class DeviceIdParam {
  @FromDecimalString() @IsInt() @Min(DEVICE_ID_MIN) @Max(DEVICE_ID_MAX)
  deviceId!: number;
}

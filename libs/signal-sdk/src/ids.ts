import { createHash } from 'node:crypto';

/**
 * Branded numbers and strings, so that a device id is never passed where a
 * prekey id or a registration id is expected (Mock-Signal-Server `types.ts`).
 */
declare const brand: unique symbol;
type Brand<T, B extends string> = T & { readonly [brand]: B };

/** A libsignal device id, 1..127 (`DEVICE_ID_MIN`..`DEVICE_ID_MAX`). */
export type DeviceId = Brand<number, 'DeviceId'>;
/** A libsignal registration id, 14-bit. */
export type RegistrationId = Brand<number, 'RegistrationId'>;
/** Id of a one-time Curve25519 prekey. */
export type PreKeyId = Brand<number, 'PreKeyId'>;
/** Id of a signed Curve25519 prekey. */
export type SignedPreKeyId = Brand<number, 'SignedPreKeyId'>;
/** Id of a Kyber prekey, one-time or last-resort. */
export type KyberPreKeyId = Brand<number, 'KyberPreKeyId'>;
/** The relay's id (UUID) of a stored message; acking it deletes the message. */
export type MessageId = Brand<string, 'MessageId'>;

export const asDeviceId = (id: number): DeviceId => id as DeviceId;
export const asRegistrationId = (id: number): RegistrationId => id as RegistrationId;
export const asMessageId = (id: string): MessageId => id as MessageId;

/**
 * A request id (a UUID) derived from another send's id for a companion
 * request of that send (its copies for this account's other devices), so
 * that a retry of the send repeats the companion's id too and the relay
 * stores it once. `purpose` keeps the ids of different companions apart.
 */
export function derivedRequestId(purpose: string, id: string): string {
  const hex = createHash('sha256').update(`${purpose}:${id}`).digest('hex');
  const variant = ((parseInt(hex.charAt(16), 16) & 0x3) | 0x8).toString(16);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-8${hex.slice(13, 16)}-${variant}${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

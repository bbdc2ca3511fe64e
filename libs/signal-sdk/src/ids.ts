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

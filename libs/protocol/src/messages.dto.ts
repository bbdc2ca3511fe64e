import { Transform, Type } from 'class-transformer';
import {
  ArrayMaxSize,
  ArrayMinSize,
  IsArray,
  IsBoolean,
  IsEnum,
  IsInt,
  IsOptional,
  IsString,
  IsUUID,
  Matches,
  Max,
  Min,
  ValidateNested,
} from 'class-validator';
import { canonicalUsername } from './auth.dto.js';
import {
  DEVICE_ID_MAX,
  DEVICE_ID_MIN,
  MAX_CIPHERTEXT_BYTES,
  MAX_DEVICES_PER_ACCOUNT,
  MAX_MESSAGES_PER_PAGE,
  MAX_MULTI_RECIPIENT_PAYLOAD_BYTES,
  REGISTRATION_ID_MAX,
  REGISTRATION_ID_MIN,
  USERNAME_PATTERN,
} from './limits.js';
import { FromDecimalString, IsBase64Bytes } from './validators.js';

/** What kind of libsignal message the ciphertext is. */
export enum EnvelopeType {
  /** `PreKeySignalMessage` (libsignal `CiphertextMessageType.PreKey`, 3): opens a session. */
  PreKey = 'prekey',
  /** `SignalMessage` (`CiphertextMessageType.Whisper`, 2): a Double Ratchet message. */
  Signal = 'signal',
  /**
   * A sealed-sender message (libsignal `sealedSenderEncrypt`, or one
   * recipient's part of a multi-recipient message): the sender is inside
   * the ciphertext. Only envelopes carry it; an authenticated send may not.
   */
  Sealed = 'sealed',
}

/** The `to` of a send: a username, compared in lower case. */
function IsRecipientUsername(): PropertyDecorator {
  return (target, property) => {
    Transform(({ value }) => (typeof value === 'string' ? canonicalUsername(value) : value))(target, property);
    IsString()(target, property);
    Matches(USERNAME_PATTERN, { message: 'to must be a username' })(target, property);
  };
}

/** One recipient device's sealed-sender ciphertext (`sealedSenderEncrypt`) in a sealed send. */
export class SealedDeviceMessage {
  @IsInt() @Min(DEVICE_ID_MIN) @Max(DEVICE_ID_MAX)
  deviceId!: number;

  /**
   * The registration id the sender's session has for this device (libsignal
   * `SessionRecord.remoteRegistrationId()`, or the bundle's). Another value
   * than the device's current one is `STALE_DEVICES` (410).
   */
  @IsInt() @Min(REGISTRATION_ID_MIN) @Max(REGISTRATION_ID_MAX)
  registrationId!: number;

  @IsBase64Bytes(1, MAX_CIPHERTEXT_BYTES)
  ciphertext!: string;
}

/** One recipient device's ciphertext within a send: a sealed one's fields and the libsignal message type. */
export class OutgoingDeviceMessage extends SealedDeviceMessage {
  @IsEnum(EnvelopeType)
  type!: EnvelopeType;
}


/**
 * `POST /v1/messages` and the `send` frame. The sender is the token's
 * account and device; there is no sender field.
 */
export class SendMessageRequest {
  @IsRecipientUsername()
  to!: string;

  /**
   * Client-chosen UUID naming this send. A send that repeats the id of an
   * accepted send of the same device (a retry after a lost answer) stores
   * nothing and is answered as the first one was. Optional; the SDK always
   * sets it.
   */
  @IsOptional() @IsUUID()
  id?: string;

  /** One ciphertext for each device of `to` that has keys. */
  @IsArray() @ArrayMinSize(1) @ArrayMaxSize(MAX_DEVICES_PER_ACCOUNT)
  @ValidateNested({ each: true }) @Type(() => OutgoingDeviceMessage)
  messages!: OutgoingDeviceMessage[];

  /**
   * Sync copies: one ciphertext for each other device of the sender's own
   * account that has keys, so that every device shows the whole
   * conversation. When present (even empty), it must address exactly those
   * devices (else `MISMATCHED_DEVICES`, or `STALE_DEVICES` for a wrong
   * registration id); absent, the send has no sync copies and no such check
   * (receipts and typing indicators are not synced). Refused when `to` is the
   * sender's own account: `messages` already addresses its other devices.
   */
  @IsOptional() @IsArray() @ArrayMaxSize(MAX_DEVICES_PER_ACCOUNT)
  @ValidateNested({ each: true }) @Type(() => OutgoingDeviceMessage)
  sync?: OutgoingDeviceMessage[];

  /**
   * Session repair: the send addresses only some of `to`'s devices (a
   * session reset request, or a resend to the device that asked for it), so
   * no device counts as missing. Extra and stale devices are still refused;
   * `sync` must be absent.
   */
  @IsOptional() @IsBoolean()
  partial?: boolean;

  /**
   * Ephemeral (typing indicators): handed only to devices connected right
   * now, never stored, never queued for an offline device, not acked. The
   * answer's `serverTimestamp` says it was taken, not that anyone got it.
   */
  @IsOptional() @IsBoolean()
  ephemeral?: boolean;
}

export interface SendMessageResponse {
  /** Milliseconds since the Unix epoch at which the relay stored the message. */
  serverTimestamp: number;
}

/** A stored message as the recipient device receives it. */
export interface Envelope {
  /** UUID; ack it to delete the message. */
  id: string;
  /** The sender's username; absent for a sealed envelope (`type: 'sealed'`), whose sender only the recipient learns. */
  source?: string;
  /** Absent for a sealed envelope. */
  sourceDevice?: number;
  /** The sender's account id (the UUID in its sender certificates); absent for a sealed envelope. */
  sourceAccountId?: string;
  type: EnvelopeType;
  ciphertext: string;
  serverTimestamp: number;
  /** Present and true for an ephemeral send: it was never stored, and is not acked. */
  ephemeral?: boolean;
}

/** `GET /v1/messages?limit=` */
export class ListMessagesQuery {
  @IsOptional()
  @FromDecimalString()
  @IsInt() @Min(1) @Max(MAX_MESSAGES_PER_PAGE)
  limit?: number;
}

export interface ListMessagesResponse {
  /** Oldest first. */
  messages: Envelope[];
  /** True when more are stored than this page holds. */
  more: boolean;
}

/**
 * `POST /v1/messages/sealed`: unauthenticated, with the recipient's access
 * key in the `Unidentified-Access-Key` header. The relay learns the
 * recipient, not the sender. Device checks as for `POST /v1/messages`.
 */
export class SealedSendRequest {
  @IsRecipientUsername()
  to!: string;

  /** Client-chosen UUID; a repeat of an accepted sealed send with this id stores nothing (ids of sealed sends are one space, not per sender). */
  @IsOptional() @IsUUID()
  id?: string;

  @IsArray() @ArrayMinSize(1) @ArrayMaxSize(MAX_DEVICES_PER_ACCOUNT)
  @ValidateNested({ each: true }) @Type(() => SealedDeviceMessage)
  messages!: SealedDeviceMessage[];

  /** As for `POST /v1/messages`: session repair to some of the devices. */
  @IsOptional() @IsBoolean()
  partial?: boolean;
}

/**
 * `POST /v1/messages/multi-recipient`: unauthenticated, with the XOR of
 * every recipient account's access key in `Unidentified-Access-Key`. One
 * upload (libsignal `sealedSenderMultiRecipientEncrypt`, recipients
 * addressed by account id) that the relay splits into one sealed envelope
 * per recipient device.
 */
export class MultiRecipientSendRequest {
  /** Client-chosen UUID, as for a sealed send. */
  @IsOptional() @IsUUID()
  id?: string;

  @IsBase64Bytes(1, MAX_MULTI_RECIPIENT_PAYLOAD_BYTES)
  payload!: string;
}

import { Transform, Type } from 'class-transformer';
import {
  ArrayMaxSize,
  ArrayMinSize,
  IsArray,
  IsEnum,
  IsInt,
  IsOptional,
  IsString,
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
  USERNAME_PATTERN,
} from './limits.js';
import { IsBase64Bytes } from './validators.js';

/** What kind of libsignal message the ciphertext is. */
export enum EnvelopeType {
  /** `PreKeySignalMessage` (libsignal `CiphertextMessageType.PreKey`, 3): opens a session. */
  PreKey = 'prekey',
  /** `SignalMessage` (`CiphertextMessageType.Whisper`, 2): a Double Ratchet message. */
  Signal = 'signal',
}

/** One recipient device's ciphertext within a send. */
export class OutgoingDeviceMessage {
  @IsInt() @Min(DEVICE_ID_MIN) @Max(DEVICE_ID_MAX)
  deviceId!: number;

  @IsEnum(EnvelopeType)
  type!: EnvelopeType;

  @IsBase64Bytes(1, MAX_CIPHERTEXT_BYTES)
  ciphertext!: string;
}

/**
 * `POST /v1/messages` and the `send` frame. The sender is the token's
 * account and device; there is no sender field.
 */
export class SendMessageRequest {
  @Transform(({ value }) => (typeof value === 'string' ? canonicalUsername(value) : value))
  @IsString()
  @Matches(USERNAME_PATTERN, { message: 'to must be a username' })
  to!: string;

  @IsArray() @ArrayMinSize(1) @ArrayMaxSize(MAX_DEVICES_PER_ACCOUNT)
  @ValidateNested({ each: true }) @Type(() => OutgoingDeviceMessage)
  messages!: OutgoingDeviceMessage[];
}

export interface SendMessageResponse {
  /** Milliseconds since the Unix epoch at which the relay stored the message. */
  serverTimestamp: number;
}

/** A stored message as the recipient device receives it. */
export interface Envelope {
  /** UUID; ack it to delete the message. */
  id: string;
  /** The sender's username. */
  source: string;
  sourceDevice: number;
  type: EnvelopeType;
  ciphertext: string;
  serverTimestamp: number;
}

/** `GET /v1/messages?limit=` */
export class ListMessagesQuery {
  @IsOptional()
  @Type(() => Number)
  @IsInt() @Min(1) @Max(MAX_MESSAGES_PER_PAGE)
  limit?: number;
}

export interface ListMessagesResponse {
  /** Oldest first. */
  messages: Envelope[];
  /** True when more are stored than this page holds. */
  more: boolean;
}

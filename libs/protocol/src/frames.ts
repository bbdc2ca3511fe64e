import { Type } from 'class-transformer';
import { Equals, IsObject, IsString, IsUUID, Length, ValidateNested } from 'class-validator';
import type { DeviceMismatch, ErrorCode, StaleDeviceList } from './errors.js';
import { REQUEST_ID_MAX_LENGTH } from './limits.js';
import { SendMessageRequest, type Envelope } from './messages.dto.js';

/**
 * WebSocket frames: one JSON object per text frame, discriminated by `type`.
 */
export enum ClientFrameType {
  Send = 'send',
  Ack = 'ack',
}

export enum ServerFrameType {
  Message = 'message',
  QueueEmpty = 'queue-empty',
  Sent = 'sent',
  Error = 'error',
  KeysLow = 'keys-low',
}

/** Client to relay: store and deliver a message; answered by `sent` or `error` with the same `requestId`. */
export class SendFrame {
  @Equals(ClientFrameType.Send)
  type!: ClientFrameType.Send;

  @IsString() @Length(1, REQUEST_ID_MAX_LENGTH)
  requestId!: string;

  // IsObject: ValidateNested alone lets an array through (it validates each element of none).
  @IsObject() @ValidateNested() @Type(() => SendMessageRequest)
  message!: SendMessageRequest;
}

/** Client to relay: the envelope was handed to the app; delete it. Not answered. */
export class AckFrame {
  @Equals(ClientFrameType.Ack)
  type!: ClientFrameType.Ack;

  @IsUUID()
  id!: string;
}

export type ClientFrame = SendFrame | AckFrame;

export interface MessageFrame {
  type: ServerFrameType.Message;
  envelope: Envelope;
}

/** Everything stored before the socket opened has been sent. */
export interface QueueEmptyFrame {
  type: ServerFrameType.QueueEmpty;
}

export interface SentFrame {
  type: ServerFrameType.Sent;
  requestId: string;
  serverTimestamp: number;
}

export interface ErrorFrame {
  type: ServerFrameType.Error;
  /** Present when the error answers a frame that carried one. */
  requestId?: string;
  code: ErrorCode;
  message: string;
  details?: string[];
  /** For `MISMATCHED_DEVICES`, as in the HTTP error body. */
  mismatched?: DeviceMismatch[];
  /** For `STALE_DEVICES`, as in the HTTP error body. */
  stale?: StaleDeviceList[];
  /** For `RATE_LIMITED`: seconds until a retry can succeed, as in the HTTP error body. */
  retryAfter?: number;
}

/**
 * The device holds fewer one-time prekeys than `threshold` at the relay:
 * upload a fresh batch. Sent after `queue-empty` when the socket opens and
 * whenever a bundle fetch takes a count below the threshold.
 */
export interface KeysLowFrame {
  type: ServerFrameType.KeysLow;
  preKeys: number;
  kyberPreKeys: number;
  threshold: number;
}

/** Server-to-client frames by type. */
export interface ServerFrameMap {
  [ServerFrameType.Message]: MessageFrame;
  [ServerFrameType.QueueEmpty]: QueueEmptyFrame;
  [ServerFrameType.Sent]: SentFrame;
  [ServerFrameType.Error]: ErrorFrame;
  [ServerFrameType.KeysLow]: KeysLowFrame;
}

export type ServerFrame = ServerFrameMap[ServerFrameType];

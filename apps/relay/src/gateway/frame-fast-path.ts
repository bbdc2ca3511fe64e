import { isBoolean, isEnum, isInt, isUUID, max, min } from 'class-validator';
import {
  AckFrame,
  canonicalUsername,
  ClientFrameType,
  decodedBase64Length,
  DEVICE_ID_MAX,
  DEVICE_ID_MIN,
  EnvelopeType,
  MAX_CIPHERTEXT_BYTES,
  MAX_DEVICES_PER_ACCOUNT,
  REGISTRATION_ID_MAX,
  REGISTRATION_ID_MIN,
  SendFrame,
  USERNAME_PATTERN,
  type OutgoingDeviceMessage,
  type SendMessageRequest,
} from '@chat/protocol';

// The two frames every message costs (its `send`, its `ack`) checked without
// class-transformer and class-validator, which cost tens of microseconds a
// frame, several times the rest of the frame's handling. Each check below is
// the DTO decorator's own predicate (class-validator's `isUUID`, `isInt`, …,
// the protocol's `decodedBase64Length`), and a frame is accepted here only in
// the plain shape clients send: exactly the DTO's fields, optional ones absent
// rather than null, a printable-ASCII requestId. Anything else returns
// undefined, and the caller runs the full validation, which also words any
// refusal; so this path never accepts a frame the DTOs refuse, nor refuses one.

type PlainObject = Record<string, unknown>;

const isPlainObject = (value: unknown): value is PlainObject =>
  typeof value === 'object' && value !== null && !Array.isArray(value) && Object.getPrototypeOf(value) === Object.prototype;

/** Only `allowed` keys, and every `required` one present (not undefined). */
function hasFields(value: PlainObject, required: readonly string[], optional: readonly string[] = []): boolean {
  for (const key of Object.keys(value)) if (!required.includes(key) && !optional.includes(key)) return false;
  return required.every((key) => value[key] !== undefined);
}

/** 1 to 64 printable ASCII characters: where `@Length` (which counts code points) and `.length` agree. */
const PLAIN_REQUEST_ID = /^[\x20-\x7e]{1,64}$/;

const DEVICE_MESSAGE_FIELDS = ['deviceId', 'registrationId', 'type', 'ciphertext'] as const;

function deviceMessageOf(value: unknown): OutgoingDeviceMessage | undefined {
  if (!isPlainObject(value) || !hasFields(value, DEVICE_MESSAGE_FIELDS)) return undefined;
  const { deviceId, registrationId, type, ciphertext } = value;
  if (!isInt(deviceId) || !min(deviceId, DEVICE_ID_MIN) || !max(deviceId, DEVICE_ID_MAX)) return undefined;
  if (!isInt(registrationId) || !min(registrationId, REGISTRATION_ID_MIN) || !max(registrationId, REGISTRATION_ID_MAX)) return undefined;
  if (!isEnum(type, EnvelopeType)) return undefined;
  if (typeof ciphertext !== 'string') return undefined;
  const bytes = decodedBase64Length(ciphertext);
  if (bytes < 1 || bytes > MAX_CIPHERTEXT_BYTES) return undefined;
  return { deviceId: deviceId as number, registrationId: registrationId as number, type: type as EnvelopeType, ciphertext };
}

function deviceMessagesOf(value: unknown, least: number): OutgoingDeviceMessage[] | undefined {
  if (!Array.isArray(value) || value.length < least || value.length > MAX_DEVICES_PER_ACCOUNT) return undefined;
  const messages: OutgoingDeviceMessage[] = [];
  for (const entry of value) {
    const message = deviceMessageOf(entry);
    if (!message) return undefined;
    messages.push(message);
  }
  return messages;
}

/** The `send` frame as `validateFrame(SendFrame, frame)` would give it, or undefined when the full validation must decide. */
export function plainSendFrame(frame: PlainObject): SendFrame | undefined {
  if (!hasFields(frame, ['type', 'requestId', 'message']) || frame['type'] !== ClientFrameType.Send) return undefined;
  const { requestId, message } = frame;
  if (typeof requestId !== 'string' || !PLAIN_REQUEST_ID.test(requestId) || !isPlainObject(message)) return undefined;
  if (!hasFields(message, ['to', 'messages'], ['id', 'sync', 'partial', 'ephemeral'])) return undefined;
  const { to, id, sync, partial, ephemeral } = message;
  // `to` is compared in lower case: the DTO's transform runs before its pattern check.
  if (typeof to !== 'string' || !USERNAME_PATTERN.test(canonicalUsername(to))) return undefined;
  if (id !== undefined && !isUUID(id)) return undefined;
  if ((partial !== undefined && !isBoolean(partial)) || (ephemeral !== undefined && !isBoolean(ephemeral))) return undefined;
  const messages = deviceMessagesOf(message['messages'], 1);
  const syncMessages = sync === undefined ? undefined : deviceMessagesOf(sync, 0);
  if (!messages || (sync !== undefined && !syncMessages)) return undefined;
  const request: SendMessageRequest = {
    to: canonicalUsername(to),
    messages,
    ...(id !== undefined && { id: id as string }),
    ...(syncMessages !== undefined && { sync: syncMessages }),
    ...(partial !== undefined && { partial: partial as boolean }),
    ...(ephemeral !== undefined && { ephemeral: ephemeral as boolean }),
  };
  return { type: ClientFrameType.Send, requestId, message: request };
}

/** The `ack` frame as `validateFrame(AckFrame, frame)` would give it, or undefined when the full validation must decide. */
export function plainAckFrame(frame: PlainObject): AckFrame | undefined {
  if (!hasFields(frame, ['type', 'id']) || frame['type'] !== ClientFrameType.Ack || !isUUID(frame['id'])) return undefined;
  return { type: ClientFrameType.Ack, id: frame['id'] as string };
}

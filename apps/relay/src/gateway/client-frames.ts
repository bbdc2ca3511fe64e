import { plainToInstance, type ClassConstructor } from 'class-transformer';
import { length, validateSync } from 'class-validator';
import {
  ClientFrameType,
  ErrorCode,
  REQUEST_ID_MAX_LENGTH,
  ServerFrameType,
  type ErrorFrame,
} from '@chat/protocol';
import { RelayException } from '../common/relay.exception.js';
import { oversizedJsonException, validationException } from '../common/validation.js';

const CLIENT_FRAME_TYPES = new Set<string>(Object.values(ClientFrameType));

/** A text frame read as a client frame, or the `error` frame that answers it. */
export type ParsedClientFrame =
  | { kind: 'frame'; type: ClientFrameType; frame: Record<string, unknown> }
  | { kind: 'refused'; answer: ErrorFrame };

/** Sorts a raw frame into a known `type` or the refusal (MALFORMED_JSON, VALIDATION_FAILED, UNKNOWN_FRAME_TYPE). */
export function parseClientFrame(data: string | Buffer | ArrayBuffer | Buffer[]): ParsedClientFrame {
  const text = typeof data === 'string' ? data : Buffer.isBuffer(data) ? data.toString('utf8') : Buffer.from(data as ArrayBuffer).toString('utf8');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return refused(new RelayException(ErrorCode.MalformedJson, 'The frame is not valid JSON'));
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return refused(new RelayException(ErrorCode.ValidationFailed, 'The frame is invalid', ['frame: must be a JSON object']));
  }
  const frame = value as Record<string, unknown>;
  if (typeof frame['type'] !== 'string' || !CLIENT_FRAME_TYPES.has(frame['type'])) {
    return refused(new RelayException(ErrorCode.UnknownFrameType, 'The frame type is not known'), requestIdOf(frame));
  }
  return { kind: 'frame', type: frame['type'] as ClientFrameType, frame };
}

/**
 * The frame as its DTO class, checked as strictly as HTTP bodies are: unknown
 * fields are refused.
 *
 * @throws RelayException VALIDATION_FAILED
 */
export function validateFrame<T extends object>(type: ClassConstructor<T>, frame: unknown): T {
  // class-transformer recurses into every nested value; see RelayValidationPipe.
  const oversized = oversizedJsonException(frame, 'frame');
  if (oversized) throw oversized;
  const instance = plainToInstance(type, frame);
  const errors = validateSync(instance, {
    whitelist: true,
    forbidNonWhitelisted: true,
    forbidUnknownValues: true,
    validationError: { target: false, value: false },
  });
  if (errors.length > 0) throw validationException(errors);
  return instance;
}

/**
 * The client's `requestId`, echoed in an answer only when it is one the client
 * could have meant: exactly the ones `SendFrame` accepts (`@Length` counts
 * characters, not UTF-16 units, so 64 emoji are a valid requestId, and a
 * refusal of their frame must carry them as its `sent` would).
 */
export function requestIdOf(frame: unknown): string | undefined {
  const requestId = (frame as { requestId?: unknown } | null)?.requestId;
  return typeof requestId === 'string' && length(requestId, 1, REQUEST_ID_MAX_LENGTH) ? requestId : undefined;
}

export function errorFrame(exception: RelayException, requestId?: string): ErrorFrame {
  return {
    type: ServerFrameType.Error,
    ...(requestId !== undefined && { requestId }),
    ...exception.toBody(),
  };
}

function refused(exception: RelayException, requestId?: string): ParsedClientFrame {
  return { kind: 'refused', answer: errorFrame(exception, requestId) };
}

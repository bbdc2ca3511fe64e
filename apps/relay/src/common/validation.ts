import { ValidationPipe, type ArgumentMetadata, type ValidationError } from '@nestjs/common';
import { ErrorCode, jsonBoundExceeded, MAX_JSON_DEPTH, MAX_JSON_VALUES } from '@chat/protocol';
import { RelayException } from './relay.exception.js';

/** One line per failed constraint, each naming its field path (`devices[0].keyId: ...`). */
export function describeValidationErrors(errors: ValidationError[], parentPath = ''): string[] {
  return errors.flatMap((error) => {
    const path = fieldPath(parentPath, error.property);
    const own = Object.values(error.constraints ?? {}).map((message) => `${path}: ${message}`);
    return [...own, ...describeValidationErrors(error.children ?? [], path)];
  });
}

function fieldPath(parent: string, property: string): string {
  if (!parent) return property;
  return /^\d+$/.test(property) ? `${parent}[${property}]` : `${parent}.${property}`;
}

export function validationException(errors: ValidationError[]): RelayException {
  return new RelayException(ErrorCode.ValidationFailed, 'The request is invalid', describeValidationErrors(errors));
}

/**
 * VALIDATION_FAILED for JSON past `MAX_JSON_DEPTH` or `MAX_JSON_VALUES`,
 * naming where (`body`, `frame`); undefined for JSON within both.
 */
export function oversizedJsonException(value: unknown, where: string): RelayException | undefined {
  const exceeded = jsonBoundExceeded(value, MAX_JSON_DEPTH, MAX_JSON_VALUES);
  if (exceeded === undefined) return undefined;
  const detail = exceeded === 'depth' ? `must not nest deeper than ${MAX_JSON_DEPTH} levels` : `must not hold more than ${MAX_JSON_VALUES} values`;
  return new RelayException(ErrorCode.ValidationFailed, 'The request is invalid', [`${where}: ${detail}`]);
}

/**
 * class-transformer and class-validator walk a value recursively, spending
 * time and answer bytes on each value: a body nested a few thousand levels
 * deep (a few KB of `[`) overflowed the stack (500), and one of 150,000 `{}`
 * held the event loop for seconds. Such input is refused before they see it.
 */
class RelayValidationPipe extends ValidationPipe {
  override async transform(value: unknown, metadata: ArgumentMetadata): Promise<unknown> {
    const oversized = metadata.type === 'custom' ? undefined : oversizedJsonException(value, metadata.type);
    if (oversized) throw oversized;
    return super.transform(value, metadata);
  }
}

/**
 * The relay's one validation pipe: unknown fields are refused, not dropped, so
 * that a client bug shows up; values are transformed into the DTO classes.
 */
export function createValidationPipe(): ValidationPipe {
  return new RelayValidationPipe({
    whitelist: true,
    forbidNonWhitelisted: true,
    forbidUnknownValues: true,
    transform: true,
    validationError: { target: false, value: false },
    exceptionFactory: validationException,
  });
}

import { ValidationPipe, type ArgumentMetadata, type ValidationError } from '@nestjs/common';
import { ErrorCode, jsonDepthExceeds, MAX_JSON_DEPTH } from '@chat/protocol';
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

/** VALIDATION_FAILED for JSON nested past `MAX_JSON_DEPTH`, naming where (`body`, `frame`). */
export function tooDeepException(where: string): RelayException {
  return new RelayException(ErrorCode.ValidationFailed, 'The request is invalid', [`${where}: must not nest deeper than ${MAX_JSON_DEPTH} levels`]);
}

/**
 * class-transformer and class-validator walk a value recursively: a body
 * nested a few thousand levels deep (a few KB of `[`) overflows the stack,
 * which would answer 500. Such input is refused before they see it.
 */
class RelayValidationPipe extends ValidationPipe {
  override async transform(value: unknown, metadata: ArgumentMetadata): Promise<unknown> {
    if (metadata.type !== 'custom' && jsonDepthExceeds(value, MAX_JSON_DEPTH)) throw tooDeepException(metadata.type);
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

import { ValidationPipe, type ValidationError } from '@nestjs/common';
import { ErrorCode } from '@chat/protocol';
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
 * The relay's one validation pipe: unknown fields are refused, not dropped, so
 * that a client bug shows up; values are transformed into the DTO classes.
 */
export function createValidationPipe(): ValidationPipe {
  return new ValidationPipe({
    whitelist: true,
    forbidNonWhitelisted: true,
    forbidUnknownValues: true,
    transform: true,
    validationError: { target: false, value: false },
    exceptionFactory: validationException,
  });
}

import { ValidateBy, buildMessage, type ValidationOptions } from 'class-validator';

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Bytes a padded standard-alphabet base64 string decodes to, or -1 if it is not one. */
export function decodedBase64Length(value: string): number {
  if (!BASE64.test(value)) return -1;
  const padding = value.endsWith('==') ? 2 : value.endsWith('=') ? 1 : 0;
  return (value.length / 4) * 3 - padding;
}

/**
 * A padded standard base64 string (RFC 4648 section 4) that decodes to between
 * `min` and `max` bytes. Byte fields on the wire are all of this form.
 */
export function IsBase64Bytes(min: number, max: number = min, options?: ValidationOptions): PropertyDecorator {
  return ValidateBy(
    {
      name: 'isBase64Bytes',
      constraints: [min, max],
      validator: {
        validate(value: unknown): boolean {
          if (typeof value !== 'string') return false;
          const length = decodedBase64Length(value);
          return length >= min && length <= max;
        },
        defaultMessage: buildMessage(
          (each) =>
            min === max
              ? `${each}$property must be base64 of exactly ${min} bytes`
              : `${each}$property must be base64 of ${min} to ${max} bytes`,
          options,
        ),
      },
    },
    options,
  );
}

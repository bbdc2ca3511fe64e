import { Transform } from 'class-transformer';
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

/**
 * Which bound `value` breaks, if any: nesting deeper than `maxDepth` levels (a
 * scalar is level 0, `{}` and `[]` level 1) or more than `maxValues` values
 * in all (every object, array and scalar counts one). Iterative, and it stops
 * at the first bound broken, so a hostile value costs it no stack and little time.
 */
export function jsonBoundExceeded(value: unknown, maxDepth: number, maxValues: number): 'depth' | 'values' | undefined {
  const pending: Array<[unknown, number]> = [[value, 1]];
  let values = 0;
  for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
    if (++values > maxValues) return 'values';
    const [node, depth] = next;
    if (typeof node !== 'object' || node === null) continue;
    if (depth > maxDepth) return 'depth';
    for (const child of Array.isArray(node) ? node : Object.values(node)) pending.push([child, depth + 1]);
  }
  return undefined;
}

/**
 * A path or query parameter read as a number: decimal digits only. `Number()`
 * (class-transformer's `@Type(() => Number)`) also reads `0x1`, ` 1`, `1.0`,
 * `1e0` and `''` (as 0), so `DELETE /v1/devices/0x1` reached device 1; such
 * spellings become NaN here, which `@IsInt` refuses. Numbers and absent values pass as they are.
 */
export function FromDecimalString(): PropertyDecorator {
  return Transform(({ value }: { value: unknown }) =>
    value === undefined || value === null || typeof value === 'number'
      ? value
      : typeof value === 'string' && /^[0-9]{1,15}$/.test(value)
        ? Number(value)
        : Number.NaN,
  );
}

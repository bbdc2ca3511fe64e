import { LibSignalErrorBase } from '@signalapp/libsignal-client';

/**
 * True when `error` is one of libsignal's errors.
 *
 * `instanceof LibSignalErrorBase` alone is not enough: libsignal's native
 * addon builds its errors from the error classes it was first registered
 * with in the process. Where a process evaluates libsignal's JavaScript more
 * than once (Jest gives every test file its own module registry), an error
 * can be an instance of another evaluation's class; its `code` and `is()` are
 * the same. So the prototype chain is checked by class name as well.
 */
export function isLibSignalError(error: unknown): error is LibSignalErrorBase {
  if (error instanceof LibSignalErrorBase) return true;
  if (typeof error !== 'object' || error === null || typeof (error as { code?: unknown }).code !== 'number') return false;
  for (let proto: unknown = Object.getPrototypeOf(error); proto !== null && typeof proto === 'object'; proto = Object.getPrototypeOf(proto)) {
    if ((proto as { constructor?: { name?: unknown } }).constructor?.name === LibSignalErrorBase.name) return true;
  }
  return false;
}

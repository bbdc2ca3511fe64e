import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import type { SecureChatStores } from '../stores/stores.js';
import { STORE_NAMES } from '../stores/transactional-stores.js';

/** How a store refuses what a message asks for, which libsignal expects; not a failure. */
const isRefusal = (error: unknown): error is SecureChatError =>
  SecureChatError.is(error, SecureChatErrorCode.RecordNotFound) || SecureChatError.is(error, SecureChatErrorCode.PreKeyReused);

/**
 * Runs a libsignal operation over `stores` and, if a store call failed during
 * it, throws that store failure instead of libsignal's error.
 *
 * libsignal reports an error thrown by a store callback as its own Generic
 * error ("error in method call 'loadSession'"), the original lost; a caller
 * would then take a broken store (disk full, a tampered record) for a message
 * that can never decrypt and drop the message. `RecordNotFound` and
 * `PreKeyReused` are not failures: they are how a store refuses an unknown
 * id or a replayed prekey use, which libsignal expects.
 * `onRefusal` hears each such refusal, so a caller can tell why libsignal failed.
 * @throws {SecureChatError} the store's own `SecureChatError`, or `StoreFailure` wrapping what it threw;
 *   otherwise whatever `operation` threw.
 */
export async function withStoreFailures<T>(
  stores: SecureChatStores,
  operation: (stores: SecureChatStores) => Promise<T>,
  onRefusal?: (refusal: SecureChatError) => void,
): Promise<T> {
  let failure: { error: unknown } | undefined;
  const watch = <S extends object>(store: S): S =>
    new Proxy(store, {
      get(target, property) {
        const value: unknown = Reflect.get(target, property, target);
        if (typeof value !== 'function' || property === 'constructor') return value;
        const method = value as (...args: unknown[]) => Promise<unknown>;
        return async (...args: unknown[]) => {
          try {
            return await method.apply(target, args);
          } catch (error) {
            if (isRefusal(error)) onRefusal?.(error);
            else failure ??= { error };
            throw error;
          }
        };
      },
    });
  const watched = { ...stores, ...Object.fromEntries(STORE_NAMES.map((name) => [name, watch(stores[name])])) } as SecureChatStores;
  try {
    return await operation(watched);
  } catch (error) {
    if (!failure) throw error;
    throw SecureChatError.is(failure.error)
      ? failure.error
      : new SecureChatError(SecureChatErrorCode.StoreFailure, 'a store call failed', { cause: failure.error });
  }
}

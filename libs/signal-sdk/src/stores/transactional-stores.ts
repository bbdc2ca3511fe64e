import PQueue from 'p-queue';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import type { SecureChatStores } from './stores.js';

/** How a storage engine starts, commits and undoes a transaction. */
export interface TransactionHooks {
  begin(): void | Promise<void>;
  commit(): void | Promise<void>;
  /** Also called after a failed `commit`, so it must cope with a transaction that is already gone. */
  rollback(): void | Promise<void>;
}

/** The seven stores, without `transaction`. */
export type StoreSet = Omit<SecureChatStores, 'transaction'>;

export const STORE_NAMES = ['session', 'identity', 'preKey', 'signedPreKey', 'kyberPreKey', 'senderKey', 'metadata'] as const;

/**
 * One FIFO lane for every access to a set of stores: a store call, a whole
 * transaction, or a maintenance task (close, re-keying) runs alone, in the
 * order it was asked for.
 */
export class StoreGate {
  private readonly lane = new PQueue({ concurrency: 1 });

  exclusive<T>(task: () => T | Promise<T>): Promise<T> {
    return this.lane.add(async () => task());
  }
}

/**
 * Makes a set of stores transactional. The returned stores route every call
 * through `gate`, so a call made while a transaction is open waits until it
 * ends; the transaction's own calls go through the ungated `view` its
 * function receives (see `SecureChatStores.transaction` for why a view).
 */
export function transactionalStores(raw: StoreSet, hooks: TransactionHooks, gate = new StoreGate()): SecureChatStores {
  const view: SecureChatStores = { ...raw, transaction: (fn) => fn(view) };
  const gated = Object.fromEntries(STORE_NAMES.map((name) => [name, gateStore(raw[name], gate)])) as unknown as StoreSet;
  for (const name of STORE_NAMES) transactionOwner.set(gated[name], gate);
  return {
    ...gated,
    transaction: (fn) =>
      gate.exclusive(async () => {
        await hooks.begin();
        try {
          const result = await fn(view);
          await hooks.commit();
          return result;
        } catch (error) {
          await hooks.rollback();
          throw error;
        }
      }),
  };
}

/** Which transactional set each gated store belongs to. */
const transactionOwner = new WeakMap<object, StoreGate>();

/**
 * Refuses a set whose `transaction` cannot cover its stores: one made by
 * `transactionalStores` with some store swapped for another (say
 * `{ ...createMemoryStores(), session: mine }`). Its transaction would hand
 * libsignal the original store, so sessions would be written where the
 * client never reads them. Sets made elsewhere are trusted.
 * @throws {SecureChatError} `InvalidOptions`.
 */
export function assertTransactionCoversStores(stores: SecureChatStores): void {
  if (!stores.transaction) return;
  const owners = STORE_NAMES.map((name) => transactionOwner.get(stores[name]));
  if (owners.every((owner) => owner === undefined)) return;
  if (owners.some((owner) => owner !== owners[0])) {
    throw new SecureChatError(SecureChatErrorCode.InvalidOptions, 'a store set was changed after its transaction was made; pass the set whole');
  }
}

/**
 * The same store with each method queued on `gate`. A Proxy rather than a
 * wrapper class per store: it keeps the store's prototype (libsignal's
 * abstract classes) and covers methods a subclass adds.
 */
function gateStore<S extends object>(store: S, gate: StoreGate): S {
  return new Proxy(store, {
    get(target, property) {
      const value: unknown = Reflect.get(target, property, target);
      if (typeof value !== 'function' || property === 'constructor') return value;
      const method = value as (...args: unknown[]) => unknown;
      return (...args: unknown[]) => gate.exclusive(() => method.apply(target, args));
    },
  });
}

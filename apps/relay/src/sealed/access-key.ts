import { timingSafeEqual } from 'node:crypto';
import { ACCESS_KEY_BYTES } from '@chat/protocol';
import type { UnidentifiedAccess } from './sealed.repository.js';

/** Canonical base64 of exactly ACCESS_KEY_BYTES (16) bytes: 22 characters and `==`. */
const ACCESS_KEY_PATTERN = /^[A-Za-z0-9+/]{21}[AQgw]==$/;

/** The `Unidentified-Access-Key` header's 16 bytes; null when absent or not canonical base64 of 16 bytes. */
export function parseAccessKeyHeader(header: string | undefined): Buffer | null {
  if (header === undefined || !ACCESS_KEY_PATTERN.test(header)) return null;
  const key = Buffer.from(header, 'base64');
  return key.length === ACCESS_KEY_BYTES ? key : null;
}

const ZERO_KEY = Buffer.alloc(ACCESS_KEY_BYTES);

/**
 * Whether a sealed send may reach `account` with `presented` (Signal's
 * unidentified access): the account accepts sealed mail from anyone, or
 * `presented` equals its stored key, compared in constant time. An account
 * without a stored key accepts none; so does no account (`null`), after
 * the same comparison, so that timing tells nothing about which accounts exist.
 */
export function accessGranted(account: UnidentifiedAccess | null, presented: Buffer | null): boolean {
  const stored = account?.accessKey?.length === ACCESS_KEY_BYTES ? Buffer.from(account.accessKey) : null;
  const equal = timingSafeEqual(stored ?? ZERO_KEY, presented ?? ZERO_KEY);
  if (account?.unrestricted) return true;
  return stored !== null && presented !== null && equal;
}

/**
 * The key of a multi-recipient send: the XOR of every recipient account's
 * stored access key (an account without one counts as 16 zero bytes; it
 * is admitted only when unrestricted, see `multiAccessGranted`).
 */
export function combinedAccessKey(accounts: readonly UnidentifiedAccess[]): Buffer {
  const combined = Buffer.alloc(ACCESS_KEY_BYTES);
  for (const account of accounts) {
    if (account.accessKey?.length !== ACCESS_KEY_BYTES) continue;
    for (let i = 0; i < ACCESS_KEY_BYTES; i++) combined[i] = (combined[i] as number) ^ (account.accessKey[i] as number);
  }
  return combined;
}

/**
 * Whether an unauthenticated multi-recipient send may reach all of
 * `accounts`: every one has a key or is unrestricted, and `presented` is
 * the XOR of their stored keys (constant-time comparison).
 */
export function multiAccessGranted(accounts: readonly UnidentifiedAccess[], presented: Buffer | null): boolean {
  const equal = timingSafeEqual(combinedAccessKey(accounts), presented ?? ZERO_KEY);
  const everyAdmissible = accounts.every((account) => account.unrestricted || account.accessKey?.length === ACCESS_KEY_BYTES);
  return presented !== null && everyAdmissible && equal;
}

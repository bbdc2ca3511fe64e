import { randomBytes } from 'node:crypto';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';

/** Bytes of entropy in a recovery secret. */
export const RECOVERY_SECRET_BYTES = 32;
const HEX_DIGITS = RECOVERY_SECRET_BYTES * 2;
const GROUP_LENGTH = 4;
/** Spaces and hyphens a person may type between groups; they carry no meaning. */
const SEPARATORS = /[\s-]+/g;

/**
 * A new recovery secret: 32 random bytes as 64 lower-case hex digits in 16
 * groups of 4 (`3f9a 0c1e …`). The user keeps it; the relay never sees it.
 * Whoever holds it and the account password can restore the account.
 */
export function generateRecoverySecret(): string {
  const hex = randomBytes(RECOVERY_SECRET_BYTES).toString('hex');
  const groups = Array.from({ length: HEX_DIGITS / GROUP_LENGTH }, (_, i) => hex.slice(i * GROUP_LENGTH, (i + 1) * GROUP_LENGTH));
  return groups.join(' ');
}

/**
 * The 32 bytes a recovery secret stands for. Case, spaces and hyphens are
 * ignored; anything else must be exactly 64 hex digits.
 * @throws {SecureChatError} `InvalidRecoverySecret` when it is not a well-formed recovery secret.
 */
export function parseRecoverySecret(recoverySecret: string): Uint8Array<ArrayBuffer> {
  const hex = typeof recoverySecret === 'string' ? recoverySecret.replace(SEPARATORS, '').toLowerCase() : '';
  if (hex.length !== HEX_DIGITS || !/^[0-9a-f]+$/.test(hex)) {
    throw new SecureChatError(
      SecureChatErrorCode.InvalidRecoverySecret,
      `a recovery secret is ${HEX_DIGITS} hex digits (spaces and hyphens between them are ignored)`,
    );
  }
  return new Uint8Array(Buffer.from(hex, 'hex'));
}

import { describe, expect, it } from '@jest/globals';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { generateRecoverySecret, parseRecoverySecret } from './recovery-secret.js';

describe('recovery secrets', () => {
  it('are 32 random bytes as 16 groups of 4 hex digits', () => {
    const secrets = Array.from({ length: 50 }, generateRecoverySecret);
    for (const secret of secrets) {
      expect(secret).toMatch(/^[0-9a-f]{4}( [0-9a-f]{4}){15}$/);
      expect(Buffer.from(parseRecoverySecret(secret)).toString('hex')).toBe(secret.replaceAll(' ', ''));
    }
    expect(new Set(secrets).size).toBe(secrets.length);
  });

  it('parse ignoring case, spaces and hyphens between digits', () => {
    const secret = generateRecoverySecret();
    const bytes = parseRecoverySecret(secret);
    expect(bytes).toHaveLength(32);
    for (const typed of [secret.toUpperCase(), secret.replaceAll(' ', '-'), secret.replaceAll(' ', ''), ` ${secret}\n`]) {
      expect(parseRecoverySecret(typed)).toEqual(bytes);
    }
  });

  it.each([
    ['empty', ''],
    ['one digit short', '0'.repeat(63)],
    ['one digit long', '0'.repeat(65)],
    ['a non-hex letter', `${'0'.repeat(63)}g`],
    ['an unknown separator', `${'0'.repeat(32)}.${'0'.repeat(32)}`],
    ['a password instead', 'correct horse battery staple'],
    ['not a string', 42 as unknown as string],
  ])('refuse %s with InvalidRecoverySecret', (_what, secret) => {
    expect(() => parseRecoverySecret(secret)).toThrow(
      expect.objectContaining({ code: SecureChatErrorCode.InvalidRecoverySecret }) as unknown as SecureChatError,
    );
  });
});

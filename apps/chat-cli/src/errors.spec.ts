import { describe, expect, it } from '@jest/globals';
import { SecureChatError, SecureChatErrorCode } from '@chat/signal-sdk';
import { ErrorCode } from '@chat/protocol';
import { CliError, describeError } from './errors.js';

const relayRefusal = (relayCode: ErrorCode, extra: { retryAfter?: number } = {}) =>
  new SecureChatError(SecureChatErrorCode.RelayRejected, 'refused', { relayCode, ...extra });
const context = { relayUrl: 'http://127.0.0.1:8080', username: 'alice', peer: 'bob' };

describe('describeError', () => {
  it.each([
    ['relay down', new SecureChatError(SecureChatErrorCode.Network, 'ECONNREFUSED'), 'cannot reach the relay at http://127.0.0.1:8080'],
    ['wrong passphrase', new SecureChatError(SecureChatErrorCode.WrongPassphrase, 'x'), 'wrong passphrase for alice'],
    ['unknown user', relayRefusal(ErrorCode.UnknownRecipient), 'there is no user named bob'],
    ['identity changed', new SecureChatError(SecureChatErrorCode.IdentityChanged, 'x'), "bob's safety number changed"],
    ['rate limited', relayRefusal(ErrorCode.RateLimited, { retryAfter: 7 }), 'the relay is busy; try again in 7 s'],
    ['username taken', relayRefusal(ErrorCode.UsernameTaken), 'the username alice is taken'],
    ['store in use', new SecureChatError(SecureChatErrorCode.StoreLocked, 'x'), 'alice is open in another chat-cli'],
    ['session expired', new SecureChatError(SecureChatErrorCode.SessionExpired, 'x'), 'the session of alice expired'],
    ['credentials changed', new SecureChatError(SecureChatErrorCode.CredentialsChanged, 'x'), 'the password of alice was changed'],
    ['device unlinked', new SecureChatError(SecureChatErrorCode.DeviceUnlinked, 'x'), 'this device was unlinked from alice'],
  ])('words %s as one sentence naming what to do', (_, error, expected) => {
    const text = describeError(error, context);
    expect(text).toContain(expected);
    expect(text).not.toContain('\n');
  });

  it('puts the SDK or relay code in brackets after the sentence', () => {
    expect(describeError(relayRefusal(ErrorCode.UnknownRecipient), context)).toBe('there is no user named bob [UNKNOWN_RECIPIENT]');
    expect(describeError(new SecureChatError(SecureChatErrorCode.WrongPassphrase, 'x'), context)).toBe('wrong passphrase for alice [WRONG_PASSPHRASE]');
  });

  it('mentions /verify and /accept for an identity change', () => {
    expect(describeError(new SecureChatError(SecureChatErrorCode.IdentityChanged, 'x'), context)).toMatch(/\/verify.*\/accept/);
  });

  it('passes a CliError through and never shows a stack for anything else', () => {
    expect(describeError(new CliError('as worded'))).toBe('as worded');
    const text = describeError(new TypeError('boom'));
    expect(text).toBe('unexpected failure: boom');
  });
});

import { describe, expect, it } from '@jest/globals';
import { ErrorCode, SignalMessage } from '@signalapp/libsignal-client';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { isLibSignalError } from './libsignal-errors.js';

describe('isLibSignalError', () => {
  it("recognises libsignal's own errors", () => {
    let thrown: unknown;
    try {
      SignalMessage.deserialize(new Uint8Array([1, 2, 3]));
    } catch (error) {
      thrown = error;
    }
    expect(isLibSignalError(thrown)).toBe(true);
  });

  it("recognises an error of another evaluation of libsignal's module, by its class", () => {
    // What the native addon hands out when another copy of the module registered first.
    class LibSignalErrorBase extends Error {
      readonly code = ErrorCode.DuplicatedMessage;
      is(code: ErrorCode) {
        return this.code === code;
      }
    }
    const foreign = new LibSignalErrorBase('message with old counter');
    expect(isLibSignalError(foreign)).toBe(true);
    expect(isLibSignalError(foreign) && foreign.is(ErrorCode.DuplicatedMessage)).toBe(true);
  });

  it('refuses everything else, also errors that carry a numeric code', () => {
    const withCode = Object.assign(new Error('EACCES'), { code: 13 });
    for (const other of [new Error('x'), withCode, new SecureChatError(SecureChatErrorCode.StoreFailure, 'disk full'), null, 'LibSignalErrorBase', { code: 1 }]) {
      expect(isLibSignalError(other)).toBe(false);
    }
  });
});

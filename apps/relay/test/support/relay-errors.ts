import type { ErrorCode } from '@chat/protocol';
import { RelayException } from '../../src/common/relay.exception.js';

/** The code of the `RelayException` that `promise` rejects with, or undefined when it resolves; anything else is rethrown. */
export async function codeOf(promise: Promise<unknown>): Promise<ErrorCode | undefined> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof RelayException) return error.code;
    throw error;
  }
  return undefined;
}

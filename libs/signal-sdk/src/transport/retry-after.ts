import { ErrorCode } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';

/** How long to hold back when the relay said `RATE_LIMITED` without saying for how long. */
export const DEFAULT_RETRY_AFTER_SECONDS = 60;

/**
 * Remembers, per key (a bundle's username), until when the relay asked not
 * to be asked again, so that a client does not hammer it: until then a
 * request is refused here, as the relay would refuse it.
 */
export class RetryAfterMemory {
  private readonly until = new Map<string, number>();

  constructor(private readonly now: () => number) {}

  /**
   * @throws {SecureChatError} `RelayRejected` with relay code `RATE_LIMITED` and `retryAfter`
   *   (whole seconds left) while the relay's last answer for `key` still holds.
   */
  assertReady(key: string): void {
    const until = this.until.get(key);
    if (until === undefined) return;
    const left = until - this.now();
    if (left <= 0) {
      this.until.delete(key);
      return;
    }
    const retryAfter = Math.ceil(left / 1000);
    throw new SecureChatError(SecureChatErrorCode.RelayRejected, `the relay asked to wait ${retryAfter} s more before asking again`, {
      relayCode: ErrorCode.RateLimited,
      retryAfter,
    });
  }

  /** Keeps the relay's `RATE_LIMITED` answer for `key`; other errors are ignored. */
  remember(key: string, error: unknown): void {
    if (!SecureChatError.isRelay(error, ErrorCode.RateLimited)) return;
    for (const [other, until] of this.until) if (until <= this.now()) this.until.delete(other);
    this.until.set(key, this.now() + (error.retryAfter ?? DEFAULT_RETRY_AFTER_SECONDS) * 1000);
  }
}

export interface BackOffOptions {
  /** Upper bound of the first delay, ms. */
  initialDelayMs?: number;
  /** No delay exceeds this, ms. */
  maxDelayMs?: number;
  /** Uniform in [0, 1); injectable so tests are deterministic. */
  random?: () => number;
}

/**
 * Exponential back-off with full jitter: attempt n waits a uniform random
 * time in [0, min(max, initial * 2^n)), so that many clients dropped at once
 * do not reconnect in lockstep (Signal-Desktop `BackOff`, with AWS "full
 * jitter").
 */
export class BackOff {
  private attempt = 0;
  private readonly initialDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly random: () => number;

  constructor(options: BackOffOptions = {}) {
    this.initialDelayMs = options.initialDelayMs ?? 500;
    this.maxDelayMs = options.maxDelayMs ?? 60_000;
    this.random = options.random ?? Math.random;
    if (!(this.initialDelayMs > 0) || !(this.maxDelayMs >= this.initialDelayMs)) {
      throw new RangeError('back-off needs 0 < initialDelayMs <= maxDelayMs');
    }
  }

  /** The ceiling of the next delay. */
  get ceilingMs(): number {
    return Math.min(this.maxDelayMs, this.initialDelayMs * 2 ** Math.min(this.attempt, 52));
  }

  /** The delay before the next attempt; each call counts one more attempt. */
  next(): number {
    const delay = Math.floor(this.random() * this.ceilingMs);
    this.attempt++;
    return Math.min(Math.max(delay, 0), this.maxDelayMs);
  }

  /** After a success, start again from the first delay. */
  reset(): void {
    this.attempt = 0;
  }

  get attempts(): number {
    return this.attempt;
  }
}

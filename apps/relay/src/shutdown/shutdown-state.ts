import { Injectable } from '@nestjs/common';

/**
 * Whether the relay is shutting down, and the work it must finish first:
 * HTTP requests and WebSocket frames that started before the drain. Work is
 * counted, never cancelled; the drain waits for the count to reach zero.
 */
@Injectable()
export class ShutdownState {
  private draining = false;
  private inFlight = 0;
  private readonly idleWaiters: Array<() => void> = [];

  get isDraining(): boolean {
    return this.draining;
  }

  /** The work still running. */
  get inFlightCount(): number {
    return this.inFlight;
  }

  startDraining(): void {
    this.draining = true;
  }

  /** Counts `work` until it settles; returns it unchanged. */
  track<T>(work: Promise<T>): Promise<T> {
    this.begin();
    return work.finally(() => this.end());
  }

  /** For work that ends on an event rather than a promise (an HTTP response); call `end` once. */
  begin(): void {
    this.inFlight++;
  }

  end(): void {
    this.inFlight--;
    if (this.inFlight === 0) for (const resolve of this.idleWaiters.splice(0)) resolve();
  }

  /** Resolves once no tracked work is running. */
  idle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }
}

import type { DeviceId } from '../ids.js';

/** Default least time between two reset requests to one peer device, and between two resends to one. */
export const DEFAULT_SESSION_RESET_INTERVAL_MS = 60_000;

/** What to do about a message from a peer device that did not decrypt but a new session could fix. */
export enum ResetDecision {
  /** Ask the peer device to start over now. */
  Request = 'request',
  /**
   * A request sent within the interval, from which nothing of the peer device
   * has decrypted yet, asked for everything since a point at or before this
   * message: the peer will resend this one too.
   */
  Covered = 'covered',
  /** A request was sent within the interval and does not cover this message: do not ask again yet. */
  Limited = 'limited',
}

interface ResetRequest {
  sentAt: number;
  since: number;
  /** A message of the peer device decrypted after the request was sent. */
  heardFrom: boolean;
}

/**
 * The rate limits of session repair (docs/architecture.md, "Session repair"):
 * at most one reset request to a peer device, and at most one resend to a
 * peer device, per interval, so two broken clients cannot keep each other
 * busy. In memory: a restart forgets them.
 */
export class SessionRepairLimiter {
  private readonly requests = new Map<string, ResetRequest>();
  private readonly resends = new Map<string, number>();

  constructor(
    private readonly intervalMs: number,
    private readonly now: () => number,
  ) {}

  /** `serverTimestamp`: the relay's, of the envelope that did not decrypt. */
  decide(peer: string, device: DeviceId, serverTimestamp: number): ResetDecision {
    const request = this.requests.get(keyOf(peer, device));
    if (!request || !this.within(request.sentAt)) return ResetDecision.Request;
    return !request.heardFrom && serverTimestamp >= request.since ? ResetDecision.Covered : ResetDecision.Limited;
  }

  /** A reset request asking for everything since `since` reached the relay. */
  requested(peer: string, device: DeviceId, since: number): void {
    this.forgetExpired();
    this.requests.set(keyOf(peer, device), { sentAt: this.now(), since, heardFrom: false });
  }

  /** A message of the peer device decrypted. */
  heardFrom(peer: string, device: DeviceId): void {
    const request = this.requests.get(keyOf(peer, device));
    if (request) request.heardFrom = true;
  }

  mayResend(peer: string, device: DeviceId): boolean {
    const at = this.resends.get(keyOf(peer, device));
    return at === undefined || !this.within(at);
  }

  /** A resend to the peer device finished. */
  resent(peer: string, device: DeviceId): void {
    this.forgetExpired();
    this.resends.set(keyOf(peer, device), this.now());
  }

  /** A clock that went back counts as within the interval. */
  private within(at: number): boolean {
    return this.now() - at < this.intervalMs;
  }

  private forgetExpired(): void {
    for (const [key, request] of this.requests) if (!this.within(request.sentAt)) this.requests.delete(key);
    for (const [key, at] of this.resends) if (!this.within(at)) this.resends.delete(key);
  }
}

const keyOf = (peer: string, device: DeviceId) => `${peer}.${device}`;

import { Inject, Injectable } from '@nestjs/common';
import type { RateLimiterAbstract } from 'rate-limiter-flexible';
import { canonicalUsername } from '@chat/protocol';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import { RELAY_CONFIG, type RateLimit, type RelayConfig } from '../config/relay-config.js';
import { consumeOrRefuse, RATE_LIMITER_FACTORY, type RateLimiterFactory } from './rate-limiter.js';

/** The limits counted by `RateLimits`; the value is the counters' name (a Redis key segment). */
export enum RateLimitName {
  /** `POST /v1/auth/register`, per client IP. */
  Register = 'register-ip',
  /** `POST /v1/auth/login`, per username tried (canonical), every attempt. */
  LoginPerUsername = 'login-username',
  /** `POST /v1/auth/login`, per client IP. */
  LoginPerIp = 'login-ip',
  /** `POST /v1/auth/refresh`, per client IP. */
  Refresh = 'refresh-ip',
  /** `POST /v1/auth/password` and `DELETE /v1/account` together, per account. */
  PasswordCheck = 'password-account',
  /** Authenticated sends (HTTP and the WebSocket `send` frame), per sender device. */
  SendPerDevice = 'send-device',
  /** Authenticated sends, per sender account and recipient username. */
  SendPerPair = 'send-pair',
  /** Sealed and multi-recipient sends, per client IP only: a sealed send names no sender. */
  SealedSendPerIp = 'sealed-send-ip',
  /** Bytes of request bodies and WebSocket frames, per authenticated account. */
  InboundBytesPerAccount = 'inbound-bytes-account',
  /** Bytes of request bodies to unauthenticated endpoints, per client IP. */
  InboundBytesPerIp = 'inbound-bytes-ip',
}

/** Who sent inbound bytes: an authenticated account, or else a client IP. */
export type InboundSource = { readonly accountId: string } | { readonly ip: string };

const REFUSALS: Record<RateLimitName, string> = {
  [RateLimitName.Register]: 'Too many registrations; retry later',
  [RateLimitName.LoginPerUsername]: 'Too many sign-ins; retry later',
  [RateLimitName.LoginPerIp]: 'Too many sign-ins; retry later',
  [RateLimitName.Refresh]: 'Too many token refreshes; retry later',
  [RateLimitName.PasswordCheck]: 'Too many password checks; retry later',
  [RateLimitName.SendPerDevice]: 'Too many messages; retry later',
  [RateLimitName.SendPerPair]: 'Too many messages to this recipient; retry later',
  [RateLimitName.SealedSendPerIp]: 'Too many messages; retry later',
  [RateLimitName.InboundBytesPerAccount]: 'Too much data sent; retry later',
  [RateLimitName.InboundBytesPerIp]: 'Too much data sent; retry later',
};

/** The key a device's sends count under. */
export const sendPerDeviceKey = (sender: AuthenticatedDevice): string => `${sender.accountId}:${sender.deviceId}`;

/** The key of a sender account and a recipient, or undefined when `to` is not even a string (validation refuses it next). */
export const sendPerPairKey = (sender: AuthenticatedDevice, to: unknown): string | undefined =>
  typeof to === 'string' ? `${sender.accountId}:${canonicalUsername(to)}` : undefined;

/**
 * The relay's request limits (other than bundle fetches and provisioning,
 * which have guards of their own), on the store of `RATE_LIMITER_FACTORY`:
 * Redis with REDIS_URL, so that all instances share each budget; memory
 * otherwise. Every refusal is RATE_LIMITED with `retryAfter`.
 */
@Injectable()
export class RateLimits {
  private readonly limiters: Record<RateLimitName, RateLimiterAbstract>;

  constructor(@Inject(RELAY_CONFIG) config: RelayConfig, @Inject(RATE_LIMITER_FACTORY) createLimiter: RateLimiterFactory) {
    const limits = config.rateLimits;
    const rules: Record<RateLimitName, RateLimit> = {
      [RateLimitName.Register]: limits.registerPerIp,
      [RateLimitName.LoginPerUsername]: limits.loginPerUsername,
      [RateLimitName.LoginPerIp]: limits.loginPerIp,
      [RateLimitName.Refresh]: limits.refreshPerIp,
      [RateLimitName.PasswordCheck]: limits.passwordChecksPerAccount,
      [RateLimitName.SendPerDevice]: limits.sendsPerDevice,
      [RateLimitName.SendPerPair]: limits.sendsPerPair,
      [RateLimitName.SealedSendPerIp]: limits.sealedSendsPerIp,
      [RateLimitName.InboundBytesPerAccount]: limits.inboundBytesPerAccount,
      [RateLimitName.InboundBytesPerIp]: limits.inboundBytesPerIp,
    };
    this.limiters = Object.fromEntries(
      Object.values(RateLimitName).map((name) => [name, createLimiter({ name, ...rules[name] })]),
    ) as Record<RateLimitName, RateLimiterAbstract>;
  }

  /** @throws RelayException RATE_LIMITED with `retryAfter` in seconds */
  consume(name: RateLimitName, key: string, points = 1): Promise<void> {
    return consumeOrRefuse(this.limiters[name], key, REFUSALS[name], points);
  }

  /**
   * One authenticated send: per sender device, then per sender account and
   * recipient (`to` as sent; usernames are case-insensitive).
   *
   * @throws RelayException RATE_LIMITED with `retryAfter` in seconds
   */
  async consumeSend(sender: AuthenticatedDevice, to: unknown): Promise<void> {
    await this.consume(RateLimitName.SendPerDevice, sendPerDeviceKey(sender));
    const pair = sendPerPairKey(sender, to);
    if (pair !== undefined) await this.consume(RateLimitName.SendPerPair, pair);
  }

  /**
   * `bytes` received from an account (any request or frame it authenticated)
   * or from a client IP (unauthenticated requests). Nothing is counted for 0.
   *
   * @throws RelayException RATE_LIMITED with `retryAfter` in seconds
   */
  async consumeInboundBytes(source: InboundSource, bytes: number): Promise<void> {
    if (bytes <= 0) return;
    if ('accountId' in source) await this.consume(RateLimitName.InboundBytesPerAccount, source.accountId, bytes);
    else await this.consume(RateLimitName.InboundBytesPerIp, source.ip, bytes);
  }
}

import { describe, expect, it } from '@jest/globals';
import { asDeviceId } from '../ids.js';
import { ResetDecision, SessionRepairLimiter } from './session-repair.js';

const INTERVAL = 1_000;
const ALICE_1 = ['alice', asDeviceId(1)] as const;

function limiter() {
  const clock = { now: 50_000 };
  return { clock, limits: new SessionRepairLimiter(INTERVAL, () => clock.now) };
}

describe('SessionRepairLimiter', () => {
  it('asks at the first failure, then takes later failures as covered by the unanswered request', () => {
    const { clock, limits } = limiter();
    expect(limits.decide(...ALICE_1, 10_000)).toBe(ResetDecision.Request);
    limits.requested(...ALICE_1, 10_000);
    clock.now += 10;
    expect(limits.decide(...ALICE_1, 10_000)).toBe(ResetDecision.Covered);
    expect(limits.decide(...ALICE_1, 10_005)).toBe(ResetDecision.Covered);
    // An envelope older than the point asked for is not covered by the request.
    expect(limits.decide(...ALICE_1, 9_999)).toBe(ResetDecision.Limited);
  });

  it('refuses a second request within the interval once the peer device was heard from, and allows one after it', () => {
    const { clock, limits } = limiter();
    limits.requested(...ALICE_1, 10_000);
    limits.heardFrom(...ALICE_1);
    clock.now += INTERVAL - 1;
    expect(limits.decide(...ALICE_1, 10_100)).toBe(ResetDecision.Limited);
    clock.now += 1;
    expect(limits.decide(...ALICE_1, 10_100)).toBe(ResetDecision.Request);
  });

  it('allows a new request after the interval even when the old one was never answered', () => {
    const { clock, limits } = limiter();
    limits.requested(...ALICE_1, 10_000);
    clock.now += INTERVAL;
    expect(limits.decide(...ALICE_1, 10_100)).toBe(ResetDecision.Request);
  });

  it('keeps peers and devices apart', () => {
    const { limits } = limiter();
    limits.requested(...ALICE_1, 10_000);
    limits.heardFrom(...ALICE_1);
    expect(limits.decide(...ALICE_1, 10_001)).toBe(ResetDecision.Limited);
    expect(limits.decide('alice', asDeviceId(2), 10_001)).toBe(ResetDecision.Request);
    expect(limits.decide('bob', asDeviceId(1), 10_001)).toBe(ResetDecision.Request);
  });

  it('allows one resend per peer device per interval', () => {
    const { clock, limits } = limiter();
    expect(limits.mayResend(...ALICE_1)).toBe(true);
    limits.resent(...ALICE_1);
    expect(limits.mayResend(...ALICE_1)).toBe(false);
    expect(limits.mayResend('alice', asDeviceId(2))).toBe(true);
    clock.now += INTERVAL - 1;
    expect(limits.mayResend(...ALICE_1)).toBe(false);
    clock.now += 1;
    expect(limits.mayResend(...ALICE_1)).toBe(true);
  });

  it('treats a clock that went back as within the interval', () => {
    const { clock, limits } = limiter();
    limits.requested(...ALICE_1, 10_000);
    limits.heardFrom(...ALICE_1);
    limits.resent(...ALICE_1);
    clock.now -= 5 * INTERVAL;
    expect(limits.decide(...ALICE_1, 10_001)).toBe(ResetDecision.Limited);
    expect(limits.mayResend(...ALICE_1)).toBe(false);
  });

  it('bounds the requests to one peer device over a period to one per interval, however often it fails', () => {
    const { clock, limits } = limiter();
    let requests = 0;
    for (let t = 0; t < 10 * INTERVAL; t += 50) {
      clock.now = 50_000 + t;
      if (limits.decide(...ALICE_1, 10_000 + t) === ResetDecision.Request) {
        requests++;
        limits.requested(...ALICE_1, 10_000 + t);
      }
      // Every other failure, something of the peer decrypted in between.
      if (t % 100 === 0) limits.heardFrom(...ALICE_1);
    }
    expect(requests).toBe(10);
  });
});

import { BackOff } from './back-off.js';

describe('BackOff', () => {
  it('doubles the ceiling per attempt up to the maximum, with the delay at most the ceiling', () => {
    const backOff = new BackOff({ initialDelayMs: 100, maxDelayMs: 1_000, random: () => 0.999999 });
    const delays = Array.from({ length: 6 }, () => backOff.next());
    expect(delays).toEqual([99, 199, 399, 799, 999, 999]);
  });

  it('draws the full jitter range down to zero', () => {
    const backOff = new BackOff({ initialDelayMs: 100, maxDelayMs: 1_000, random: () => 0 });
    expect([backOff.next(), backOff.next(), backOff.next()]).toEqual([0, 0, 0]);
  });

  it('scales the injected randomness by the ceiling', () => {
    const backOff = new BackOff({ initialDelayMs: 100, maxDelayMs: 1_000, random: () => 0.5 });
    expect([backOff.next(), backOff.next(), backOff.next()]).toEqual([50, 100, 200]);
  });

  it('starts over after reset', () => {
    const backOff = new BackOff({ initialDelayMs: 100, maxDelayMs: 10_000, random: () => 0.5 });
    backOff.next();
    backOff.next();
    backOff.reset();
    expect(backOff.next()).toBe(50);
    expect(backOff.attempts).toBe(1);
  });

  it('stays within bounds after very many attempts', () => {
    const backOff = new BackOff({ initialDelayMs: 1, maxDelayMs: 60_000, random: () => 0.999 });
    for (let i = 0; i < 2_000; i++) backOff.next();
    const delay = backOff.next();
    expect(delay).toBeGreaterThanOrEqual(0);
    expect(delay).toBeLessThan(60_000);
  });

  it('refuses inverted bounds', () => {
    expect(() => new BackOff({ initialDelayMs: 10, maxDelayMs: 5 })).toThrow(RangeError);
  });
});

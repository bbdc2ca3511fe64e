import { describe, expect, it } from '@jest/globals';
import { type BenchRow, formatNumber, formatTable, ratioOf } from './report.js';
import { percentile } from './stats.js';

describe('formatNumber', () => {
  it('keeps about three significant digits below a hundred and separates thousands above', () => {
    expect(formatNumber(0.31234)).toBe('0.312');
    expect(formatNumber(4.567)).toBe('4.57');
    expect(formatNumber(23.44)).toBe('23.4');
    expect(formatNumber(1234.5)).toBe('1,235');
    expect(formatNumber(0)).toBe('0');
  });
});

describe('ratioOf', () => {
  it('is undefined without a usable baseline', () => {
    expect(ratioOf(3, undefined)).toBeUndefined();
    expect(ratioOf(3, 0)).toBeUndefined();
    expect(ratioOf(3, 2)).toBe(1.5);
  });
});

describe('formatTable', () => {
  const rows: BenchRow[] = [
    {
      scenario: 'sdk-overhead',
      metric: 'encrypt+decrypt per message',
      value: 690,
      unit: 'µs',
      baseline: { name: 'raw libsignal', value: 600 },
      ratio: 1.15,
      goal: { text: '≤ 1.15× raw libsignal', met: true },
      note: '2,000 messages',
    },
    { scenario: 'cold-start', metric: 'ready on embedded', value: 3456, unit: 'ms', goal: { text: '< 3 s', met: false } },
  ];

  it('prints a header, one aligned line per row, and the notes below', () => {
    const lines = formatTable(rows).split('\n');
    expect(lines[0]).toMatch(/^scenario\s+metric\s+value\s+baseline\s+ratio\s+goal\s+met$/);
    expect(lines[2]).toContain('690 µs');
    expect(lines[2]).toContain('600 µs (raw libsignal)');
    expect(lines[2]).toContain('1.15×');
    expect(lines[2]).toMatch(/yes$/);
    expect(lines[3]).toMatch(/NO$/);
    // Every table line starts its value column at the same offset.
    expect(lines[2].indexOf('690 µs') + '690 µs'.length).toBe(lines[3].indexOf('3,456 ms') + '3,456 ms'.length);
    expect(lines.slice(-1)[0]).toBe('  sdk-overhead, encrypt+decrypt per message: 2,000 messages');
  });
});

describe('percentile', () => {
  it('is nearest-rank over unsorted samples', () => {
    const samples = [5, 1, 4, 2, 3, 10, 9, 8, 7, 6];
    expect(percentile(samples, 50)).toBe(5);
    expect(percentile(samples, 99)).toBe(10);
    expect(percentile(samples, 0)).toBe(1);
    expect(percentile([], 50)).toBeNaN();
  });
});

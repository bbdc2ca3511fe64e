import { displayWidth, printable, truncate, wrapSpans } from './text-layout.js';

const rowText = (row: { text: string }[]) => row.map((span) => span.text).join('');

describe('printable', () => {
  it('drops escape sequences, other controls and bidi overrides, keeping the visible text', () => {
    expect(printable('a\u001B[2Jb\u0007c\u202Ed\u009Be')).toBe('a[2Jbcde');
  });

  it('keeps line breaks only when asked, and turns tabs into spaces', () => {
    expect(printable('one\r\ntwo\tthree', true)).toBe('one\ntwo  three');
    expect(printable('one\ntwo')).toBe('one two');
  });
});

describe('displayWidth', () => {
  it('counts terminal cells: wide CJK and emoji take two, combining marks none', () => {
    expect(displayWidth('abc')).toBe(3);
    expect(displayWidth('日本')).toBe(4);
    expect(displayWidth('👍🏽')).toBe(2);
    expect(displayWidth('e\u0301')).toBe(1);
    expect(displayWidth('✓✓ read')).toBe(7);
  });
});

describe('truncate', () => {
  it('leaves text that fits and cuts the rest with …', () => {
    expect(truncate('bob', 5)).toBe('bob');
    expect(truncate('carolina', 5)).toBe('caro…');
    expect(truncate('日本語です', 5)).toBe('日本…');
  });
});

describe('wrapSpans', () => {
  it('wraps at word boundaries with a hanging indent, keeping every row within the width', () => {
    const rows = wrapSpans([{ text: '09:05 bob: the quick brown fox jumps over the lazy dog', style: 'x' }], 20, 6);

    expect(rows.map(rowText)).toEqual(['09:05 bob: the quick', '      brown fox', '      jumps over the', '      lazy dog']);
  });

  it('breaks a word longer than a row where the row ends', () => {
    const rows = wrapSpans([{ text: 'x'.repeat(25), style: 'x' }], 10);

    expect(rows.map(rowText)).toEqual(['x'.repeat(10), 'x'.repeat(10), 'x'.repeat(5)]);
  });

  it('starts a new row at each line break', () => {
    expect(wrapSpans([{ text: 'one\ntwo', style: 'x' }], 20).map(rowText)).toEqual(['one', 'two']);
  });

  it('keeps each span its style across rows', () => {
    const rows = wrapSpans(
      [
        { text: 'you:', style: 'self' },
        { text: ' hello there', style: 'body' },
        { text: ' ✓✓', style: 'mark' },
      ],
      12,
    );

    expect(rows).toEqual([
      [
        { text: 'you:', style: 'self' },
        { text: ' hello', style: 'body' },
      ],
      [
        { text: 'there', style: 'body' },
        { text: ' ✓✓', style: 'mark' },
      ],
    ]);
  });
});

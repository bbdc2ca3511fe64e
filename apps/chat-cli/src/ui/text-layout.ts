// Terminal text layout for the chat screen: what a peer sent is made safe to
// print, then measured, cut and wrapped in terminal cells. The screen lays out
// rows itself (rather than leaving wrapping to Ink) so it knows how many of the
// newest lines fit; each row is still rendered with Ink's `truncate-end`, so a
// width this module gets wrong cuts a row short instead of breaking the layout.

const graphemes = new Intl.Segmenter(undefined, { granularity: 'grapheme' });

// C0 and C1 controls (ESC starts terminal escape sequences) and the bidi
// overrides/isolates that could make a line read differently from what it is.
// eslint-disable-next-line no-control-regex
const UNPRINTABLE = /[\u0000-\u0008\u000B-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]/g;
const RGI_EMOJI = new RegExp('^\\p{RGI_Emoji}$', 'v');
const ZERO_WIDTH = /^[\p{Mn}\p{Me}\p{Cf}\p{Default_Ignorable_Code_Point}]+$/u;

/**
 * Text from the network, made printable: no escape sequences or other
 * controls; tabs become spaces; line breaks are kept (`\n`) only when
 * `keepLineBreaks`, else they become spaces.
 */
export function printable(text: string, keepLineBreaks = false): string {
  const normalized = text.replace(/\r\n?/g, '\n').replace(/\t/g, '  ');
  const lineBreak = keepLineBreaks ? '\n' : ' ';
  return normalized.replace(/\n/g, lineBreak).replace(UNPRINTABLE, '');
}

/** Whether a code point takes two cells (East Asian Wide and Fullwidth, roughly). */
function isWide(codePoint: number): boolean {
  return (
    (codePoint >= 0x1100 && codePoint <= 0x115f) ||
    (codePoint >= 0x2e80 && codePoint <= 0x303e) ||
    (codePoint >= 0x3041 && codePoint <= 0x33ff) ||
    (codePoint >= 0x3400 && codePoint <= 0x4dbf) ||
    (codePoint >= 0x4e00 && codePoint <= 0x9fff) ||
    (codePoint >= 0xa000 && codePoint <= 0xa4cf) ||
    (codePoint >= 0xac00 && codePoint <= 0xd7a3) ||
    (codePoint >= 0xf900 && codePoint <= 0xfaff) ||
    (codePoint >= 0xfe30 && codePoint <= 0xfe4f) ||
    (codePoint >= 0xff00 && codePoint <= 0xff60) ||
    (codePoint >= 0xffe0 && codePoint <= 0xffe6) ||
    (codePoint >= 0x1f300 && codePoint <= 0x1f64f) ||
    (codePoint >= 0x1f900 && codePoint <= 0x1f9ff) ||
    (codePoint >= 0x20000 && codePoint <= 0x3fffd)
  );
}

function graphemeWidth(grapheme: string): number {
  if (ZERO_WIDTH.test(grapheme)) return 0;
  if (RGI_EMOJI.test(grapheme)) return 2;
  return isWide(grapheme.codePointAt(0) ?? 0) ? 2 : 1;
}

function* graphemesOf(text: string): Generator<string> {
  for (const { segment } of graphemes.segment(text)) yield segment;
}

/** Terminal cells `text` takes (for printable text, see `printable`). */
export function displayWidth(text: string): number {
  let width = 0;
  for (const grapheme of graphemesOf(text)) width += graphemeWidth(grapheme);
  return width;
}

/** `text` cut to `width` cells, ending in `…` when it was cut. */
export function truncate(text: string, width: number): string {
  if (width <= 0) return '';
  if (displayWidth(text) <= width) return text;
  let cut = '';
  let used = 0;
  for (const grapheme of graphemesOf(text)) {
    const cells = graphemeWidth(grapheme);
    if (used + cells > width - 1) break;
    cut += grapheme;
    used += cells;
  }
  return `${cut}…`;
}

/** A run of text drawn one way; `style` is the renderer's business. */
export interface Span<Style extends string = string> {
  text: string;
  style: Style;
}

/** One terminal row: spans whose widths add up to at most the wrap width. */
export type Row<Style extends string = string> = Span<Style>[];

/**
 * Word-wraps styled spans into rows of at most `width` cells. Words longer
 * than a row are broken; `\n` starts a new row; rows after the first start
 * with `indent` spaces (a hanging indent), when that leaves room for text.
 */
export function wrapSpans<Style extends string>(spans: Span<Style>[], width: number, indent = 0): Row<Style>[] {
  const rowWidth = Math.max(1, width);
  const hanging = indent > 0 && rowWidth - indent >= 8 ? indent : 0;
  const rows: Row<Style>[] = [];
  let row: Row<Style> = [];
  let used = 0;
  // Spaces seen since the last word: written only if a word follows on the same row.
  let pendingSpace: Span<Style> | null = null;

  const push = (text: string, style: Style) => {
    const last = row[row.length - 1];
    if (last && last.style === style) last.text += text;
    else row.push({ text, style });
  };
  const newRow = () => {
    rows.push(row);
    row = [];
    used = 0;
    pendingSpace = null;
    if (hanging > 0) {
      row.push({ text: ' '.repeat(hanging), style: spans[0]?.style ?? ('' as Style) });
      used = hanging;
    }
  };
  const startOfRow = () => used === (rows.length === 0 ? 0 : hanging);

  for (const span of spans) {
    for (const token of span.text.split(/(\n| +)/)) {
      if (token === '') continue;
      if (token === '\n') {
        newRow();
        continue;
      }
      if (token.startsWith(' ')) {
        if (!startOfRow()) pendingSpace = { text: token, style: span.style };
        continue;
      }
      const wordWidth = displayWidth(token);
      const spaceWidth = pendingSpace ? displayWidth(pendingSpace.text) : 0;
      if (!startOfRow() && used + spaceWidth + wordWidth > rowWidth) newRow();
      if (pendingSpace && !startOfRow()) {
        push(pendingSpace.text, pendingSpace.style);
        used += spaceWidth;
      }
      pendingSpace = null;
      if (used + wordWidth <= rowWidth) {
        push(token, span.style);
        used += wordWidth;
        continue;
      }
      // A word longer than the room left on an empty row: break it where the row ends.
      for (const grapheme of graphemesOf(token)) {
        const cells = graphemeWidth(grapheme);
        if (used + cells > rowWidth && !startOfRow()) newRow();
        push(grapheme, span.style);
        used += cells;
      }
    }
  }
  rows.push(row);
  return rows;
}

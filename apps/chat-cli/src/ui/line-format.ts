// How one conversation line reads on screen (the brief's "The chat screen"):
// `HH:MM <from>: <text>`, `HH:MM you: <text> <mark>`, `* <notice>`, `! <warning>`.
import { type ChatLine, DeliveryMark, LineKind } from '../chat/chat-view.js';
import { printable, type Span } from './text-layout.js';

export type LineStyle =
  | 'time'
  | 'peer'
  | 'self'
  | 'body'
  | 'pending'
  | 'sent'
  | 'delivered'
  | 'read'
  | 'failed'
  | 'notice'
  | 'warning';

/** Local wall-clock time, `HH:MM`. */
export function clockTime(timestamp: number): string {
  const at = new Date(timestamp);
  return `${String(at.getHours()).padStart(2, '0')}:${String(at.getMinutes()).padStart(2, '0')}`;
}

/** Width of `HH:MM ` (the hanging indent of a message's wrapped rows). */
export const TIME_WIDTH = 6;

// The contract carries no failure reason (yet), so a failed message says only that it was not sent;
// the session adds a warning line with the cause.
const FAILED_REASON = 'not sent';

const MARKS: Record<DeliveryMark, Span<LineStyle>> = {
  [DeliveryMark.Sending]: { text: '…', style: 'pending' },
  [DeliveryMark.Sent]: { text: '✓', style: 'sent' },
  [DeliveryMark.Delivered]: { text: '✓✓', style: 'delivered' },
  [DeliveryMark.Read]: { text: '✓✓ read', style: 'read' },
  [DeliveryMark.Failed]: { text: `✗ ${FAILED_REASON}`, style: 'failed' },
};

/** The mark after an outgoing message. */
export function markText(mark: DeliveryMark): string {
  return MARKS[mark].text;
}

/** A line as styled spans, ready for `wrapSpans`. */
export function lineSpans(line: ChatLine): Span<LineStyle>[] {
  const text = printable(line.text, true);
  switch (line.kind) {
    case LineKind.Notice:
      return [{ text: `* ${text}`, style: 'notice' }];
    case LineKind.Warning:
      return [{ text: `! ${text}`, style: 'warning' }];
    case LineKind.Incoming:
      return [
        { text: `${clockTime(line.timestamp)} `, style: 'time' },
        { text: `${printable(line.from)}:`, style: 'peer' },
        { text: ` ${text}`, style: 'body' },
      ];
    case LineKind.Outgoing: {
      const spans: Span<LineStyle>[] = [
        { text: `${clockTime(line.timestamp)} `, style: 'time' },
        { text: 'you:', style: 'self' },
        { text: ` ${text}`, style: 'body' },
      ];
      if (line.mark) spans.push({ text: ' ', style: 'body' }, MARKS[line.mark]);
      return spans;
    }
  }
}

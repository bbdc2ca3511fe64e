// The interactive chat screen (the brief's "The chat screen"): it renders
// `controller.view()` and turns keys into controller calls; it never touches
// the SDK, and it only renders (nothing here logs).
//
//   chat-cli · alice · device 1 · connected
//   ──────────────────────────────────────────────
//   > bob (2)              │ 09:05 bob: hi
//     team                 │ 09:06 you: hello ✓✓ read
//                          │ bob is typing…
//   ──────────────────────────────────────────────
//   <status>
//   › <draft>
import { Box, Text, type TextProps, useInput } from 'ink';
import type { ConnectionState } from '@chat/signal-sdk';
import { useCallback, useRef, useState, useSyncExternalStore } from 'react';
import { type ChatController, type ChatLine, type ChatView, type ConversationSummary, LineKind } from '../chat/chat-view.js';
import { InputLine } from './input-line.js';
import { lineSpans, type LineStyle, TIME_WIDTH } from './line-format.js';
import { displayWidth, printable, type Row, truncate, wrapSpans } from './text-layout.js';
import { useTerminalSize } from './use-terminal-size.js';

/** The conversation list column, separator included. */
const LIST_WIDTH = 24;
const SEPARATOR = '│ ';
const MAX_STATUS_ROWS = 2;
const MAX_INPUT_ROWS = 3;
const PROMPT = '› ';

const LINE_STYLES: Record<LineStyle, TextProps> = {
  time: { dimColor: true },
  peer: { color: 'cyan', bold: true },
  self: { color: 'green', bold: true },
  body: {},
  pending: { dimColor: true },
  sent: { dimColor: true },
  delivered: {},
  read: { color: 'green' },
  failed: { color: 'red' },
  notice: { color: 'blue' },
  warning: { color: 'yellow', bold: true },
};

// Keyed by the enum's values, so the screen does not load the SDK to colour a word.
const CONNECTION_COLORS: Record<`${ConnectionState}`, TextProps['color']> = {
  connected: 'green',
  connecting: 'yellow',
  reconnecting: 'yellow',
  disconnected: 'red',
};

export interface ChatScreenProps {
  controller: ChatController;
}

/** Re-renders on every change the controller reports, whether or not `view()` returns a new object. */
function useChatView(controller: ChatController): ChatView {
  const version = useRef(0);
  const subscribe = useCallback(
    (onChange: () => void) =>
      controller.subscribe(() => {
        version.current += 1;
        onChange();
      }),
    [controller],
  );
  useSyncExternalStore(subscribe, () => version.current);
  return controller.view();
}

export function ChatScreen({ controller }: ChatScreenProps) {
  const view = useChatView(controller);
  const { columns, rows } = useTerminalSize();
  // The input line owns the draft; the screen keeps a copy to size the input rows.
  const [draft, setDraft] = useState('');
  const changeDraft = (text: string) => {
    setDraft(text);
    controller.draftChanged(text);
  };
  const submit = (line: string) => {
    void controller.submit(line);
  };

  const openNeighbour = (step: 1 | -1) => {
    const { conversations, open } = controller.view();
    if (conversations.length === 0) return;
    const current = conversations.findIndex((conversation) => conversation.id === open);
    const next =
      current === -1
        ? step === 1
          ? 0
          : conversations.length - 1
        : (current + step + conversations.length) % conversations.length;
    const target = conversations[next];
    if (target && target.id !== open) controller.openConversation(target.id);
  };

  useInput((input, key) => {
    if (key.ctrl && input === 'c') {
      void controller.quit();
      return;
    }
    if (key.tab) {
      openNeighbour(key.shift ? -1 : 1);
      return;
    }
    if (key.ctrl && input === 'n') openNeighbour(1);
    if (key.ctrl && input === 'p') openNeighbour(-1);
  });

  // Rows: header, rule, body, rule, status, input; one row is left free so Ink never
  // has to redraw the whole terminal (it does when the output is as tall as the screen).
  const width = Math.max(columns, 20);
  const height = Math.max(rows - 1, 8);
  const statusRows = statusLayout(view, width);
  const inputRows = Math.min(MAX_INPUT_ROWS, Math.ceil((displayWidth(draft) + 1) / Math.max(1, width - PROMPT.length)));
  const bodyRows = Math.max(1, height - 3 - statusRows.length - inputRows);
  const listWidth = width >= 60 ? LIST_WIDTH : Math.max(10, Math.floor(width / 3));
  const rightWidth = width - listWidth - SEPARATOR.length;
  const rule = '─'.repeat(width);

  return (
    <Box flexDirection="column" width={width}>
      <Text wrap="truncate-end">
        <Text bold>chat-cli</Text>
        {` · ${printable(view.username)} · device ${view.deviceId} · `}
        <Text color={CONNECTION_COLORS[view.connection]}>{view.connection}</Text>
      </Text>
      <Text dimColor>{rule}</Text>
      <Box height={bodyRows}>
        <ConversationList conversations={view.conversations} open={view.open} width={listWidth} rows={bodyRows} />
        <Box flexDirection="column" width={SEPARATOR.length}>
          {Array.from({ length: bodyRows }, (_, index) => (
            <Text key={index} dimColor>
              {SEPARATOR}
            </Text>
          ))}
        </Box>
        <OpenConversation view={view} width={rightWidth} rows={bodyRows} />
      </Box>
      <Text dimColor>{rule}</Text>
      <Box flexDirection="column" height={statusRows.length}>
        {statusRows.map((row, index) => (
          <Text key={index} wrap="truncate-end" color={view.status?.level === 'error' ? 'red' : undefined}>
            {row}
          </Text>
        ))}
      </Box>
      <Box height={inputRows} overflow="hidden">
        <InputLine prompt={PROMPT} onChange={changeDraft} onSubmit={submit} />
      </Box>
    </Box>
  );
}

/** The status line's rows (at least one, so the layout does not jump when it appears). */
function statusLayout(view: ChatView, width: number): string[] {
  if (!view.status) return [''];
  const text = printable(view.status.text);
  const line = view.status.level === 'error' ? `error: ${text}` : text;
  const rows = wrapSpans([{ text: line, style: 'status' }], width).map((row) => row.map((span) => span.text).join(''));
  if (rows.length <= MAX_STATUS_ROWS) return rows;
  const kept = rows.slice(0, MAX_STATUS_ROWS);
  kept[MAX_STATUS_ROWS - 1] = truncate(`${kept[MAX_STATUS_ROWS - 1]}  `, width);
  return kept;
}

interface ConversationListProps {
  conversations: ConversationSummary[];
  open: ChatView['open'];
  width: number;
  rows: number;
}

/** Newest first; `> ` marks the open one, ` (<unread>)` follows a title with unread messages. */
function ConversationList({ conversations, open, width, rows }: ConversationListProps) {
  if (conversations.length === 0) {
    return (
      <Box width={width}>
        <Text dimColor wrap="truncate-end">
          no conversations
        </Text>
      </Box>
    );
  }
  // When the list is longer than the column, scroll just enough to keep the open one in view.
  const openIndex = conversations.findIndex((conversation) => conversation.id === open);
  const first = openIndex >= rows ? openIndex - rows + 1 : 0;
  const shown = conversations.slice(first, first + rows);
  // One cell stays free before the separator.
  const room = width - 1;
  return (
    <Box flexDirection="column" width={width}>
      {shown.map((conversation) => {
        const isOpen = conversation.id === open;
        const unread = conversation.unread > 0 ? ` (${conversation.unread})` : '';
        const title = truncate(printable(conversation.title), room - 2 - unread.length);
        return (
          <Text key={conversation.id} wrap="truncate-end">
            <Text color={isOpen ? 'cyan' : undefined} bold={isOpen}>
              {isOpen ? '> ' : '  '}
              {title}
            </Text>
            <Text color="yellow" bold>
              {unread}
            </Text>
          </Text>
        );
      })}
    </Box>
  );
}

interface OpenConversationProps {
  view: ChatView;
  width: number;
  rows: number;
}

/** The newest lines that fit, bottom-aligned, then who is typing. */
function OpenConversation({ view, width, rows }: OpenConversationProps) {
  if (view.open === null) {
    return (
      <Box flexDirection="column" width={width}>
        <Text dimColor wrap="truncate-end">
          No conversation open. /open {'<username>'} starts one; Tab switches; /help lists commands.
        </Text>
      </Box>
    );
  }
  const typingRows = rows >= 2 ? 1 : 0;
  const lineRows = newestRows(view.lines, width, rows - typingRows);
  return (
    <Box flexDirection="column" width={width}>
      <Box flexDirection="column" height={rows - typingRows} justifyContent="flex-end" overflow="hidden">
        {lineRows.map((row, index) => (
          <Text key={index} wrap="truncate-end">
            {row.map((span, spanIndex) => (
              <Text key={spanIndex} {...LINE_STYLES[span.style]}>
                {span.text}
              </Text>
            ))}
          </Text>
        ))}
      </Box>
      {typingRows > 0 && (
        <Text dimColor italic wrap="truncate-end">
          {typingText(view.typing)}
        </Text>
      )}
    </Box>
  );
}

/**
 * The rows of the newest lines that fit in `rows`, oldest first. Only whole
 * lines are shown, except a newest line taller than the space: its end is.
 */
export function newestRows(lines: ChatLine[], width: number, rows: number): Row<LineStyle>[] {
  const shown: Row<LineStyle>[][] = [];
  let used = 0;
  for (let index = lines.length - 1; index >= 0 && used < rows; index -= 1) {
    const line = lines[index] as ChatLine;
    const isMessage = line.kind === LineKind.Incoming || line.kind === LineKind.Outgoing;
    const wrapped = wrapSpans(lineSpans(line), width, isMessage ? TIME_WIDTH : 2);
    if (used + wrapped.length > rows) {
      if (shown.length === 0) shown.push(wrapped.slice(wrapped.length - rows));
      break;
    }
    shown.push(wrapped);
    used += wrapped.length;
  }
  return shown.reverse().flat();
}

/** `bob is typing…`, `bob, carol are typing…`, or nothing. */
export function typingText(typing: string[]): string {
  if (typing.length === 0) return '';
  const names = typing.map((name) => printable(name)).join(', ');
  return typing.length === 1 ? `${names} is typing…` : `${names} are typing…`;
}

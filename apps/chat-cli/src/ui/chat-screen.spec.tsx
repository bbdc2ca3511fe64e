import { ConnectionState } from '@chat/signal-sdk';
import { cleanup, render } from 'ink-testing-library';
import {
  type ChatController,
  type ChatLine,
  type ChatView,
  type ConversationId,
  type ConversationSummary,
  DeliveryMark,
  LineKind,
} from '../chat/chat-view.js';
import { ChatScreen } from './chat-screen.js';
import { displayWidth } from './text-layout.js';

/** Stands in for the session: a view the test sets, and a record of what the screen asked for. */
class FakeChatController implements ChatController {
  readonly submitted: string[] = [];
  readonly drafts: string[] = [];
  readonly opened: ConversationId[] = [];
  quits = 0;
  readonly ended: Promise<void>;
  private readonly listeners = new Set<() => void>();
  private end: () => void = () => undefined;

  constructor(private state: ChatView) {
    this.ended = new Promise((resolve) => {
      this.end = resolve;
    });
  }

  view(): ChatView {
    return this.state;
  }

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** What the session does when something changed. */
  change(patch: Partial<ChatView>): void {
    this.state = { ...this.state, ...patch };
    for (const listener of this.listeners) listener();
  }

  openConversation(id: ConversationId): void {
    this.opened.push(id);
  }

  async submit(line: string): Promise<void> {
    this.submitted.push(line);
  }

  draftChanged(text: string): void {
    this.drafts.push(text);
  }

  async quit(): Promise<void> {
    this.quits += 1;
    this.end();
  }
}

// Local times, so `HH:MM` does not depend on the machine's time zone.
const at = (hours: number, minutes: number) => new Date(2025, 0, 1, hours, minutes).getTime();

const conversation = (title: string, unread = 0): ConversationSummary => ({
  id: `direct:${title}`,
  kind: 'direct',
  title,
  unread,
  lastActivity: at(9, 0),
});

let nextId = 0;
const incoming = (from: string, text: string, timestamp = at(9, 5)): ChatLine => ({
  id: `line-${nextId++}`,
  kind: LineKind.Incoming,
  from,
  text,
  timestamp,
});
const outgoing = (text: string, mark: DeliveryMark, timestamp = at(9, 6)): ChatLine => ({
  id: `line-${nextId++}`,
  kind: LineKind.Outgoing,
  from: 'alice',
  text,
  timestamp,
  mark,
});
const notice = (kind: LineKind.Notice | LineKind.Warning, text: string): ChatLine => ({
  id: `line-${nextId++}`,
  kind,
  from: '',
  text,
  timestamp: at(9, 7),
});

function chatView(patch: Partial<ChatView> = {}): ChatView {
  return {
    username: 'alice',
    deviceId: 1,
    connection: ConnectionState.Connected,
    conversations: [conversation('bob'), conversation('carol', 3), conversation('dave')],
    open: 'direct:bob',
    lines: [],
    typing: [],
    status: null,
    ...patch,
  };
}

// The screen's colours are not the subject; its text is.
// eslint-disable-next-line no-control-regex
const SGR = /\u001B\[[0-9;]*m/g;

function renderScreen(view: ChatView = chatView()) {
  const controller = new FakeChatController(view);
  const screen = render(<ChatScreen controller={controller} />);
  const frame = () => (screen.lastFrame() ?? '').replace(SGR, '');
  const rows = () => frame().split('\n');
  return { controller, screen, frame, rows };
}

/** Lets the screen handle what was just typed or changed (input settles in a microtask, renders follow). */
async function settled(): Promise<void> {
  await new Promise((resolve) => setImmediate(resolve));
}

/** Types `keys` as one chunk of terminal input and waits for the screen to settle. */
async function type(screen: ReturnType<typeof render>, keys: string): Promise<void> {
  screen.stdin.write(keys);
  await settled();
}

const KEY = {
  left: '\u001B[D',
  end: '\u001B[F',
  backspace: '\u007F',
  ctrlU: '\u0015',
  enter: '\r', tab: '\t', shiftTab: '\u001B[Z', ctrlC: '\u0003', ctrlN: '\u000E', ctrlP: '\u0010' };

afterEach(() => {
  cleanup();
});

describe('ChatScreen', () => {
  it('shows the header with the username, device and connection state', () => {
    const { rows } = renderScreen(chatView({ deviceId: 2, connection: ConnectionState.Reconnecting }));

    expect(rows()[0]).toBe('chat-cli · alice · device 2 · reconnecting');
  });

  it('lists conversations in the given order with unread counts, the open one marked', () => {
    const { frame } = renderScreen();

    const listColumn = frame()
      .split('\n')
      .map((row) => row.split('│')[0]?.trimEnd() ?? '')
      .filter((cell) => /^(> | {2})\S/.test(cell));
    expect(listColumn).toEqual(['> bob', '  carol (3)', '  dave']);
  });

  it('cuts a long title with … so the list stays about 24 columns wide', () => {
    const { rows } = renderScreen(
      chatView({ conversations: [conversation('a-very-long-group-title-indeed', 12)], open: null }),
    );

    const row = rows().find((line) => line.includes('(12)')) ?? '';
    expect(row).toMatch(/^ {2}a-very-long-gro… \(12\) │/);
    expect(row.indexOf('│')).toBe(24);
  });

  it('shows incoming and outgoing lines with the time, and every delivery mark', () => {
    const { rows } = renderScreen(
      chatView({
        lines: [
          incoming('bob', 'hi alice', at(9, 5)),
          outgoing('one', DeliveryMark.Sending, at(9, 6)),
          outgoing('two', DeliveryMark.Sent, at(9, 7)),
          outgoing('three', DeliveryMark.Delivered, at(13, 8)),
          outgoing('four', DeliveryMark.Read, at(23, 59)),
          outgoing('five', DeliveryMark.Failed, at(0, 1)),
        ],
      }),
    );

    const right = rows().map((row) => row.split('│ ')[1]?.trimEnd());
    expect(right).toEqual(
      expect.arrayContaining([
        '09:05 bob: hi alice',
        '09:06 you: one …',
        '09:07 you: two ✓',
        '13:08 you: three ✓✓',
        '23:59 you: four ✓✓ read',
        '00:01 you: five ✗ not sent',
      ]),
    );
  });

  it('shows notices with * and warnings with !', () => {
    const { rows } = renderScreen(
      chatView({
        lines: [
          notice(LineKind.Notice, 'Safety number with bob: 12345'),
          notice(LineKind.Warning, "bob's safety number changed"),
        ],
      }),
    );

    const right = rows().map((row) => row.split('│ ')[1]?.trimEnd());
    expect(right).toContain('* Safety number with bob: 12345');
    expect(right).toContain("! bob's safety number changed");
  });

  it('shows who is typing under the lines', async () => {
    const { controller, rows } = renderScreen(chatView({ typing: ['bob'] }));
    expect(rows()).toContainEqual(expect.stringMatching(/│ bob is typing…$/));

    controller.change({ typing: ['bob', 'carol'] });
    await settled();

    expect(rows()).toContainEqual(expect.stringMatching(/│ bob, carol are typing…$/));
  });

  it('shows the status line, errors prefixed with "error: "', async () => {
    const { controller, rows } = renderScreen(chatView({ status: { level: 'info', text: 'bob is verified' } }));
    expect(rows()).toContain('bob is verified');

    controller.change({ status: { level: 'error', text: 'there is no user named zed' } });
    await settled();

    expect(rows()).toContain('error: there is no user named zed');
    expect(rows()).not.toContain('bob is verified');
  });

  it('re-renders when the controller reports a change', async () => {
    const { controller, frame } = renderScreen();
    expect(frame()).not.toContain('new message');

    controller.change({ lines: [incoming('bob', 'new message')] });
    await settled();

    expect(frame()).toContain('09:05 bob: new message');
  });

  it('never prints escape sequences a peer sent', () => {
    const { screen } = renderScreen(chatView({ lines: [incoming('bob', 'clear\u001B[2J\u001B]0;title\u0007 me')] }));
    const frame = (screen.lastFrame() ?? '').replace(SGR, '');

    expect(frame).not.toContain('\u001B');
    expect(frame).not.toContain('\u0007');
    expect(frame).toContain('09:05 bob: clear[2J]0;title me');
  });

  describe('input', () => {
    it('reports every change of the draft and shows it after the prompt', async () => {
      const { controller, screen, rows } = renderScreen();

      await type(screen, 'h');
      await type(screen, 'i');

      expect(controller.drafts).toEqual(['h', 'hi']);
      expect(rows().at(-1)?.trimEnd()).toBe('› hi');
    });

    it('submits the line on Enter and clears the input', async () => {
      const { controller, screen, rows } = renderScreen();
      await type(screen, 'hello bob');

      await type(screen, KEY.enter);

      expect(controller.submitted).toEqual(['hello bob']);
      expect(controller.drafts.at(-1)).toBe('');
      expect(rows().at(-1)?.trimEnd()).toBe('›');
    });

    it('submits text typed together with Enter, as a pty delivers it', async () => {
      const { controller, screen } = renderScreen();

      await type(screen, 'one go\r');

      expect(controller.submitted).toEqual(['one go']);
    });

    it('edits at the cursor: arrows move it, Backspace deletes before it, Ctrl-U clears to it', async () => {
      const { controller, screen, rows } = renderScreen();
      await type(screen, 'helo');

      await type(screen, KEY.left);
      await type(screen, 'l');
      expect(rows().at(-1)?.trimEnd()).toBe('› hello');

      await type(screen, KEY.backspace);
      await type(screen, KEY.end);
      await type(screen, '!');
      expect(controller.drafts.at(-1)).toBe('helo!');

      await type(screen, KEY.ctrlU);
      expect(controller.drafts.at(-1)).toBe('');
    });

    it('does not submit an empty or blank line', async () => {
      const { controller, screen } = renderScreen();

      await type(screen, KEY.enter);
      await type(screen, '   ');
      await type(screen, KEY.enter);

      expect(controller.submitted).toEqual([]);
    });
  });

  describe('keys', () => {
    it('opens the next conversation on Tab and the previous one on Shift-Tab, wrapping around', async () => {
      const { controller, screen } = renderScreen();

      await type(screen, KEY.tab);
      expect(controller.opened).toEqual(['direct:carol']);

      await type(screen, KEY.shiftTab);
      expect(controller.opened).toEqual(['direct:carol', 'direct:dave']);
    });

    it('opens the next / previous conversation on Ctrl-N / Ctrl-P without typing into the draft', async () => {
      const { controller, screen, rows } = renderScreen(chatView({ open: 'direct:carol' }));
      await type(screen, 'draft');

      await type(screen, KEY.ctrlN);
      await type(screen, KEY.ctrlP);

      expect(controller.opened).toEqual(['direct:dave', 'direct:bob']);
      expect(controller.drafts).toEqual(['draft']);
      expect(rows().at(-1)?.trimEnd()).toBe('› draft');
    });

    it('opens the first conversation on Tab when none is open', async () => {
      const { controller, screen } = renderScreen(chatView({ open: null }));

      await type(screen, KEY.tab);

      expect(controller.opened).toEqual(['direct:bob']);
    });

    it('quits on Ctrl-C', async () => {
      const { controller, screen } = renderScreen();

      await type(screen, KEY.ctrlC);

      expect(controller.quits).toBe(1);
    });
  });

  describe('terminal size', () => {
    function resize(screen: ReturnType<typeof render>, rows: number): void {
      Object.defineProperty(screen.stdout, 'rows', { value: rows, configurable: true });
      screen.stdout.emit('resize');
    }

    it('shows only the newest lines that fit, and more when the terminal grows', async () => {
      const lines = Array.from({ length: 30 }, (_, index) => incoming('bob', `message ${index}`));
      const { screen, frame } = renderScreen(chatView({ lines }));

      // 12 rows: header, rule, 6 body rows (5 lines + typing), rule, status, input, and one kept free.
      resize(screen, 12);
      await settled();

      const shown = (text: string) => frame().split('\n').some((row) => row.endsWith(`bob: ${text}`));
      expect(['message 25', 'message 26', 'message 27', 'message 28', 'message 29'].every(shown)).toBe(true);
      expect(shown('message 24')).toBe(false);
      expect(frame().split('\n')).toHaveLength(11);

      resize(screen, 20);
      await settled();

      expect(shown('message 17')).toBe(true);
      expect(shown('message 16')).toBe(false);
    });

    it('wraps long lines inside the right column, with the time as a hanging indent', () => {
      const long = `${'word '.repeat(40)}end`;
      const { rows } = renderScreen(chatView({ lines: [incoming('bob', long), incoming('bob', 'x'.repeat(250))] }));

      for (const row of rows()) expect(displayWidth(row)).toBeLessThanOrEqual(100);
      const right = rows()
        .map((row) => row.split('│ ')[1] ?? '')
        .filter((cell) => cell.trim() !== '');
      expect(right[0]).toMatch(/^09:05 bob: word word/);
      expect(right[1]).toMatch(/^ {6}word/);
      expect(right.join('').replace(/\s+/g, '')).toContain(`${'word'.repeat(40)}end`);
      expect(right.join('').replace(/\s+/g, '')).toContain('x'.repeat(250));
    });
  });
});

import { ConnectionState } from '@chat/signal-sdk';
import { EventEmitter } from 'node:events';
import type { ChatController, ChatView, ConversationId } from '../chat/chat-view.js';
import { runChatScreen } from './run-chat-screen.js';

/** A terminal's keyboard, as Ink reads it (raw mode, `readable` then `read()`). */
class FakeKeyboard extends EventEmitter {
  readonly isTTY = true;
  readonly rawModes: boolean[] = [];
  private pending: string[] = [];
  setRawMode(enabled: boolean) {
    this.rawModes.push(enabled);
    return this;
  }
  setEncoding() {
    return this;
  }
  resume() {
    return this;
  }
  pause() {
    return this;
  }
  ref() {
    return this;
  }
  unref() {
    return this;
  }
  read(): string | null {
    return this.pending.shift() ?? null;
  }
  press(keys: string) {
    this.pending.push(keys);
    this.emit('readable');
  }
}

/** A terminal's screen: what was written to it. */
class FakeScreen extends EventEmitter {
  readonly columns = 80;
  readonly rows = 24;
  written = '';
  constructor(readonly isTTY: boolean) {
    super();
  }
  write(chunk: string) {
    this.written += chunk;
    return true;
  }
}

class FakeSession implements ChatController {
  quits = 0;
  readonly ended: Promise<void>;
  end: () => void = () => undefined;
  constructor() {
    this.ended = new Promise((resolve) => {
      this.end = resolve;
    });
  }
  view(): ChatView {
    return {
      username: 'alice',
      deviceId: 1,
      connection: ConnectionState.Connected,
      conversations: [],
      open: null,
      lines: [],
      typing: [],
      status: null,
    };
  }
  subscribe() {
    return () => undefined;
  }
  // What the screen asks of the session is chat-screen.spec's subject, not this one's.
  openConversation(_id: ConversationId) {
    // nothing to open
  }
  async submit() {
    // nothing to send
  }
  draftChanged() {
    // nobody to tell
  }
  async quit() {
    this.quits += 1;
    this.end();
  }
}

const turn = () => new Promise((resolve) => setImmediate(resolve));

function start(session: FakeSession, screen = new FakeScreen(false)) {
  const keyboard = new FakeKeyboard();
  let finished = false;
  const running = runChatScreen(session, {
    stdin: keyboard as unknown as NodeJS.ReadStream,
    stdout: screen as unknown as NodeJS.WriteStream,
  }).then(() => {
    finished = true;
  });
  return { keyboard, screen, running, finished: () => finished };
}

describe('runChatScreen', () => {
  it('runs until the session ends, then unmounts and leaves raw mode', async () => {
    const session = new FakeSession();
    const { keyboard, running, finished } = start(session);
    await turn();
    await turn();
    expect(finished()).toBe(false);
    expect(keyboard.rawModes).toEqual([true]);

    session.end();
    await running;

    expect(keyboard.rawModes.at(-1)).toBe(false);
    expect(session.quits).toBe(0);
  });

  it('asks the session to quit on Ctrl-C, and finishes when it has', async () => {
    const session = new FakeSession();
    const { keyboard, running } = start(session);
    await turn();

    keyboard.press('\u0003');
    await running;

    expect(session.quits).toBe(1);
  });

  it('uses the alternate screen on a terminal and gives the shell screen back at the end', async () => {
    const session = new FakeSession();
    const { screen, running } = start(session, new FakeScreen(true));
    await turn();
    expect(screen.written.startsWith('\u001B[?1049h')).toBe(true);

    session.end();
    await running;

    expect(screen.written.endsWith('\u001B[?1049l')).toBe(true);
  });
});

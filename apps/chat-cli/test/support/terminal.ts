// A CLI process in a pseudo-terminal, rendered by a headless xterm: the test
// reads the SCREEN a person would see (after Ink's cursor moves and erases),
// not the raw bytes, and types into it as a person would.
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type IPty, spawn } from '@lydell/node-pty';
import xterm from '@xterm/headless';

export const CLI_MAIN = resolve(dirname(fileURLToPath(import.meta.url)), '../../dist/main.js');

export const TERMINAL_COLUMNS = 120;
export const TERMINAL_ROWS = 40;

const KEYS = {
  enter: '\r',
  tab: '\t',
  'shift-tab': '\x1b[Z',
  'ctrl-c': '\x03',
  'ctrl-n': '\x0e',
  'ctrl-p': '\x10',
  backspace: '\x7f',
  escape: '\x1b',
  up: '\x1b[A',
  down: '\x1b[B',
} as const;
export type Key = keyof typeof KEYS;

export interface TerminalOptions {
  /** CHAT_CLI_HOME: the person's own directory of stores. */
  home: string;
  /** CHAT_RELAY_URL. */
  relayUrl: string;
  /** More variables for the CLI (they win over the defaults). */
  env?: Record<string, string>;
}

export interface CliTerminal {
  /** The visible screen, one line per row, trailing spaces and blank rows at the end dropped. */
  screen(): string;
  /**
   * Resolves with the screen once it shows `expected`; rejects after
   * `timeoutMs` (or when the process exits first) with the screen in the message.
   */
  waitFor(expected: string | RegExp, timeoutMs?: number): Promise<string>;
  /** Resolves once the screen no longer shows `unexpected`. */
  waitForGone(unexpected: string | RegExp, timeoutMs?: number): Promise<string>;
  /** Types text as keystrokes (no Enter). */
  type(text: string): void;
  press(key: Key): void;
  /** The process's exit code. */
  readonly exited: Promise<number>;
  /** Kills the process if it still runs. */
  kill(): void;
}

export const DEFAULT_WAIT_MS = 30_000;

/** Runs `node apps/chat-cli/dist/main.js <args>` in a 120x40 pseudo-terminal. */
export function startCli(args: string[], options: TerminalOptions): CliTerminal {
  return startInTerminal([CLI_MAIN, ...args], options);
}

/** Runs `node <nodeArgs>` in a 120x40 pseudo-terminal with the CLI's environment. */
export function startInTerminal(nodeArgs: string[], options: TerminalOptions): CliTerminal {
  const args = nodeArgs.slice(nodeArgs[0] === CLI_MAIN ? 1 : 0);
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries(process.env)) if (value !== undefined) env[name] = value;
  // Ink renders only the last frame when it believes it runs in CI.
  delete env['CI'];
  delete env['CONTINUOUS_INTEGRATION'];
  // The person types the passphrase; scripts' variables must not answer for them.
  delete env['CHAT_CLI_PASSPHRASE'];
  Object.assign(env, { TERM: 'xterm-256color', CHAT_CLI_HOME: options.home, CHAT_RELAY_URL: options.relayUrl }, options.env);

  const terminal = new xterm.Terminal({ cols: TERMINAL_COLUMNS, rows: TERMINAL_ROWS, allowProposedApi: true, scrollback: 1000 });
  const pty: IPty = spawn(process.execPath, nodeArgs, {
    name: 'xterm-256color',
    cols: TERMINAL_COLUMNS,
    rows: TERMINAL_ROWS,
    cwd: process.cwd(),
    env,
  });

  let exitedFlag = false;
  // Each change of the screen wakes the waiters once xterm has parsed the bytes.
  const waiters = new Set<() => void>();
  const wake = () => {
    for (const waiter of [...waiters]) waiter();
  };
  pty.onData((data) => terminal.write(data, wake));
  // The terminal answers the program's queries (cursor position, device attributes) as a real one does.
  terminal.onData((reply) => {
    if (!exitedFlag) pty.write(reply);
  });

  const exited = new Promise<number>((resolveExit) =>
    pty.onExit(({ exitCode }) => {
      exitedFlag = true;
      // Let xterm parse the last bytes before anyone reads the final screen.
      terminal.write('', () => {
        resolveExit(exitCode);
        wake();
      });
    }),
  );

  const screen = () => {
    const buffer = terminal.buffer.active;
    const rows: string[] = [];
    // Written spaces (a cursor drawn as an inverse space, padding) count as text to xterm; a person does not see them.
    for (let row = 0; row < terminal.rows; row++) rows.push((buffer.getLine(buffer.viewportY + row)?.translateToString(true) ?? '').trimEnd());
    while (rows.length > 0 && rows[rows.length - 1] === '') rows.pop();
    return rows.join('\n');
  };
  const shows = (expected: string | RegExp, text: string) => (typeof expected === 'string' ? text.includes(expected) : expected.test(text));

  const waitUntil = (done: (text: string) => boolean, what: string, timeoutMs: number) =>
    new Promise<string>((resolveWait, reject) => {
      const check = () => {
        const text = screen();
        if (done(text)) {
          finish();
          resolveWait(text);
        } else if (exitedFlag) {
          finish();
          reject(new Error(`the CLI (${args.join(' ')}) exited while waiting for ${what}; its last screen:\n${frame(text)}`));
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what} in the CLI (${args.join(' ')}); its screen:\n${frame(screen())}`));
      }, timeoutMs);
      const finish = () => {
        clearTimeout(timer);
        waiters.delete(check);
      };
      waiters.add(check);
      check();
    });

  return {
    screen,
    waitFor: (expected, timeoutMs = DEFAULT_WAIT_MS) => waitUntil((text) => shows(expected, text), `${String(expected)}`, timeoutMs),
    waitForGone: (unexpected, timeoutMs = DEFAULT_WAIT_MS) =>
      waitUntil((text) => !shows(unexpected, text), `${String(unexpected)} to go away`, timeoutMs),
    type: (text) => pty.write(text),
    press: (key) => pty.write(KEYS[key]),
    exited,
    kill: () => {
      if (!exitedFlag) pty.kill('SIGKILL');
    },
  };
}

const frame = (text: string) => ['┌' + '─'.repeat(TERMINAL_COLUMNS), ...text.split('\n').map((line) => `│${line}`), '└' + '─'.repeat(TERMINAL_COLUMNS)].join('\n');
